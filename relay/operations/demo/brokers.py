"""A broker for the demo: a private Mosquitto when one is installed, else amqtt embedded in this process."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess  # nosec B404
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DemoBroker:
    port: int
    kind: str  # "mosquitto" or "amqtt"
    protocol: str  # what the relay should speak to it: "5" or "3.1.1"
    stop: Any  # an async callable that takes the broker down (to show the failover)
    start: Any  # and one that brings it back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)  # the broker is still starting; bounded by the timeout above


@contextlib.asynccontextmanager
async def demo_broker(workdir: Path, embedded: bool = False) -> AsyncIterator[DemoBroker]:
    port = free_port()
    mosquitto = None if embedded else _find_mosquitto()
    if mosquitto:
        async with _mosquitto(mosquitto, workdir, port) as broker:
            yield broker
        return
    async with _amqtt(port) as broker:
        yield broker


def _find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def _spawn(binary: str, conf: Path) -> subprocess.Popen[bytes]:
    # our own binary path and our own config file: nothing from outside reaches this command line
    return subprocess.Popen(  # noqa: S603  # nosec B603
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@contextlib.asynccontextmanager
async def _mosquitto(binary: str, workdir: Path, port: int) -> AsyncIterator[DemoBroker]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\n"
                    f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n"
                    f"user {getpass.getuser()}\n")
    procs: list[subprocess.Popen[bytes]] = []

    async def start() -> None:
        procs.append(_spawn(binary, conf))
        await _wait_port(port)

    async def stop() -> None:
        while procs:
            proc = procs.pop()
            proc.kill()
            await asyncio.to_thread(proc.wait)

    await start()
    try:
        yield DemoBroker(port, "mosquitto", "5", stop, start)
    finally:
        await stop()


@contextlib.asynccontextmanager
async def _amqtt(port: int) -> AsyncIterator[DemoBroker]:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise SystemExit(
            "relay demo needs an MQTT broker: install Mosquitto (apt-get install mosquitto), "
            "or the embedded one: pip install 'uav-relay[demo]'"
        ) from None
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    running: list[Any] = []

    async def start() -> None:
        broker = Broker(config)
        await broker.start()
        running.append(broker)

    async def stop() -> None:
        while running:
            await running.pop().shutdown()

    await start()
    try:
        yield DemoBroker(port, "amqtt (embedded)", "3.1.1", stop, start)
    finally:
        await stop()
