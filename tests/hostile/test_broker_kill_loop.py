"""A broker that dies again and again under load (issue 12): the relay process lives through it, and every report
it accepted reaches the console.

Under uvloop, aiomqtt's deferred writer registration used to leave a writer on the broker socket after paho closed
it, and libuv answered the next epoll change on that descriptor with abort(): SIGABRT at the second or third kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.process import RelayProcess
from tests.support.relay import OPERATOR_TOKEN, report, settings_dict
from tests.support.wait import eventually, free_port

KILLS = 12
CLIENTS = 4
REPORTS_PER_S = 30  # all clients together, as in the finding


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    # A SIGKILLed Mosquitto forgets whatever it had not saved: the console's subscription, too, so an alert the
    # relay publishes (and gets its PUBACK for) before the console subscribes again is dropped. Covering that is
    # the backups' job (SMS, e-mail), not this test's; saving on every change keeps the broker's part out of it.
    broker = Mosquitto(workdir, extra_conf="autosave_on_changes true\nautosave_interval 1\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def relay_process(durable_broker: Mosquitto, tmp_path: Path) -> Iterator[RelayProcess]:
    port = free_port()
    cfg = settings_dict(durable_broker.port, tmp_path / "data")
    cfg["http"] = {**cfg["http"], "port": port, "public_url": f"http://127.0.0.1:{port}",
                   "rate_per_s": 100000, "rate_burst": 100000}
    relay = RelayProcess(cfg, tmp_path)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


class Load:
    """Operators posting reports at a steady rate from a few connections; remembers each 201 and when it came."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: dict[str, float] = {}  # alert_id -> when its 201 arrived (monotonic)
        self.refused = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(CLIENTS)))

    def stop(self) -> None:
        self._stop.set()

    def accepted_since(self, t: float) -> set[str]:
        return {alert_id for alert_id, at in self.accepted.items() if at > t}

    async def _client(self, n: int) -> None:
        period = CLIENTS / REPORTS_PER_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = report(f"kill-loop-{n}-{i}")
                try:
                    async with http.post(f"{self.url}/api/v1/reports", json=body,
                                         headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                        if r.status == 201:
                            self.accepted[(await r.json())["alert_id"]] = time.monotonic()
                        else:
                            self.refused += 1
                except (TimeoutError, aiohttp.ClientError):
                    self.refused += 1
                # the operators' pace, not a wait for anything
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), period)


class Seen:
    """Alert ids the console got, each once however often the broker redelivered it."""

    def __init__(self, console: Console) -> None:
        self.first: dict[str, float] = {}
        self._console = console

    async def run(self) -> None:
        while True:
            _, body, _ = await self._console.messages.get()
            self.first.setdefault(body["alert_id"], time.monotonic())


def _alive(relay: RelayProcess) -> None:
    assert relay.proc is not None
    code = relay.proc.poll()
    assert code is None, f"relay exited with {code}: {relay.log_tail(30)}"


def _loop_errors(relay: RelayProcess) -> list[dict[str, Any]]:
    return [line for line in relay.log_lines()
            if line.get("logger") == "asyncio" or "Exception in callback" in str(line)]


async def test_relay_survives_a_dozen_broker_kills_under_load_and_loses_nothing(
    durable_broker: Mosquitto, relay_process: RelayProcess
) -> None:
    relay, broker = relay_process, durable_broker
    rng = random.Random(12)
    await relay.wait_ready()
    async with Console(broker.port, "airfield-1") as console:
        load, seen = Load(relay.url), Seen(console)
        collecting = asyncio.create_task(seen.run())
        posting = asyncio.create_task(load.run())
        try:
            for kill in range(KILLS):
                # Each kill must hit the whole path at work: a report accepted after the last restart has reached
                # the console (so the relay and the console are both connected again) ...
                since = time.monotonic()
                await eventually(lambda t=since: load.accepted_since(t) & seen.first.keys(),
                                 timeout=15, what=f"reports flowing to the console again before kill {kill + 1}")
                # ... and a moment of load (load shaping, not synchronisation)
                await asyncio.sleep(rng.uniform(0.2, 0.6))
                broker.kill()  # SIGKILL to its own pid
                await asyncio.sleep(rng.uniform(0.1, 0.4))  # down for a while, reports keep coming
                _alive(relay)
                broker.start()
                _alive(relay)
        finally:
            load.stop()
            await posting
        _alive(relay)
        assert len(load.accepted) >= 100, f"only {len(load.accepted)} reports accepted: the load never built up"
        await eventually(lambda: not (load.accepted.keys() - seen.first.keys()), timeout=30, interval=0.1,
                         what="every accepted report on the console")
        collecting.cancel()
    _alive(relay)
    # The loop reporting errors in callbacks was how the bug first showed (a writer on a closed socket).
    assert not _loop_errors(relay), _loop_errors(relay)[:3]
    assert await asyncio.to_thread(relay.terminate) == 0
