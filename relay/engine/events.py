"""Alert state changes, fanned out in process to whoever listens (SSE streams, the MQTT event publisher)."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from relay.domain.records import AckRecord, AlertRecord

# A listener that falls this far behind loses its oldest events (counted), never blocks the engine.
SUBSCRIPTION_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class StateEvent:
    alert_id: str
    report_id: str
    operator_id: str
    desks: tuple[str, ...]
    state: str
    at: float
    short_code: str
    ack: AckRecord | None = None
    track_id: str | None = None
    # made by another relay on the shared store (relay/engine/change_feed.py): this relay tells its own SSE
    # listeners, but does not publish it to the broker again (the relay that made it did)
    foreign: bool = False

    @classmethod
    def of(cls, alert: AlertRecord, at: float, *, foreign: bool = False) -> StateEvent:
        return cls(
            alert.alert_id, alert.report_id, alert.operator_id, alert.desks, alert.state.value, at,
            alert.short_code, alert.ack, alert.track_id or alert.alert_id, foreign,
        )


@dataclass(eq=False)
class Subscription:
    backlog: collections.deque[StateEvent] = field(
        default_factory=lambda: collections.deque(maxlen=SUBSCRIPTION_BACKLOG)
    )
    dropped: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, event: StateEvent) -> None:
        if len(self.backlog) == self.backlog.maxlen:
            self.dropped += 1
        self.backlog.append(event)
        self._ready.set()

    async def next(self) -> StateEvent:
        while not self.backlog:
            self._ready.clear()
            await self._ready.wait()
        return self.backlog.popleft()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def publish(self, event: StateEvent) -> None:
        for sub in self._subs:
            sub.push(event)

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
