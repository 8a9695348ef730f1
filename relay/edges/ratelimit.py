"""Token buckets per key: a 112 system may flush a queue at once (burst), not flood for ever (rate).

Keys are bearer-token ids (a few, from the config) or, for failed authentication, remote addresses, which an
attacker chooses: with `max_keys` the least recently used bucket is dropped past that many, so memory stays
bounded whatever the number of addresses. A dropped bucket comes back full, which is what an address never
seen before gets anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_keys: int | None = None) -> None:
        self._rate, self._burst, self._max_keys = rate_per_s, float(burst), max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0 if allowed now (one token taken); otherwise the seconds to wait before the next request would be."""
        b = self._refill(key, now)
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self._rate

    def wait(self, key: str, now: float) -> float:
        """Like `take`, but takes nothing: whether this key is over its rate right now, at the cost of a lookup."""
        b = self._buckets.get(key)
        if b is None:
            return 0.0
        tokens = min(self._burst, b.tokens + (now - b.at) * self._rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate

    def _refill(self, key: str, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self._burst, now)
            if self._max_keys is not None and len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        b.tokens = min(self._burst, b.tokens + (now - b.at) * self._rate)
        b.at = now
        return b
