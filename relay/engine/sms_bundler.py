"""SMS to one phone under a surge: what falls due together leaves together, at once, as one bundle; what follows
within the window waits for the window's end (at most `window_s`) and goes as the next bundle.

Carriers throttle a flood of SMS to one number, and a dispatcher reads one bundle (each alert with its code)
faster than ten messages arriving out of order. But a bundle must never hold a warning back: alerts due in one
scheduler pass (after a restart, twenty at once) go in one bundle the moment the pass ends, not one now and the
rest a window later.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from relay.domain.clock import Clock, sleep_until_or
from relay.domain.records import AlertRecord, DeliveryRecord
from relay.engine.tasks import stop_if_cancelled

MAX_SENDS_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class SmsItem:
    alert: AlertRecord
    delivery: DeliveryRecord


SendBatch = Callable[[str, list[SmsItem]], Awaitable[None]]


@dataclass
class _Phone:
    last_sent: float = -math.inf
    pending: list[SmsItem] = field(default_factory=list)


class SmsBundler:
    def __init__(self, window_s: float, send: SendBatch, clock: Clock) -> None:
        self._window, self._send, self._clock = window_s, send, clock
        self._phones: dict[str, _Phone] = {}
        self._ready: asyncio.Queue[tuple[str, list[SmsItem]]] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._items = 0  # added and not yet sent
        self._idle = asyncio.Event()
        self._idle.set()
        self._holds = 0  # open `together()` blocks: what they add waits for the last one to close
        self._held_since = 0.0  # when the oldest item still held by them was added

    def add(self, item: SmsItem) -> None:
        self._items += 1
        self._idle.clear()
        self._phones.setdefault(item.delivery.target, _Phone()).pending.append(item)
        now = self._clock.now()
        if not self._holds:
            self._flush(now)
        elif now >= self._held_since + self._window:
            self._flush_held(now)
        else:
            self._changed.set()  # the flusher wakes when the hold has lasted a window

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """What is added inside goes out when the block ends, one bundle per phone (a scheduler pass), or once it
        has waited `window_s`, whichever comes first: a pass that runs long under a backlog must not hold SMS."""
        if not self._holds:
            self._held_since = self._clock.now()
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self._flush(self._clock.now())

    def _flush_held(self, now: float) -> float:
        """The hold has lasted a window: what it collected goes now; what follows is held afresh."""
        self._held_since = now
        return self._flush(now)

    def _flush(self, now: float) -> float:
        """Hands on each phone's collected SMS whose window is over; returns when the next window ends."""
        next_at = math.inf
        for phone, state in self._phones.items():
            if not state.pending:
                continue
            due = state.last_sent + self._window
            if due <= now:
                items, state.pending, state.last_sent = state.pending, [], now
                self._ready.put_nowait((phone, items))
            else:
                next_at = min(next_at, due)
        if next_at < math.inf:
            self._changed.set()
        return next_at

    async def idle(self) -> None:
        """Returns once everything added has been sent (or failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        limit = asyncio.Semaphore(MAX_SENDS_IN_FLIGHT)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flusher())
            while True:
                stop_if_cancelled()
                phone, items = await self._ready.get()
                await limit.acquire()
                tg.create_task(self._send_one(phone, items, limit))

    async def _send_one(self, phone: str, items: list[SmsItem], limit: asyncio.Semaphore) -> None:
        try:
            await self._send(phone, items)
        finally:
            limit.release()
            self._items -= len(items)
            if self._items == 0:
                self._idle.set()

    async def _flusher(self) -> None:
        """Hands each phone's collected SMS on when its window ends."""
        while True:
            self._changed.clear()
            now = self._clock.now()
            if not self._holds:
                next_at = self._flush(now)
            elif now >= self._held_since + self._window:
                next_at = min(self._flush_held(now), self._held_since + self._window)
            else:
                next_at = self._held_since + self._window
            self._changed.clear()  # _flush set it for the wait below, which this loop does itself
            await sleep_until_or(self._clock, next_at, self._changed)
