"""The relay's records of alerts, deliveries and acks: plain frozen values the rules, the engine and every
store share (a store loads them from rows and saves them back; it decides nothing about them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from relay.domain.model import Priority, Report
from relay.domain.states import AlertState, DeliveryState


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
    report: Report  # as submitted (validated at intake), caller included; `report.as_submitted()` is stored
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
