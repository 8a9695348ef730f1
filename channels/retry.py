"""The one retry policy inside a single send: bounded tries for failures that a later try may cure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from channels.base import FailureReason
from channels.breaker import CircuitBreaker

T = TypeVar("T")


class Transient(Exception):
    """A failure worth another try (a provider's 429 or 5xx, a timeout, a refused connection)."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    budget_s: float,
    first_wait_s: float,
    max_wait_s: float,
    breaker: CircuitBreaker,
    log: logging.Logger,
    event: str,
) -> T:
    """`call()` until it succeeds, raises something other than Transient, or the tries or budget run out (then
    the last Transient is raised). Waits grow exponentially with jitter; cancellation is never retried."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        breaker.retrying(str(exc))
        log.warning("send failed, retrying", extra={"event": event, "attempt": state.attempt_number,
                                                    "error": str(exc)})

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(Transient),  # a positive test: CancelledError is never retried
        wait=wait_exponential_jitter(multiplier=first_wait_s, max=max_wait_s, jitter=first_wait_s),
        stop=stop_after_attempt(attempts) | stop_before_delay(budget_s),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            result = await call()
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a library swallowed our cancellation: honour it
                raise asyncio.CancelledError
            return result
    raise AssertionError("tenacity ended without an outcome")  # reraise=True: never reached
