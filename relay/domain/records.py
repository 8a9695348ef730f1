"""The relay's records of alerts, deliveries and acks: plain frozen values the rules, the engine and every
store share (a store loads them from rows and saves them back; it decides nothing about them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from relay.domain import tracks
from relay.domain.model import Priority, Report
from relay.domain.states import AlertState, DeliveryState
from relay.domain.tracks import Sighting, TrackState


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
    via_track: bool = False  # the ack of the alert's track, not of this alert itself (CONTRACT.md, "Tracks")


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
    track_id: str = ""  # the track it belongs to (stored); every alert has one, a lone report its own
    # Not stored: what the engine knows of the track when it hands the alert to a channel (the console's payload
    # carries the track; a backup round's texts list the track's other open codes).
    track: TrackContext | None = None


@dataclass(frozen=True, slots=True)
class TrackContext:
    estimate: TrackState
    alert_ids: tuple[str, ...]  # the latest ones (a console's payload names at most twenty)
    acknowledged: bool = False
    update_for: frozenset[str] = frozenset()  # desks that already had an alert of this track
    other_codes: tuple[str, ...] = ()  # the track's open short codes (a backup round lists those of the others)
    reports: int = 0  # how many alerts the track holds; 0: as many as alert_ids


@dataclass(frozen=True, slots=True)
class TrackAlert:
    """An alert as its track needs it."""

    alert_id: str
    operator_id: str
    short_code: str
    state: AlertState
    priority: Priority
    created_at: float
    desks: tuple[str, ...]
    sighting: Sighting


@dataclass(frozen=True, slots=True)
class OpenAlert:
    alert_id: str
    short_code: str
    priority: Priority
    created_at: float


@dataclass(frozen=True, slots=True)
class OpenInTrack:
    """What a track's backup chain needs: when the track began, and its open alerts, oldest first."""

    opened_at: float
    open: tuple[OpenAlert, ...]


@dataclass(frozen=True, slots=True)
class TrackRecord:
    """A track as stored: the correlator's estimate, and who acknowledged it."""

    track_id: str
    estimate: TrackState
    opened_at: float  # its first alert's acceptance: the track's backups count from it
    updated_at: float
    acks: tuple[AckRecord, ...] = ()  # each desk's first ack of the track: it covers that desk's later alerts too
    merged_into: str | None = None  # a dispatcher merged it into that track; it holds no alerts now
    alerts: tuple[TrackAlert, ...] = ()  # oldest first


@dataclass(frozen=True, slots=True)
class NewAlert:
    alert: AlertRecord
    content_sha256: str  # replay with the same report_id is the same report only if this matches
    source: str  # http | mqtt
    track: TrackState | None = None  # the alert's track as it is with this report in it; None: a track of its own

    def track_estimate(self) -> TrackState:
        a = self.alert
        return self.track or tracks.start(Sighting.of(a.report), a.track_id or a.alert_id)


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
    track: tuple[AckResult, ...] = ()  # the track's other alerts it closed (each with the track's ack)


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    alert: AlertRecord
    newly_delivered: bool  # this receipt moved the alert from pending to delivered
    newly_shown: bool = True  # (web console) the first time this desk's page said it shows the alert


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


# ---- several relays on one store (CONTRACT.md, "More than one relay") ----------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """What renewing this relay's lease found."""

    alive: int  # relays whose lease is live, this one included
    lapsed: bool  # this relay's lease had lapsed before the renewal: another relay may have taken its work
    other_instance: bool  # the id's lease was held by another process (an earlier run, or a second relay on this id)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One committed change of an alert's state or track, as the store's change feed has it."""

    seq: int
    alert_id: str
    origin: str  # the relay that made it
    age_s: float  # since it was written, by the store's clock
