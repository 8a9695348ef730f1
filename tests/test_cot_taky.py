"""Through a real CoT router: taky (a TAK server in Python) between the relay and a TAK client. What the relay
sends must be taken, routed and handed on by a server that parses it itself, not only by our own listener.

taky is in the `dev` extra; the test runs it with this interpreter when it is importable here, or with the
Python named by $TAKY_PYTHON (a venv of its own), and is skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.cot_listener import CotEvent, CotSubscriber
from tests.support.relay import DESK_TOKEN, report, running_relay, settings_dict
from tests.support.wait import free_port, wait_port


def taky_python() -> str | None:
    if importlib.util.find_spec("taky") is not None:
        return sys.executable
    return os.environ.get("TAKY_PYTHON") or None


@pytest.fixture
def taky(tmp_path: Path) -> Iterator[int]:
    python = taky_python()
    if python is None:
        pytest.skip("taky is not installed here (pip install -e '.[dev]', or set TAKY_PYTHON to a Python that has it)")
    port = free_port()
    root = tmp_path / "taky"
    root.mkdir()
    conf = root / "taky.conf"
    conf.write_text(f"[taky]\nhostname = localhost\nnode_id = UAVRELAYTEST\nbind_ip = 127.0.0.1\nroot_dir = {root}\n"
                    f"[cot_server]\nport = {port}\n[dp_server]\nupload_path = {root}/dp\n[ssl]\nenabled = false\n")
    log = (root / "taky.log").open("wb")
    proc = subprocess.Popen([python, "-m", "taky.cot", "-c", str(conf)], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, timeout=15)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
async def tak_client(taky: int) -> AsyncIterator[CotSubscriber]:
    client = CotSubscriber()
    await client.connect("127.0.0.1", taky)
    try:
        yield client
    finally:
        await client.close()


def ours(track_id: str, reports: int, state: str = "open"):  # type: ignore[no-untyped-def]
    def match(e: CotEvent) -> bool:
        mine = e.detail("uav_relay")
        return (e.uid == f"uav-relay.{track_id}" and mine is not None and mine.get("reports") == str(reports)
                and mine.get("state") == state)
    return match


async def test_a_tak_client_behind_taky_sees_the_track_appear_move_and_be_acknowledged(
    broker: Mosquitto, tmp_path: Path, taky: int, tak_client: CotSubscriber,
) -> None:
    cfg: dict[str, Any] = settings_dict(broker.port, tmp_path / "data")
    cfg["tracks"] = {"enabled": True}
    cfg["cot"] = {"enabled": True, "url": f"tcp://127.0.0.1:{taky}", "reconnect_max_s": 0.2}
    async with running_relay(cfg) as relay:
        status, first = await relay.post_report(report("r-1", location={"lat": 52.61, "lon": 39.59}))
        assert status == 201
        track = (await relay.alert(first["alert_id"]))["track_id"]
        shown = await tak_client.wait_for(ours(track, 1), timeout=10, what="the track through taky")
        assert shown.type == "a-u-A-M-F-Q"
        assert float(shown.point()["lat"]) == pytest.approx(52.61, abs=1e-4)

        status, _ = await relay.post_report(report("r-2", location={"lat": 52.62, "lon": 39.57}))
        assert status == 201
        await tak_client.wait_for(ours(track, 2), timeout=10, what="the update through taky")

        async with relay.http.post(f"{relay.url}/api/v1/tracks/{track}/ack", json={"by": "Сидоров"},
                                   headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
            assert r.status == 200
        acked = await tak_client.wait_for(ours(track, 2, "acknowledged"), timeout=10, what="the ack through taky")
        assert "Подтверждено" in acked.remarks()
        assert not tak_client.unparsable
