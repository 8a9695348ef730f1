"""What a bench receiver heard, keyed: when each key first arrived, and a way to wait for keys (the relay's
console receiver and the peer's webhook receiver both keep one)."""

from __future__ import annotations

import asyncio


class Arrivals:
    def __init__(self) -> None:
        self.received: dict[str, float] = {}  # key -> perf_counter() of its first copy
        self.duplicates = 0
        self._waiters: dict[str, asyncio.Future[float]] = {}

    def arrived(self, key: str, t: float) -> bool:
        """Record `key` at `t`; False (and counted) if it had arrived before."""
        if key in self.received:
            self.duplicates += 1
            return False
        self.received[key] = t
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(t)
        return True

    def _future(self, key: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self.received:
            fut.set_result(self.received[key])
        else:
            self._waiters[key] = fut
        return fut

    async def wait(self, key: str, within_s: float) -> float:
        """perf_counter() at which `key` arrived; TimeoutError if it did not within `within_s` seconds."""
        if key in self.received:
            return self.received[key]
        try:
            return await asyncio.wait_for(self._future(key), within_s)
        finally:
            self._waiters.pop(key, None)

    async def wait_all(self, keys: list[str], within_s: float) -> list[str]:
        """Wait until every key arrived or `within_s` seconds passed; returns the keys still missing."""
        pending = [self._future(k) for k in keys if k not in self.received]
        if pending:
            await asyncio.wait(pending, timeout=within_s)
        for k in keys:
            fut = self._waiters.pop(k, None)
            if fut is not None:
                fut.cancel()
        return [k for k in keys if k not in self.received]
