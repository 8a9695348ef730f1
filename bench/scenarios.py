"""What is measured against the relay: sequential latency, a concurrent burst, filling up to N open alerts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench.console import Receiver
from bench.env import OPERATOR_TOKEN
from bench.stats import Summary, summarize

HEADERS = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}
RECEIVE_TIMEOUT_S = 30.0


def report_body(report_id: str) -> bytes:
    return json.dumps({
        "report_id": report_id,
        "observed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "location": {"lat": 52.6, "lon": 39.6},
        "uav_type": "multirotor",
        "count": 1,
    }).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(url, data=body, headers=HEADERS) as r:
        await r.read()
        return r.status


@dataclass
class Sequential:
    end_to_end: Summary
    post_201: Summary
    non_201: int
    lost: int
    # split at the relay's own `created_at` (time.time() in Engine.accept, after validation, before the commit)
    to_accept: Summary
    accept_to_201: Summary
    accept_to_console: Summary

    def as_dict(self) -> dict[str, Any]:
        return {"end_to_end_ms": self.end_to_end.as_dict(), "post_201_ms": self.post_201.as_dict(),
                "non_201": self.non_201, "lost": self.lost, "post_to_accept_ms": self.to_accept.as_dict(),
                "accept_to_201_ms": self.accept_to_201.as_dict(),
                "accept_to_console_ms": self.accept_to_console.as_dict()}


async def sequential(session: aiohttp.ClientSession, url: str, console: Receiver, prefix: str, n: int,
                     gap_s: float = 0.0) -> Sequential:
    """One report at a time: t0 just before the POST, t1 at the 201, t2 when the console had its alert.

    `gap_s`: idle time before each report, so that it finds the relay done with the previous one."""
    e2e: list[float] = []
    rtt: list[float] = []
    split: tuple[list[float], list[float], list[float]] = ([], [], [])
    non_201 = lost = 0
    for i in range(n):
        rid = f"{prefix}-{i}"
        body = report_body(rid)
        if gap_s:
            await asyncio.sleep(gap_s)
        w0 = time.time()
        t0 = time.perf_counter()
        status = await post(session, url, body)
        t1 = time.perf_counter()
        if status != 201:
            non_201 += 1
            continue
        rtt.append(t1 - t0)
        try:
            t2 = await console.wait(rid, RECEIVE_TIMEOUT_S)
        except TimeoutError:
            lost += 1
            continue
        e2e.append(t2 - t0)
        accepted = console.stamped.get(rid)
        if accepted is not None:  # wall clock of the same machine; perf_counter deltas added to w0
            at = accepted - w0
            split[0].append(at)
            split[1].append(t1 - t0 - at)
            split[2].append(t2 - t0 - at)
    return Sequential(summarize(e2e), summarize(rtt), non_201, lost, *(summarize(s) for s in split))


@dataclass
class Burst:
    n: int
    complete_s: float | None  # start -> the console had the last alert; None if some never came
    all_answered_s: float  # start -> the last HTTP answer
    non_201: int
    errors: list[str]
    lost: int
    post_201: Summary
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def per_s(self) -> float | None:
        return self.n / self.complete_s if self.complete_s else None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "complete_s": self.complete_s, "reports_per_s": self.per_s,
                "all_answered_s": self.all_answered_s, "non_201": self.non_201, "lost": self.lost,
                "errors": self.errors[:10], "statuses": self.statuses, "post_201_ms": self.post_201.as_dict()}


async def _timed_post(session: aiohttp.ClientSession, url: str, body: bytes, t0: float) -> tuple[int | str, float]:
    try:
        status: int | str = await post(session, url, body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = f"{type(exc).__name__}: {exc}"
    return status, time.perf_counter() - t0


async def open_connections(session: aiohttp.ClientSession, url: str, n: int) -> None:
    """`n` concurrent GETs of `url`: leaves `n` keep-alive connections in the session's pool."""

    async def get() -> None:
        async with session.get(url) as r:
            await r.read()

    await asyncio.gather(*(get() for _ in range(n)))


async def burst(session: aiohttp.ClientSession, url: str, console: Receiver, prefix: str, n: int) -> Burst:
    """`n` POSTs at once (asyncio.gather); complete = the console's receipt of the last one's alert.

    Whether the connections are fresh or already open is up to the session handed in."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    bodies = [report_body(rid) for rid in ids]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_timed_post(session, url, b, t0) for b in bodies))
    all_answered = time.perf_counter() - t0
    statuses: dict[int, int] = {}
    errors: list[str] = []
    for status, _ in results:
        if isinstance(status, int):
            statuses[status] = statuses.get(status, 0) + 1
        else:
            errors.append(status)
    expected = [rid for rid, (status, _) in zip(ids, results, strict=True) if status == 201]
    missing = await console.wait_all(expected, max(0.0, t0 + RECEIVE_TIMEOUT_S - time.perf_counter()))
    complete = None if missing else max((console.received[k] for k in expected), default=t0) - t0
    return Burst(
        n=n,
        complete_s=complete,
        all_answered_s=all_answered,
        non_201=n - len(expected),
        errors=errors,
        lost=len(missing),
        post_201=summarize([dt for status, dt in results if status == 201]),
        statuses=statuses,
    )


@dataclass
class Fill:
    posted: int
    non_201: int
    lost: int
    seconds: float


def elsewhere_body(report_id: str) -> bytes:
    """A report of another object, one per grid cell 30-35 km apart (south-west of where `report_body` reports)."""
    n = int(report_id.rsplit("-", 1)[1])
    return json.dumps({
        "report_id": report_id,
        "observed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "location": {"lat": 45.0 + 0.3 * (n // 25), "lon": 30.0 + 0.5 * (n % 25)},
        "uav_type": "multirotor",
        "count": 1,
    }).encode()


async def fill(session: aiohttp.ClientSession, url: str, console: Receiver, prefix: str, n: int,
               chunk: int = 500, body: Callable[[str], bytes] = report_body) -> Fill:
    """Post `n` more reports, `chunk` at a time concurrently, and wait until the console had every alert."""
    t0 = time.perf_counter()
    expected: list[str] = []
    non_201 = 0
    for start in range(0, n, chunk):
        ids = [f"{prefix}-{i}" for i in range(start, min(n, start + chunk))]
        results = await asyncio.gather(*(_timed_post(session, url, body(r), t0) for r in ids))
        for rid, (status, _) in zip(ids, results, strict=True):
            if status == 201:
                expected.append(rid)
            else:
                non_201 += 1
    missing = await console.wait_all(expected, RECEIVE_TIMEOUT_S)
    return Fill(n, non_201, len(missing), time.perf_counter() - t0)
