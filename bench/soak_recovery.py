"""Recovery: a relay holding N open alerts is SIGKILLed and restarted; how long until it is ready, and until its
stored escalation timers fire again.

The relay gets ack_timeout_s = 5 + N/300 s (so the fill mostly ends before the first timer is due) and no console.
After the fill it is killed and kept down until the earliest alerts' ack timeout has passed by a second, so at the
restart those timers are overdue: the first SMS (and e-mail) the fakes receive after the restart is the relay
resuming its stored escalation, not a timer that merely came due. Then it is killed and restarted twice more, 2 s
apart, in the middle of that escalation (the sends under way when it died are due again at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from bench.soak_world import AUTH, metric, stop_relay, world
from tests.support.relay import report

CHUNK = 500
RESTARTS = 3


@dataclass
class Restart:
    down_s: float
    ready_s: float  # restart (Popen) -> /readyz 200
    first_sms_s: float | None  # restart -> the first SMS at the Twilio-shaped server
    first_mail_s: float | None  # restart -> the first e-mail at the SMTP server
    open_after: float | None  # relay_alerts_open once ready


@dataclass
class Recovery:
    target: int
    empty_ready_s: float  # the relay's first start, on an empty store -> /readyz 200: the floor for ready_s
    accepted: int
    fill_s: float
    ack_timeout_s: float
    open_before: float | None  # relay_alerts_open just before the first SIGKILL
    overdue: int  # alerts whose ack timeout (counted from their 201) had passed at the first restart, at least
    restarts: list[Restart] = field(default_factory=list)
    exit_code: int | None = None  # after SIGTERM; None: still running 15 s later


async def _post(http: aiohttp.ClientSession, url: str, report_id: str) -> float | None:
    """Wall time of the 201, or None."""
    try:
        async with http.post(f"{url}/api/v1/reports", json=report(report_id), headers=AUTH) as r:
            await r.read()
            return time.time() if r.status == 201 else None
    except (TimeoutError, aiohttp.ClientError):
        return None


class _Stamped(Protocol):
    at: float


async def _first_new(read: Callable[[], Sequence[_Stamped]], seen: int, t0: float, within_s: float) -> float | None:
    """Seconds from t0 to the arrival of the first item after the `seen` ones, or None within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        items = read()
        if len(items) > seen:
            return items[seen].at - t0
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.005)


async def recovery(root: Path, n: int) -> Recovery:
    ack_timeout = round(5 + n / 300, 1)
    async with world(root, ack_timeout_s=ack_timeout, repeat_s=3600, give_up_s=7200, retry_s=1) as w:
        connector = aiohttp.TCPConnector(limit=CHUNK)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            started = time.time()
            accepted_at: list[float] = []
            for first in range(0, n, CHUNK):
                ids = range(first, min(n, first + CHUNK))
                done = await asyncio.gather(*(_post(http, w.url, f"open-{i}") for i in ids))
                accepted_at += [t for t in done if t is not None]
            fill_s = time.time() - started
            open_before = await metric(http, w.url, "relay_alerts_open")

        result = Recovery(n, w.started_s, len(accepted_at), fill_s, ack_timeout, open_before, 0)
        for i in range(RESTARTS):
            w.relay.kill9()
            killed = time.time()
            first_due = min(accepted_at, default=killed) + ack_timeout
            await asyncio.sleep(max(2.0, (first_due + 1.0 - killed) if i == 0 else 0.0))
            sms_seen, mails_seen = len(w.twilio.messages), len(w.smtp.mails)
            t0 = time.time()
            w.relay.start()
            if i == 0:
                result.overdue = sum(1 for t in accepted_at if t + ack_timeout <= t0)
            await w.relay.wait_ready(timeout=60)
            ready_s = time.time() - t0
            first_sms, first_mail = await asyncio.gather(_first_new(lambda: w.twilio.messages, sms_seen, t0, 30),
                                                         _first_new(lambda: w.smtp.mails, mails_seen, t0, 30))
            async with aiohttp.ClientSession() as http:
                open_after = await metric(http, w.url, "relay_alerts_open")
            result.restarts.append(Restart(t0 - killed, ready_s, first_sms, first_mail, open_after))
        result.exit_code = await stop_relay(w.relay)
        return result
