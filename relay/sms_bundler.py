"""SMS to one phone under a surge: the first goes at once, what follows within the window goes as one bundle.

Carriers throttle a flood of SMS to one number, and a dispatcher reads one bundle (each alert with its code)
faster than ten messages arriving out of order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.clock import Clock, sleep_until_or
from relay.store.base import AlertRecord, DeliveryRecord
from relay.tasks import stop_if_cancelled

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

    def add(self, item: SmsItem) -> None:
        self._items += 1
        self._idle.clear()
        phone = item.delivery.target
        state = self._phones.setdefault(phone, _Phone())
        now = self._clock.now()
        if not state.pending and now >= state.last_sent + self._window:
            state.last_sent = now
            self._ready.put_nowait((phone, [item]))
        else:
            state.pending.append(item)
            self._changed.set()

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
            await sleep_until_or(self._clock, next_at, self._changed)
