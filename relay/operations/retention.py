"""Old records are pruned: audit and event rows (and the other history) past `store.retention_days`, daily.

Alerts and their deliveries and acks stay: they are the record of what was reported and who was warned. The
history around them (events, counted authentication failures, inbound message ids) is what grows without end.
Deleted in batches of `BATCH`, each its own small write, so the writer (and the reports queued behind it) is
never held for long, however much there is to delete after a long time without pruning.
"""

from __future__ import annotations

import logging

from relay.domain.clock import Clock
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.retention")

DAY_S = 86400.0
FIRST_AFTER_S = 5.0  # after the start-up rush (recovering unsent deliveries), not a day later
BATCH = 500


class Retention:
    def __init__(self, store: Store, clock: Clock, retention_days: float) -> None:
        self._store, self._clock, self._keep_s = store, clock, retention_days * DAY_S

    async def run(self) -> None:
        next_at = self._clock.now() + FIRST_AFTER_S
        while True:
            await self._clock.sleep_until(next_at)
            try:
                await self.prune()
            except StoreUnavailable as exc:
                log.warning("prune failed; tried again tomorrow", extra={"event": "prune_failed", "error": str(exc)})
            except Exception:  # housekeeping that fails must not stop the relay
                log.exception("prune failed; tried again tomorrow", extra={"event": "prune_failed"})
            next_at = self._clock.now() + DAY_S

    async def prune(self) -> int:
        """Delete what is older than the retention period; the number of rows deleted."""
        before = self._clock.now() - self._keep_s
        total = 0
        while True:
            deleted = await self._store.prune(before, BATCH)
            total += deleted
            if deleted == 0:
                break
        log.info("old records pruned", extra={"event": "pruned", "rows": total, "before": before})
        return total
