"""The daemon killed with SIGKILL in the middle of a burst, or stopped with SIGTERM: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.process import RelayProcess
from tests.support.relay import DESK1_PHONE, OPERATOR_TOKEN, report, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually, free_port


def process_settings(broker: Mosquitto, tmp_path: Path, **http: Any) -> dict[str, Any]:
    port = free_port()
    cfg = settings_dict(broker.port, tmp_path / "data")
    cfg["http"] = {**cfg["http"], "port": port, "public_url": f"http://127.0.0.1:{port}",
                   "rate_per_s": 100000, "rate_burst": 100000, **http}
    cfg["relay"]["log_level"] = "info"
    return cfg


async def start_relay(cfg: dict[str, Any], tmp_path: Path, started: list[RelayProcess]) -> RelayProcess:
    relay = RelayProcess(cfg, tmp_path)
    started.append(relay)  # the fixture stops it, whatever happens
    relay.start()
    await relay.wait_ready()
    return relay


class Burst:
    """Reports posted concurrently, as a 112 system flushing its queue; remembers which got a 201."""

    def __init__(self, url: str, count: int, prefix: str) -> None:
        self.url, self.count, self.prefix = url, count, prefix
        self.accepted: dict[str, str] = {}  # report_id -> alert_id
        self.refused = 0

    @classmethod
    async def under_way(cls, url: str, prefix: str) -> tuple[Burst, asyncio.Task[None]]:
        """600 reports posting; returns once 150 were accepted, so what comes next lands in the middle."""
        burst = cls(url, 600, prefix)
        posting = asyncio.create_task(burst.run())
        await eventually(lambda: len(burst.accepted) >= 150, timeout=20, interval=0.001, what="150 accepted")
        return burst, posting

    async def run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
            await asyncio.gather(*(self._post(http, n) for n in range(self.count)))

    async def _post(self, http: aiohttp.ClientSession, n: int) -> None:
        body = report(f"{self.prefix}-{n}")
        try:
            async with http.post(f"{self.url}/api/v1/reports", json=body,
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                if r.status == 201:
                    self.accepted[body["report_id"]] = (await r.json())["alert_id"]
                else:
                    self.refused += 1
        except (TimeoutError, aiohttp.ClientError):
            self.refused += 1  # no answer: the 112 system would send it again; not accepted


async def _seen_all(console: Console, seen: collections.Counter[str], wanted: set[str]) -> bool:
    while not console.messages.empty():
        _, body, _ = console.messages.get_nowait()
        seen[body["alert_id"]] += 1
    return wanted <= set(seen)


async def test_sigkill_during_a_burst_loses_no_accepted_report(
    broker: Mosquitto, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    relay = await start_relay(process_settings(broker, tmp_path), tmp_path, relay_process)
    async with Console(broker.port, "airfield-1") as console:
        burst, posting = await Burst.under_way(relay.url, "kill9")
        relay.kill9()
        await posting
        assert 150 <= len(burst.accepted) < 600, "the kill must land in the middle of the burst"

        relay.start()
        await relay.wait_ready()
        seen: collections.Counter[str] = collections.Counter()
        wanted = set(burst.accepted.values())
        await eventually(lambda: _seen_all(console, seen, wanted), timeout=20,
                         what="every accepted report on the console")
    duplicated = {a: n for a, n in seen.items() if n > 1}
    assert all(n <= 2 for n in duplicated.values()), duplicated  # at most once more, after the crash
    assert len(duplicated) <= 60, f"{len(duplicated)} alerts arrived twice"
    async with aiohttp.ClientSession() as http:
        for alert_id in list(wanted)[:50]:
            async with http.get(f"{relay.url}/api/v1/alerts/{alert_id}",
                                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                alert = await r.json()
                assert alert["deliveries"][0]["state"] in ("sent", "delivered"), alert


async def test_sigterm_during_a_burst_drains_and_keeps_the_rest_on_disk(
    broker: Mosquitto, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    relay = await start_relay(process_settings(broker, tmp_path), tmp_path, relay_process)
    async with Console(broker.port, "airfield-1") as console:
        burst, posting = await Burst.under_way(relay.url, "term")
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await asyncio.to_thread(relay.terminate)
        stopped_in = loop.time() - started
        await posting
        assert code == 0
        assert stopped_in < 6.5  # in-flight sends get at most 5 s
        events = [line.get("event") for line in relay.log_lines()]
        assert "relay_stopping" in events and "relay_stopped" in events

        relay.start()
        await relay.wait_ready()
        seen: collections.Counter[str] = collections.Counter()
        await eventually(lambda: _seen_all(console, seen, set(burst.accepted.values())), timeout=20,
                         what="every accepted report on the console, after the restart if not before")


async def test_escalation_timers_survive_sigkill(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    cfg = with_backups(process_settings(broker, tmp_path), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=0.5, repeat_s=3.0)
    relay = await start_relay(cfg, tmp_path, relay_process)
    async with Console(broker.port, "airfield-1") as console:
        async with aiohttp.ClientSession() as http, http.post(
            f"{relay.url}/api/v1/reports", json=report("timer-kill9"),
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as r:
            assert r.status == 201
            alert_id = (await r.json())["alert_id"]
        await console.next_alert()
        first = (await twilio.wait_for(1, to=DESK1_PHONE))[0]

        async def sms_recorded_sent() -> bool:
            # Killed before it recorded Twilio's answer, the relay would rightly send that SMS again at start
            # (at least once); this test is about the repeat's stored due time, so it kills after the record.
            async with aiohttp.ClientSession() as http, http.get(
                f"{relay.url}/api/v1/alerts/{alert_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            ) as r:
                deliveries = (await r.json())["deliveries"]
            return any(d["target"] == DESK1_PHONE and d["state"] in ("sent", "delivered") for d in deliveries)

        await eventually(sms_recorded_sent, timeout=5, what="the first SMS recorded as sent")
        relay.kill9()
        relay.start()
        await relay.wait_ready()
        second = (await twilio.wait_for(2, to=DESK1_PHONE, timeout=10))[1]
    assert 2.7 <= second.at - first.at <= 4.0  # the stored repeat time, not restarted at the restart
