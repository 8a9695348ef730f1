"""Time as the engine sees it. Only the daemon's wiring picks the real clock; tests drive their own."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Any, Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, t: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.time()))


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def sleep_until_or(clock: Clock, at: float | None, event: asyncio.Event) -> None:
    """Sleep until `at` (None: for ever) or until `event` is set, whichever comes first."""
    waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(event.wait())}
    if at is not None and at < math.inf:
        waits.add(asyncio.ensure_future(clock.sleep_until(at)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
