"""Failed authentication is cheap: counted in memory, refused per address past a rate, written down in bulk.

A request that fails authentication (no or bad bearer token, a forged e-mail link, an unsigned Twilio webhook)
used to write one fsync'd audit row each: thousands a second from one client filled the disk, and a full disk
refuses reports. Now each failure costs a metric increment, a token-bucket lookup and a dict update:

- per remote address, `http.anon_burst` failures then `http.anon_rate_per_s`; past that the address gets 429
  (with Retry-After) before anything that costs, for webhooks before their body is even read;
- the audit trail gets one row per (kind, endpoint, address, hour) with a count and first/last seen, from
  tallies flushed every `FLUSH_S` by one task, so a flood writes O(1) rows, not O(requests);
- both the limiter and the tallies are bounded in entries: an attacker with many addresses cannot grow them.

The address is the peer's (`request.remote`), never a forwarded header a client could forge. Behind a reverse
proxy every caller shares the proxy's address, so the budget becomes one for all failures together: a
legitimate bearer token still gets through (it is checked before the budget, see `relay.api.access`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from relay.domain.clock import Clock
from relay.domain.records import AuthFailureTally
from relay.edges.api.errors import ApiError
from relay.edges.ratelimit import RateLimiter
from relay.engine.metrics import Metrics
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.api.failures")

FLUSH_S = 2.0
MAX_TALLIES = 1024  # distinct (kind, endpoint, address) between two flushes; past it they count under "other"
MAX_ADDRESSES = 10_000  # buckets of the per-address limiter; the least recently seen is dropped past it
OTHER = "other"


@dataclass
class _Tally:
    count: int
    first_at: float
    last_at: float
    reason: str


class FailureTrail:
    """Counts failures in memory and adds them to the store's per-hour rows every FLUSH_S."""

    def __init__(self, store: Store, clock: Clock, max_tallies: int = MAX_TALLIES) -> None:
        self._store, self._clock, self._max = store, clock, max_tallies
        self._tallies: dict[tuple[str, str, str], _Tally] = {}

    def add(self, kind: str, endpoint: str, source: str, reason: str, at: float) -> None:
        key = (kind, endpoint, source)
        if key not in self._tallies and len(self._tallies) >= self._max:
            key = (kind, endpoint, OTHER)
        t = self._tallies.get(key)
        if t is None:
            self._tallies[key] = _Tally(1, at, at, reason)
        else:
            t.count, t.last_at, t.reason = t.count + 1, at, reason

    async def run(self) -> None:
        try:
            while True:
                await self._clock.sleep_until(self._clock.now() + FLUSH_S)
                try:
                    await self.flush()
                except Exception:  # counting failures must never stop the relay
                    log.exception("failed-authentication counts not written", extra={"event": "auth_failures_lost"})
        finally:
            # Stopping: what was counted since the last flush is still written (the store stops after this).
            try:
                async with asyncio.timeout(2):
                    await self.flush()
            except TimeoutError:
                log.warning("failed-authentication counts not written at stop", extra={"event": "auth_failures_lost"})

    async def flush(self) -> None:
        if not self._tallies:
            return
        taken, self._tallies = self._tallies, {}
        try:
            await self._store.add_auth_failures([
                AuthFailureTally(k[0], k[1], k[2], t.count, t.first_at, t.last_at, t.reason)
                for k, t in taken.items()
            ])
        except StoreUnavailable as exc:
            log.warning("failed-authentication counts not written; kept for the next try",
                        extra={"event": "auth_failures_unwritten", "error": str(exc)})
            for key, t in taken.items():  # merged back, still bounded by the keys' cap
                self._merge(key, t)

    def _merge(self, key: tuple[str, str, str], old: _Tally) -> None:
        if key not in self._tallies and len(self._tallies) >= self._max:
            key = (key[0], key[1], OTHER)
        t = self._tallies.get(key)
        if t is None:
            self._tallies[key] = old
        else:
            t.count, t.first_at = t.count + old.count, min(t.first_at, old.first_at)


class AuthGuard:
    """What every route that authenticates calls when authentication failed, or before costly work."""

    def __init__(self, rate_per_s: float, burst: int, trail: FailureTrail, metrics: Metrics, clock: Clock) -> None:
        self._limiter = RateLimiter(rate_per_s, burst, max_keys=MAX_ADDRESSES)
        self.trail, self._metrics, self._clock = trail, metrics, clock

    def check(self, request: web.Request, kind: str) -> None:
        """429 now if this address has used up its failures: for webhooks, before their body is read."""
        wait = self._limiter.wait(_address(request), self._clock.now())
        if wait > 0:
            self._count(request, kind, "over the per-address rate of failed authentication")
            raise _too_many(wait)

    def failed(self, request: web.Request, kind: str, reason: str) -> None:
        """Count one failure of this address; 429 if it is over its rate. The caller refuses (401/403) after."""
        self._count(request, kind, reason)
        wait = self._limiter.take(_address(request), self._clock.now())
        if wait > 0:
            raise _too_many(wait)

    def _count(self, request: web.Request, kind: str, reason: str) -> None:
        endpoint = endpoint_of(request)
        self._metrics.auth_failures.labels(endpoint).inc()
        self.trail.add(kind, endpoint, _address(request), reason, self._clock.now())


AUTH_GUARD = web.AppKey("auth_guard", AuthGuard)


def guard_of(request: web.Request) -> AuthGuard:
    return request.app[AUTH_GUARD]


def endpoint_of(request: web.Request) -> str:
    """The route's pattern (`/ack/{token}`), never the path: a label must not take values a caller chooses."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


def _too_many(wait: float) -> ApiError:
    retry_after = max(1, int(wait + 0.999))
    return ApiError(429, "rate_limited", f"too many failed authentications from this address; retry in "
                    f"{retry_after} s", headers={"Retry-After": str(retry_after)})
