"""Failure containment: the one place where a job runs, so that one job's error is that job's failure alone.

A job is one delivery, one inbound message (an MQTT reply or report, an SMS reply), one alert's escalation step,
one HTTP request, or a long-running part of the daemon (a channel's connection, the event publisher). Whatever
a job raises, other than cancellation, is counted (`relay_job_failures_total{kind,reason}`), logged once with
the alert id, and handed to the job's own `on_failure`, which records it where the people concerned will see it
(a delivery `failed` with the reason, an alert's history); the daemon and every other job go on. One report
with a line break in a field once took the whole relay down, and again on every restart: never again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.engine.metrics import Metrics
from relay.store.base import StoreUnavailable

log = logging.getLogger("relay.jobs")

T = TypeVar("T")
A = TypeVar("A")

MAX_DETAIL = 300


class JobKind(enum.StrEnum):
    DELIVERY = "delivery"
    INBOUND = "inbound"
    SCHEDULED = "scheduled"
    REQUEST = "request"
    TASK = "task"


class JobReason(enum.StrEnum):
    # The store is down: nothing can be recorded, the job's rows stay as they were and are taken up again
    # (at-least-once) when it is back.
    STORE_UNAVAILABLE = "store_unavailable"
    # Anything else: a bug, or a library raising what no rule foresaw. The exception's type and text go into
    # the record and the log; the label stays one value so the metric's cardinality is bounded.
    UNEXPECTED = "unexpected"


def reason_of(exc: BaseException) -> JobReason:
    return JobReason.STORE_UNAVAILABLE if isinstance(exc, StoreUnavailable) else JobReason.UNEXPECTED


def describe(exc: BaseException) -> str:
    """`Type: message`, bounded: this text is stored with the delivery and shown to operators."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:MAX_DETAIL]


class Jobs:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def failed(self, kind: JobKind, exc: BaseException, *, alert_id: str | None = None, **context: Any) -> str:
        """Count and log one job's failure; returns `reason: Type: message` for the record."""
        reason = reason_of(exc)
        self._metrics.job_failures.labels(kind.value, reason.value).inc()
        detail = describe(exc)
        log.error(
            "job failed",
            extra={"event": "job_failed", "kind": kind.value, "reason": reason.value, "alert_id": alert_id,
                   "error": detail, **context},
            # the traceback of a bug is what its fix needs; a store outage is logged by the store itself
            exc_info=exc if reason is JobReason.UNEXPECTED else None,
        )
        return f"{reason.value}: {detail}"

    async def run(
        self,
        kind: JobKind,
        call: Callable[[], Awaitable[T]],
        *,
        alert_id: str | None = None,
        on_failure: Callable[[str], Awaitable[None]] | None = None,
        **context: Any,
    ) -> T | None:
        """`call()`'s result, or None if it failed; then `on_failure(detail)` records it (except while the store
        is unavailable: then there is nowhere to record it, and the job's stored state is left as it was)."""
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 - the point of this module; CancelledError passes (BaseException)
            detail = self.failed(kind, exc, alert_id=alert_id, **context)
            if on_failure is not None and reason_of(exc) is JobReason.UNEXPECTED:
                try:
                    await on_failure(detail)
                except Exception as second:  # noqa: BLE001 - recording failed too: counted, logged, no more
                    self.failed(kind, second, alert_id=alert_id, stage="recording the failure", **context)
            return None

    def contain(
        self, kind: JobKind, handler: Callable[[A], Awaitable[None]], describe_arg: Callable[[A], dict[str, Any]]
    ) -> Callable[[A], Awaitable[None]]:
        """`handler`, each call of it run as a job of its own (for callbacks a channel makes into the relay)."""

        async def contained(arg: A) -> None:
            await self.run(kind, lambda: handler(arg), **describe_arg(arg))

        return contained

    async def supervise(
        self, name: str, start: Callable[[], Awaitable[object]], *, first_wait_s: float = 0.5, max_wait_s: float = 30.0
    ) -> None:
        """Keep a long-running part going: when it raises, count it, wait (capped, doubling), restart it. A part
        that returns has nothing more to do (a canary that is not configured) and is not restarted.

        A channel whose library fails in a way nobody foresaw is that channel down for a moment, not the relay.
        """
        wait = first_wait_s
        while True:
            started = time.monotonic()
            try:
                await start()
                return
            except Exception as exc:  # noqa: BLE001 - counted and logged; the part is restarted
                self.failed(JobKind.TASK, exc, task=name)
            if time.monotonic() - started > max_wait_s:
                wait = first_wait_s  # it ran well for a while: this is a new failure, not the same one again
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait_s)
