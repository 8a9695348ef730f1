"""A clock that moves only when the test moves it (relay.clock.Clock), for engine timing in milliseconds.

`advance_to(t)` wakes the sleepers in due-time order, one instant at a time, and after each instant runs the
event loop until nothing is left to run: what a due time set off (a scheduler pass, the sends it submitted,
their commits) has finished before the clock moves on, as it would on a real clock long before the next due time.

Quiet means the loop's ready queue is empty: every task waits on a future nobody is about to resolve. That
holds for the engine because the SQLite store commits and reads on the loop's own thread; work handed to a thread
(the store's heavy API reads) would wait in real time and is not for this clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sized

# 2023-11-14T22:13:20Z: a round number in the past, so ids made under it never run ahead of real ones made later
# in the same process (relay.ids keeps them ordered across both).
START = 1_700_000_000.0
# Turns of the loop one instant may take before the clock calls it a livelock: a pass over a few alerts takes
# a few dozen; thousands mean something re-arms itself without waiting (a poke that is never cleared, say).
MAX_TURNS = 10_000
FALLBACK_TURNS = 200  # an event loop that does not show its ready queue: yield this often and hope


class Livelock(AssertionError):
    """The loop never went quiet at one fake instant."""


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.start = start
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties wake in the order they went to sleep
        self._driver: asyncio.Future[None] | None = None  # done when the loop was last seen quiet

    def now(self) -> float:
        return self._now

    @property
    def t(self) -> float:
        """Seconds since the clock started: the time the tests speak in."""
        return self._now - self.start

    async def sleep_until(self, t: float) -> None:
        if t <= self._now:
            await asyncio.sleep(0)  # like asyncio.sleep(0) on a real clock: others get a turn first
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t, next(self._order), woken))
        await woken  # cancelling the sleeper cancels `woken`, which the next advance then skips

    def next_wake(self) -> float | None:
        """The earliest time a sleeper waits for (None: nobody sleeps on this clock)."""
        self._forget_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self._now + seconds)

    async def advance_to(self, t: float) -> None:
        """Move to `t` (absolute), stopping at every due time on the way; returns with the loop quiet at `t`."""
        if t < self._now:
            raise ValueError(f"the clock only moves forward: {t} < {self._now}")
        while (due := self.next_wake()) is not None and due <= t:
            self._now = due
            while self._sleepers and self._sleepers[0][0] <= due:
                woken = heapq.heappop(self._sleepers)[2]
                if not woken.done():
                    woken.set_result(None)
            await self.settle()
        self._now = t
        await self.settle()

    async def settle(self) -> None:
        """Let the loop run, without moving the clock, until no task can take a step.

        Several tasks may settle at once (two acks racing, each waiting for quiet): one drives, the others wait
        for it off the ready queue, where they would otherwise keep each other from ever seeing it empty."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        if ready is None:
            for _ in range(FALLBACK_TURNS):
                await asyncio.sleep(0)
            return
        # Each round one settler leaves (the driver, once it saw quiet), so this ends.
        while self._driver is not None:
            await asyncio.wait([self._driver])  # not cancelled with this waiter: the driver owns it
            if not ready:  # the others it woke may still need a turn: then one of them drives
                return
        self._driver = loop.create_future()
        try:
            await self._drive(ready)
        finally:
            self._driver.set_result(None)
            self._driver = None

    async def _drive(self, ready: Sized) -> None:
        for _ in range(MAX_TURNS):
            await asyncio.sleep(0)
            if not ready:
                _refuse_real_timers(asyncio.get_running_loop())
                return
        raise Livelock(f"the loop kept running for {MAX_TURNS} turns at t={self.t}")

    def _forget_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


def _refuse_real_timers(loop: asyncio.AbstractEventLoop) -> None:
    """Code under a fake clock that waits on the loop's real timers (asyncio.sleep, timeouts) would make the
    test's outcome depend on how fast the machine is: name it instead."""
    scheduled = getattr(loop, "_scheduled", ())
    real = [h for h in scheduled if not h.cancelled()]
    if real:
        raise AssertionError(f"something waits on real time under the fake clock: {real[:3]}")
