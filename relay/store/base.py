"""What the engine needs from durable storage. SQL lives in the implementations only."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.model import Priority
from relay.states import AlertState, DeliveryState


class StoreUnavailable(Exception):
    """The store could not make a change durable; nothing of that change was kept."""


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    delivery_id: str
    alert_id: str
    desk_id: str
    channel: str
    target: str
    state: DeliveryState = DeliveryState.QUEUED
    attempts: int = 0
    sent_at: float | None = None
    delivered_at: float | None = None
    error: str | None = None
    permanent: bool = False  # failed for good (a bad number): no repeat will help
    attempted_at: float | None = None  # when the last attempt ended


@dataclass(frozen=True, slots=True)
class AckRecord:
    alert_id: str
    desk_id: str
    channel: str
    by: str
    at: float
    latency_s: float
    source: str = ""  # where it came from: a remote address, a phone number, an MQTT topic


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: str
    report_id: str
    operator_id: str
    short_code: str
    state: AlertState
    priority: Priority
    stale: bool
    created_at: float
    report: dict[str, Any]  # as submitted (validated), caller included
    desks: tuple[str, ...]
    deliveries: tuple[DeliveryRecord, ...] = ()
    ack: AckRecord | None = None
    next_action_at: float | None = None
    backup_rounds: int = 0
    last_backup_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewAlert:
    alert: AlertRecord
    content_sha256: str  # replay with the same report_id is the same report only if this matches
    source: str  # http | mqtt


class AcceptOutcome(enum.StrEnum):
    CREATED = "created"
    REPLAY = "replay"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Accepted:
    outcome: AcceptOutcome
    alert: AlertRecord


class AttemptOutcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # transient failure: back to queued
    FAILED = "failed"  # permanent failure
    # The send raised what nobody foresaw: failed, with the reason, but not for good. Nothing replays it (not at
    # a restart either); the next backup round tries it afresh.
    BROKE = "broke"
    CANCELLED = "cancelled"  # not sent: the alert was closed before it went out


@dataclass(frozen=True, slots=True)
class AckResult:
    first: bool  # False: a later ack, recorded as a duplicate
    alert: AlertRecord  # after the ack
    was_open: bool = False  # it closed an open alert (not one already given up)
    cancelled: int = 0  # queued sends stopped by it


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    alert: AlertRecord
    newly_delivered: bool  # this receipt moved the alert from pending to delivered


@dataclass(frozen=True, slots=True)
class EventRecord:
    alert_id: str
    at: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthFailureTally:
    """Requests refused for failed authentication, counted together: a flood must not write a row per request."""

    kind: str  # auth_refused (bearer token), link_refused (e-mail link), webhook_refused (Twilio signature)
    endpoint: str  # the route, e.g. /api/v1/reports
    source: str  # the remote address
    count: int
    first_at: float
    last_at: float
    reason: str  # the latest one seen


@dataclass(frozen=True, slots=True)
class Schedule:
    """The escalation timers of one alert, as stored due times."""

    next_action_at: float | None
    backup_rounds: int
    last_backup_at: float | None


class Store(Protocol):
    async def run(self) -> None:
        """The writer: commits queued changes in batches until cancelled, then flushes and closes."""
        ...

    async def accept(self, new: NewAlert) -> Accepted:
        """Store a new alert (report, deliveries, routing, history) durably; or find its replay or conflict."""
        ...

    async def get_alert(self, alert_id: str) -> AlertRecord | None: ...

    async def list_alerts(
        self,
        *,
        states: Sequence[AlertState] | None,
        limit: int,
        operator_id: str | None = None,
        desk_id: str | None = None,
    ) -> list[AlertRecord]:
        """Newest first by acceptance order."""
        ...

    async def finish_attempt(
        self, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None = None
    ) -> DeliveryRecord | None:
        """Record how a send went; None when the delivery was cancelled or is unknown. A failed send makes its
        open alert due now, in the same commit (the scheduler decides what follows)."""
        ...

    async def start_attempt(self, delivery_id: str, at: float) -> DeliveryRecord | None:
        """Mark a delivery as being sent (the outbox step before a send); None if the alert is closed."""
        ...

    async def mark_delivered(
        self, alert_id: str, desk_id: str, channel: str, at: float
    ) -> ReceiptResult | None:
        """A receipt: that desk's deliveries on that channel are delivered. None: no such delivery."""
        ...

    async def record_ack(self, ack: AckRecord) -> AckResult | None:
        """First ack closes the alert and cancels queued sends; later ones are kept as duplicates."""
        ...

    async def save_schedule(self, alert_id: str, schedule: Schedule) -> None: ...

    async def give_up(self, alert_id: str, at: float) -> AlertRecord | None:
        """Make an open alert `unacknowledged` and stop its sends; None if it was not open."""
        ...

    async def due_alerts(self, now: float, limit: int) -> list[AlertRecord]: ...

    async def next_due_at(self) -> float | None: ...

    async def alerts_with_queued(self, channel: str, limit: int) -> list[AlertRecord]:
        """Open alerts that still have a delivery on `channel` that never reached it."""
        ...

    async def start_backup_round(
        self, alert_id: str, schedule: Schedule, deliveries: Sequence[DeliveryRecord], at: float
    ) -> list[DeliveryRecord] | None:
        """Atomically: store the schedule, create the round's deliveries that do not exist yet, and mark every
        one worth sending as SENDING (the outbox step). Returns those; None if the alert is no longer open.
        SMS to a phone that replied STOP is marked failed instead."""
        ...

    async def delivery_report(
        self, delivery_id: str, at: float, *, delivered: bool, error: str | None = None
    ) -> ReceiptResult | None:
        """A provider's word on one delivery (an SMS status callback): delivered, or failed with why."""
        ...

    async def alerts_with_sending(self, limit: int) -> list[AlertRecord]:
        """Open alerts with a delivery marked SENDING: after a restart, sends that may not have gone out."""
        ...

    async def find_by_code(self, code: str, now: float) -> AlertRecord | None:
        """The open alert holding this short code; else the latest one given up within the last day."""
        ...

    async def set_sms_opt_out(self, phone: str, opted_out: bool, at: float) -> None: ...

    async def add_event(self, event: EventRecord) -> None:
        """History of an alert; with alert_id "" an event of the relay as a whole (a refused webhook)."""
        ...

    async def audit_log(self, limit: int) -> list[EventRecord]:
        """The newest acks, refused acks and refused webhooks and links, newest first. Failed authentication
        comes as one record per (kind, endpoint, source, hour), its detail holding `count`, `first_at`, `last_at`
        (RFC 3339), `endpoint`, `from` and the latest `reason`."""
        ...

    async def add_auth_failures(self, tallies: Sequence[AuthFailureTally]) -> None:
        """Add these counts to the rows of their hour (by `last_at`), creating rows where there are none."""
        ...

    async def first_inbound(self, channel: str, message_id: str, at: float) -> bool:
        """True the first time this inbound message id is seen on this channel; False for a redelivery."""
        ...

    async def prune(self, before: float, batch: int) -> int:
        """Delete at most `batch` rows of each kind of history older than `before` (events, counted
        authentication failures, inbound message ids); the number deleted. Alerts, deliveries and acks stay."""
        ...

    async def events(self, alert_id: str) -> list[EventRecord]: ...

    async def count_open(self) -> int: ...

    async def check_writable(self) -> None:
        """Raise StoreUnavailable unless a change can be committed now."""
        ...
