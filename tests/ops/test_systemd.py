"""The systemd unit: READY and WATCHDOG over a real notify socket, withheld while the store cannot commit."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.test_store_faults import immutable
from tests.support.broker import Mosquitto
from tests.support.process import RelayProcess
from tests.support.relay import settings_dict
from tests.support.wait import free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/uav-relay.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def next_message(sock: socket.socket, timeout: float) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return (await loop.sock_recv(sock, 4096)).decode()
    except TimeoutError:
        return None


async def wait_for(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await next_message(sock, timeout)
            assert message is not None
            seen.append(message)
            if wanted in message:
                return seen


async def test_ready_then_watchdog_pings_only_while_the_store_commits(
    broker: Mosquitto, tmp_path: Path, notify_socket: socket.socket
) -> None:
    port = free_port()
    cfg = settings_dict(broker.port, tmp_path / "data", http={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    relay = RelayProcess(cfg, tmp_path)
    relay.start({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000"})
    try:
        assert any(m.startswith("READY=1") for m in await wait_for(notify_socket, "READY=1", 15))
        await wait_for(notify_socket, "WATCHDOG=1", 2)
        await wait_for(notify_socket, "WATCHDOG=1", 2)  # every half interval
        data = tmp_path / "data"
        with immutable(data / "relay.db", data / "relay.db-wal"):
            while await next_message(notify_socket, 0.05) is not None:
                pass  # what was sent before the store broke
            # the store cannot commit: no ping for longer than the whole watchdog interval
            assert await next_message(notify_socket, 1.5) is None
        await wait_for(notify_socket, "WATCHDOG=1", 3)  # it recovered: pings again
        code = relay.terminate()
        assert code == 0
        assert await wait_for(notify_socket, "STOPPING=1", 2)
    finally:
        relay.stop()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "uav-relay.service"
    relay = Path(shutil.which("relay") or ROOT / ".venv/bin/relay")
    unit.write_text(UNIT.read_text().replace("/opt/uav-relay/.venv/bin/relay", str(relay)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "uav-relay.service" not in result.stderr, result.stderr  # no warnings about our unit


def test_the_unit_is_hardened() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=uav-relay", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "StateDirectory=uav-relay", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "CapabilityBoundingSet=\n"):
        assert line in text, line
