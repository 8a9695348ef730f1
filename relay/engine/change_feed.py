"""Other relays' changes, told to this relay's operators and dispatchers (SSE) as if made here.

Every change of an alert's state or track is written to the store's change feed in its own transaction (a trigger:
no path that changes an alert can forget it) with a NOTIFY that wakes the other relays at once. The feed is read
by sequence number; a NOTIFY only says "read now", so one lost while a relay was not listening costs a poll's delay,
never the change. Sequence numbers are taken before commit: one seen missing may belong to a transaction still
open, and is asked for again until it commits or `MISSING_FOR_S` has passed (a rolled-back one never will).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from relay.domain.clock import Clock
from relay.domain.records import AlertChange
from relay.engine.events import EventBus, StateEvent
from relay.engine.metrics import Metrics
from relay.engine.track_book import TrackBook
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.change_feed")

POLL_S = 1.0  # without a NOTIFY, the feed is read this often
BATCH = 500
MISSING_FOR_S = 120.0  # longer than any transaction may stay open (statement and idle-in-transaction timeouts)
MISSING_MAX = 10_000


class ChangeFeed:
    def __init__(
        self, *, store: Store, bus: EventBus, book: TrackBook, clock: Clock, metrics: Metrics,
        recount: Callable[[], Awaitable[None]],
    ) -> None:
        self._store, self._bus, self._book, self._clock, self._metrics = store, bus, book, clock, metrics
        self._recount = recount
        self._seq = -1  # not read yet
        self._missing: dict[int, float] = {}  # sequence number -> when first missed (monotonic)

    async def run(self) -> None:
        while True:
            try:
                if self._seq < 0:
                    self._seq = await self._store.last_change()  # what came before this relay started is history
                changes = await self._store.changes_after(self._seq, list(self._missing), BATCH)
                self._advance(changes)
                theirs = [c for c in changes if c.origin != self._store.relay_id]
                if theirs:
                    await self._pass_on(theirs)
            except StoreUnavailable:
                changes = []
            if len(changes) < BATCH:
                await self._store.wait_for_change(POLL_S)

    def _advance(self, changes: list[AlertChange]) -> None:
        now = time.monotonic()
        for c in changes:
            if self._missing.pop(c.seq, None) is not None or c.seq <= self._seq:
                continue
            for gap in range(max(self._seq + 1, c.seq - MISSING_MAX), c.seq):
                self._missing[gap] = now
            self._seq = c.seq
        for seq in [s for s, since in self._missing.items() if now - since > MISSING_FOR_S]:
            del self._missing[seq]

    async def _pass_on(self, changes: list[AlertChange]) -> None:
        ids = list(dict.fromkeys(c.alert_id for c in changes))
        alerts = {a.alert_id: a for a in await self._store.get_alerts(ids)}
        now = self._clock.now()
        for alert_id in ids:  # each alert once, as it is now: what its operator's view must show
            alert = alerts.get(alert_id)
            if alert is not None:
                self._bus.publish(StateEvent.of(alert, now, foreign=True))
        if self._book.enabled:  # a report another relay placed: the next one here may join its track
            for track_id in dict.fromkeys(a.track_id for a in alerts.values() if a.track_id):
                record = await self._store.get_track(track_id)
                if record is not None and record.merged_into is not None:
                    self._book.replace(None, gone=track_id)
                else:
                    self._book.replace(record)
        await self._recount()
        for c in changes:  # counted once all of it is done here (a test waits on the count)
            self._metrics.change_feed_lag.observe(c.age_s)
        self._metrics.change_feed_events.inc(len(changes))
