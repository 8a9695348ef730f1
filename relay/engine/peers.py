"""Several relays on one store: this relay's lease, and the work of relays whose lease lapsed.

A relay claims the alerts it accepts and steps (Store.due_alerts and friends) and holds them while its lease
lives; here it renews the lease, and takes over, within `lease_s` + one look, the open alerts and unfinished sends
of any relay that stopped renewing its own (GoAlert's engine cycles on a shared database, with Alertmanager's
preference: a send twice, recognisably, rather than never). The lease is in the relay's clock, like every due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay.domain.clock import Clock
from relay.engine.engine import Engine
from relay.engine.metrics import Metrics
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.peers")

RENEW_EVERY_S = 1.0  # the lease renewed this often (at most lease_s / 4)
# dead relays looked for this often (at most lease_s / 8): a takeover within lease_s + 1 s needs a look well inside
# that second (one look is one read of the few rows of `relays`)
LOOK_EVERY_S = 0.5
TAKEOVER_BATCH = 500


class Peers:
    def __init__(self, *, store: Store, engine: Engine, clock: Clock, metrics: Metrics, lease_s: float) -> None:
        self._store, self._engine, self._clock, self._metrics = store, engine, clock, metrics
        self._renew_every_s = min(RENEW_EVERY_S, lease_s / 4)
        self._look_every_s = min(LOOK_EVERY_S, lease_s / 8)
        self._lease_s = lease_s
        # Since when this relay's lease has been live without a break; None: not live now. A relay takes over no
        # other until it has held its own for lease_s: after an outage of the store every lease has lapsed, and
        # the first relay back must leave the others the time to renew theirs (else it would send their work too).
        self._held_since: float | None = None

    async def renew(self) -> None:
        """Renew this relay's lease; say what the renewal found. StoreUnavailable is raised."""
        now = self._clock.now()
        try:
            lease = await self._store.renew_lease(now)
        except StoreUnavailable:
            self._held_since = None
            raise
        if self._held_since is None or lease.lapsed:
            self._held_since = now
        self._metrics.peers_alive.set(lease.alive)
        if lease.lapsed:
            self._metrics.lease_lapsed.inc()
            log.error("this relay's lease had lapsed: another relay may have taken over its alerts; it goes on with "
                      "what it still holds", extra={"event": "lease_lapsed", "relay_id": self._store.relay_id})
        if lease.other_instance:
            log.warning(
                "another process held this relay's lease: an earlier run of this relay that ended moments ago, or a "
                "second relay with the same mqtt.client_id (each relay needs its own)",
                extra={"event": "lease_other_instance", "relay_id": self._store.relay_id},
            )

    async def run(self) -> None:
        # two loops: a takeover of thousands of alerts must not hold up this relay's own renewal
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_lease())
            tg.create_task(self._look_for_the_dead())

    async def _keep_lease(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):  # the claims of a relay cut off from the store lapse
                await self.renew()
            await self._clock.sleep_until(self._clock.now() + self._renew_every_s)

    async def _look_for_the_dead(self) -> None:
        while True:
            now = self._clock.now()
            held = self._held_since is not None and now - self._held_since >= self._lease_s
            with contextlib.suppress(StoreUnavailable):  # the store says so itself
                while held:
                    taken = await self._store.take_over(self._clock.now(), TAKEOVER_BATCH)
                    if taken:
                        self._engine.took_over(taken)
                    if len(taken) < TAKEOVER_BATCH:
                        break
            await self._clock.sleep_until(self._clock.now() + self._look_every_s)
