"""What a soak phase runs against, and the desk console that answers the alerts.

A private Mosquitto (persistence on, as tests/support/broker.py), a Twilio-shaped server and an SMTP server in this
process, and the relay as a subprocess (tests/support/process.py). Everything is stopped by its own PID when the
phase ends, also after an exception or a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt

from bench.env import cpu_s
from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.process import RelayProcess
from tests.support.relay import OPERATOR_TOKEN, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class World:
    broker: Mosquitto
    twilio: TwilioFake
    smtp: SmtpServer
    relay: RelayProcess
    started_s: float  # its first start, on an empty store -> /readyz 200

    @property
    def url(self) -> str:
        return self.relay.url


@contextlib.asynccontextmanager
async def world(root: Path, log_level: str = "warning", *, tracks: bool = False,
                **escalation: float) -> AsyncIterator[World]:
    """Broker, SMS and SMTP fakes and the relay (ready, connected to the broker), all in `root`."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    (root / "broker").mkdir(parents=True)
    broker, twilio, smtp = Mosquitto(root / "broker"), TwilioFake(), SmtpServer()
    relay: RelayProcess | None = None
    try:
        broker.start()
        await twilio.start()
        smtp.start()
        cfg = with_backups(settings_dict(broker.port, root / "data"), smtp_port=smtp.port,
                           twilio_url=twilio.base_url, **escalation)  # also a fixed HTTP port and public_url
        cfg["relay"] = {**cfg["relay"], "log_level": log_level}
        cfg["http"] = {**cfg["http"], "rate_per_s": 100000, "rate_burst": 100000}
        cfg["sms"] = {**cfg["sms"], "bundle_window_s": 1}
        if tracks:
            cfg["tracks"] = {"enabled": True}
        relay = RelayProcess(cfg, root)
        relay.start()
        started_s = await relay.wait_ready(timeout=30)
        async with aiohttp.ClientSession() as http:
            await wait_metric(http, relay.url, 'relay_channel_up{channel="mqtt"}', 1.0)
        yield World(broker, twilio, smtp, relay, started_s)
    except Exception:
        if relay is not None:
            print(f"relay stderr, last lines:\n{relay.log_tail(30)}", file=sys.stderr)
        raise
    finally:
        if relay is not None:
            relay.stop()
        broker.kill()
        smtp.stop()
        await twilio.stop()


async def stop_relay(relay: RelayProcess) -> int | None:
    """SIGTERM, in a thread (the Twilio-shaped server runs on this loop and must keep answering while the relay
    drains); its exit code, or None when it did not exit within 15 s and was SIGKILLed."""
    try:
        return await asyncio.to_thread(relay.terminate)
    except subprocess.TimeoutExpired:
        return None


