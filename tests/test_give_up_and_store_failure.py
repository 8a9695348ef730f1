"""The alert nobody acknowledges, and the store that cannot write: both told plainly, nothing silently lost."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.relay import RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually


async def test_an_alert_nobody_acknowledges_is_given_up_and_the_operator_told(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = settings_dict(broker.port, tmp_path / "data", escalation={"ack_timeout_s": 0.3, "give_up_s": 1.0})
    async with (
        running_relay(cfg) as relay,
        Console(broker.port, "airfield-1") as console,
        MqttPeer(broker.port, "op-1-workstation", ["uav/events/op-1"]) as operator,
    ):
        _, accepted = await relay.post_report(report("silent"))
        alert = await console.next_alert()
        await console.received(alert["alert_id"])  # shown on the console, but nobody acknowledges
        states = [(await operator.next(timeout=5))[1]["state"] for _ in range(3)]
        assert states == ["pending", "delivered", "unacknowledged"]
        got = await relay.alert(accepted["alert_id"])
        assert got["state"] == "unacknowledged"
        assert await relay.metric("relay_alerts_unacknowledged_total") == 1
        assert await relay.metric("relay_alerts_open") == 0

        status, late = await relay.ack(accepted["alert_id"], by="опоздавший")
        assert status == 200
        assert late["state"] == "acknowledged"  # a late ack is still recorded, and shown
        assert late["ack"]["latency_s"] >= 1.0
        assert (await operator.next())[1]["state"] == "acknowledged"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "4m") -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs) that can be filled up, where this machine lets us mount one."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


async def _store_reason(relay: RunningRelay) -> list[str] | None:
    status, body = await relay.get("/readyz", token=None)
    return body["reasons"] if status == 503 and any("store" in r for r in body["reasons"]) else None


async def test_a_full_disk_refuses_reports_with_503_and_recovers(broker: Mosquitto, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as small:
        async with running_relay(settings_dict(broker.port, small)) as relay:
            status, before = await relay.post_report(report("before-full"))
            assert status == 201
            filler = fill(small)

            status, body = await relay.post_report(report("while-full"))
            assert status == 503
            assert body["error"] == "store_unavailable"
            assert "not accepted" in body["detail"] or "nothing" in body["detail"]
            assert await eventually(lambda: _store_reason(relay), what="readyz names the store")
            assert await relay.metric("relay_store_up") == 0
            assert await relay.metric('relay_reports_rejected_total{reason="store_unavailable"}') >= 1

            filler.unlink()
            status, _ = await relay.post_report(report("after-full"))
            assert status == 201
            _, listing = await relay.get("/api/v1/alerts")
            assert sorted(a["report_id"] for a in listing["alerts"]) == ["after-full", "before-full"]
            assert await relay.metric("relay_store_up") == 1
            status, again = await relay.post_report(report("while-full"))
            assert status == 201  # the refused report was never half-stored: sending it again works
            assert before["alert_id"] != again["alert_id"]
