"""A circuit breaker for a provider behind a channel, which also keeps the channel's health up to date.

Closed: sends go through. After `threshold` sends in a row failed (retries spent), it opens: sends fail at once
for `cooldown_s`, so a dead provider does not hold every backup send for its full retry budget during a surge.
Then one send is let through (half-open); its outcome closes or reopens the breaker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from channels.base import ChannelHealth, HealthState


class CircuitBreaker:
    def __init__(
        self, health: ChannelHealth, *, threshold: int = 3, cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,  # only differences count: any steady scale will do
    ) -> None:
        self._health, self._threshold, self._cooldown = health, threshold, cooldown_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    def allow(self) -> bool:
        """May a send go to the provider now? (While open, no; once the cool-down is over, one may try.)"""
        if self._failures < self._threshold:
            return True
        if self._clock() >= self._open_until:
            self._open_until = self._clock() + self._cooldown  # half-open: this one tries, the rest wait
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        if self._health.state is not HealthState.UP:  # up already: its reason (e.g. which SMSC is bound) stays
            self._health.set(HealthState.UP, "last send accepted")

    def retrying(self, detail: str) -> None:
        """A transient failure inside one send's retries."""
        if self._health.state is HealthState.UP:
            self._health.set(HealthState.DEGRADED, detail)

    def failed(self, detail: str, *, provider_fault: bool = True) -> None:
        """A send failed for good. `provider_fault=False` (a bad number, say) says nothing about the provider."""
        if not provider_fault:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._cooldown
            self._health.set(HealthState.DOWN, f"circuit open after {self._failures} failed sends: {detail}")
        else:
            self._health.set(HealthState.DEGRADED, detail)