async def metric(http: aiohttp.ClientSession, url: str, series: str) -> float | None:
    """One series of the relay's /metrics, e.g. `relay_alerts_open` or `relay_channel_up{channel="mqtt"}`."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def wait_metric(http: aiohttp.ClientSession, url: str, series: str, value: float, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while await metric(http, url, series) != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{series} did not become {value} within {within_s} s")
        await asyncio.sleep(0.05)


def codes_in(text: str) -> set[str]:
    """Words that may be short codes (Latin capitals and digits): more than the codes, never fewer."""
    return set(re.findall(r"[0-9A-Z]{4,6}", text))


class Backups:
    """Which short codes reached the Twilio-shaped server (in an SMS body) and the SMTP server (in a Subject)."""

    def __init__(self, twilio: TwilioFake, smtp: SmtpServer) -> None:
        self.twilio, self.smtp = twilio, smtp
        self.sms: set[str] = set()
        self.mail: set[str] = set()
        self._sms_seen = self._mail_seen = 0

    def update(self) -> None:
        messages = self.twilio.messages[self._sms_seen:]
        self._sms_seen += len(messages)
        for sms in messages:
            self.sms |= codes_in(sms.body)
        mails = self.smtp.mails[self._mail_seen:]
        self._mail_seen += len(mails)
        for mail in mails:
            self.mail |= codes_in(str(mail.message["Subject"] or ""))

    @property
    def sms_count(self) -> int:
        return self._sms_seen

    @property
    def mail_count(self) -> int:
        return self._mail_seen


class Desk:
    """The airfield-1 console: `received` for every alert; `ack` after 0..max_delay_s for `ack_share` of them
    (drawn from `rng` in the order the alerts arrive), never for the others."""

    def __init__(self, console: Console, rng: random.Random, ack_share: float = 0.7, max_delay_s: float = 3.0) -> None:
        self.console, self.rng, self.ack_share, self.max_delay_s = console, rng, ack_share, max_delay_s
        self.first: dict[str, float] = {}  # alert_id -> perf_counter() when its first copy came out of the client
        self.report_of: dict[str, str] = {}  # alert_id -> report_id
        self.copies: Counter[str] = Counter()
        self.copy_at: dict[str, list[float]] = defaultdict(list)  # alert_id -> when each copy came out
        self.will_ack: set[str] = set()
        self.acks_sent = 0
        self.answers_failed = 0  # a `received` or `ack` that could not be published within 10 s (broker down)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            _, body, _ = await self.console.messages.get()
            t = time.perf_counter()
            alert_id = body.get("alert_id")
            if not isinstance(alert_id, str):
                continue
            self.copies[alert_id] += 1
            self.copy_at[alert_id].append(t)
            if alert_id in self.first:
                continue  # a second copy: a console drops it
            self.first[alert_id] = t
            self.report_of[alert_id] = str(body.get("report_id"))
            ack_after = self.rng.uniform(0, self.max_delay_s) if self.rng.random() < self.ack_share else None
            if ack_after is not None:
                self.will_ack.add(alert_id)
            task = asyncio.create_task(self._answer(alert_id, ack_after))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, alert_id: str, ack_after: float | None) -> None:
        try:
            await self.console.received(alert_id)
            if ack_after is not None:
                await asyncio.sleep(ack_after)
                await self.console.ack(alert_id, by="soak")
                self.acks_sent += 1
        except (TimeoutError, aiomqtt.MqttError):
            self.answers_failed += 1

    async def settle(self, within_s: float) -> None:
        """Wait for the answers still under way (acks waiting out their delay)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within_s)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


def _cpu_s(pid: int) -> float | None:
    try:
        return cpu_s(pid)
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile


class CpuSampler:
    """Cores busy per second for the relay (whichever incarnation runs), the broker and this bench process."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.busy: dict[str, list[float]] = {"relay": [], "mosquitto": [], "bench": []}

    def _pids(self) -> dict[str, int | None]:
        relay, broker = self.w.relay.proc, self.w.broker.proc
        return {"relay": relay.pid if relay else None, "mosquitto": broker.pid if broker else None,
                "bench": os.getpid()}

    async def run(self) -> None:
        last: dict[str, tuple[int, float]] = {}
        t = time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            for name, pid in self._pids().items():
                used = _cpu_s(pid) if pid else None
                if pid is None or used is None:
                    last.pop(name, None)
                    self.busy[name].append(0.0)
                    continue
                before = last.get(name)
                # a new incarnation (restart): its whole CPU so far counts in this second
                self.busy[name].append((used - (before[1] if before and before[0] == pid else 0.0)) / (now - t))
                last[name] = (pid, used)
            t = now

    def summary(self) -> str:
        def peak(xs: list[float]) -> float:
            return max((sum(xs[i:i + 5]) / 5 for i in range(max(1, len(xs) - 4))), default=0.0)

        parts = [f"{k} {sum(v) / max(1, len(v)):.2f} / {peak(v):.2f}" for k, v in self.busy.items()]
        return f"CPU, cores busy (mean / busiest 5 s) of {os.cpu_count()}: {', '.join(parts)}"


async def send_times(url: str) -> str:
    """The relay's own view (since its last start): mean time of one send per channel, retries included, and
    report accepted -> channel accepted the message (first attempt)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("#") and " " in line:
            key, _, value = line.rpartition(" ")
            values[key] = float(value)

    def mean_ms(name: str, channel: str) -> str:
        total = values.get(f'{name}_sum{{channel="{channel}"}}')
        count = values.get(f'{name}_count{{channel="{channel}"}}')
        return f"{total / count * 1000:.0f} ms (n={count:.0f})" if total is not None and count else "-"

    channels = ("mqtt", "sms", "email")
    return ("relay's metrics since its restart: one send, mean: "
            + ", ".join(f"{c} {mean_ms('relay_channel_send_seconds', c)}" for c in channels)
            + "; accepted -> sent, mean: "
            + ", ".join(f"{c} {mean_ms('relay_delivery_seconds', c)}" for c in channels))
