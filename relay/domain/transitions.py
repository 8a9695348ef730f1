"""The domain's decisions about deliveries and alerts, as pure functions on records (beside states.py).

A store loads the rows, calls one of these, and saves what it returns: which state a send's outcome leads to, how
far a receipt walks a delivery, who wins an ack, what a backup round re-arms. Every state change goes through
`_to`, which checks it against the one state machine; no store and no other module decides these things.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.domain import short_code
from relay.domain.model import Priority
from relay.domain.records import AckRecord, AlertRecord, AttemptOutcome, DeliveryRecord
from relay.domain.states import (
    OPEN_ALERT_STATES,
    AlertState,
    DeliveryState,
    alert_may,
    check_alert,
    check_delivery,
    delivery_may,
)

_D = DeliveryState


def _to(d: DeliveryRecord, state: DeliveryState, **changes: Any) -> DeliveryRecord:
    check_delivery(d.state, state)
    return replace(d, state=state, **changes)


# ---- one delivery ------------------------------------------------------------------------------------------


def attempt_started(d: DeliveryRecord, alert_state: AlertState) -> DeliveryRecord | None:
    """The outbox step before a send: SENDING with one attempt more. For a closed alert a queued delivery is
    cancelled instead (returned; the caller sends only SENDING ones); None: nothing changes."""
    if alert_state not in OPEN_ALERT_STATES:
        return _to(d, _D.CANCELLED) if d.state is _D.QUEUED else None
    if not delivery_may(d.state, _D.SENDING):
        return None
    return _to(d, _D.SENDING, attempts=d.attempts + 1)


def attempt_finished(
    d: DeliveryRecord, alert_state: AlertState, outcome: AttemptOutcome, at: float, error: str | None
) -> DeliveryRecord | None:
    """How a send went decides the next state; None when the delivery was not being sent (cancelled meanwhile)."""
    attempts = d.attempts
    if d.state is _D.QUEUED:  # sent straight from the outbox row, without a separate SENDING commit
        check_delivery(d.state, _D.SENDING)
        attempts += 1
    elif d.state is not _D.SENDING:
        return None
    # one copy of the record, not one per step (this runs for every send)
    changes: dict[str, Any]
    if outcome is AttemptOutcome.SENT:
        # the first send's time stays: each repeat round is in the alert's history, not over this
        state, changes = _D.SENT, {"sent_at": d.sent_at or at, "error": None}
    elif outcome is AttemptOutcome.FAILED:
        state, changes = _D.FAILED, {"error": error, "permanent": True}
    elif outcome is AttemptOutcome.BROKE:
        state, changes = _D.FAILED, {"error": error, "permanent": False}
    elif outcome is AttemptOutcome.RETRY and alert_state in OPEN_ALERT_STATES:
        state, changes = _D.QUEUED, {"error": error}
    else:
        state, changes = _D.CANCELLED, {"error": error}
    check_delivery(_D.SENDING, state)
    return replace(d, state=state, attempts=attempts, attempted_at=at, **changes)


def replan_now(d: DeliveryRecord) -> bool:
    """A send that failed (for now or for good) makes its alert due at once: fail over, or retry later."""
    return d.state in (_D.QUEUED, _D.FAILED)


# A receipt proves the message got there, even where our own record of sending it was lost (a publish that timed
# out here but reached the broker after all): walk the rest of the way forward.
_PATH_TO_DELIVERED: Mapping[DeliveryState, tuple[DeliveryState, ...]] = {
    _D.QUEUED: (_D.SENDING, _D.SENT, _D.DELIVERED),
    _D.SENDING: (_D.SENT, _D.DELIVERED),
    _D.SENT: (_D.DELIVERED,),
    _D.FAILED: (_D.DELIVERED,),
}


def receipt(d: DeliveryRecord, at: float) -> DeliveryRecord | None:
    """The far end has it: DELIVERED, by the legal path; None if it already was (or was cancelled)."""
    path = _PATH_TO_DELIVERED.get(d.state, ())
    if not path:
        return None
    for step in path:
        d = _to(d, step, attempts=d.attempts + (step is _D.SENDING))
    return replace(d, sent_at=d.sent_at or at, delivered_at=at, error=None)


def shown_on_web(delivery_id: str, alert_id: str, desk_id: str, at: float) -> DeliveryRecord:
    """A desk's browser console shows the alert: a delivery that starts out delivered (the page fetched it)."""
    return DeliveryRecord(delivery_id, alert_id, desk_id, "web", "browser", _D.DELIVERED, attempts=1, sent_at=at,
                          delivered_at=at)


def undelivered(d: DeliveryRecord, error: str | None) -> DeliveryRecord | None:
    """A provider says it never arrived; a late 'failed' after 'delivered' changes nothing."""
    return _to(d, _D.FAILED, error=error) if delivery_may(d.state, _D.FAILED) else None


def cancel_queued(deliveries: Sequence[DeliveryRecord]) -> list[DeliveryRecord]:
    """An ack or a give-up stops every send that has not started."""
    return [_to(d, _D.CANCELLED) for d in deliveries if d.state is _D.QUEUED]


# ---- a backup round ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    created: list[DeliveryRecord]  # deliveries this round adds (a desk's target seen for the first time)
    changed: list[DeliveryRecord]  # every delivery whose row changes, the created ones included
    to_send: list[DeliveryRecord]  # the ones now SENDING (the outbox step done)


def backup_round(
    existing: Mapping[str, DeliveryRecord], wanted: Sequence[DeliveryRecord], opted_out: Collection[tuple[str, str]],
    at: float,
) -> Round:
    """Every wanted target re-armed, except one that failed for good (a bad number stays failed), one still being
    sent (never twice at once), and one whose owner opted out (`(channel, target)` pairs: a phone that replied
    STOP) which is failed for good with why."""
    created: list[DeliveryRecord] = []
    changed: list[DeliveryRecord] = []
    to_send: list[DeliveryRecord] = []
    for w in wanted:
        d = existing.get(w.delivery_id)
        if d is None:
            created.append(w)
            d = w
        if d.permanent or not delivery_may(d.state, _D.SENDING):
            continue
        started = _to(d, _D.SENDING, attempts=d.attempts + 1)
        if (d.channel, d.target) in opted_out:
            changed.append(_to(started, _D.FAILED, permanent=True, attempted_at=at,
                               error="rejected: the phone replied STOP; START re-enables it"))
            continue
        changed.append(started)
        to_send.append(started)
    return Round(created, changed, to_send)


# ---- an alert ----------------------------------------------------------------------------------------------


def delivered(alert: AlertRecord) -> AlertRecord | None:
    """A desk's console or phone has it; None if that changes nothing (already delivered, or closed)."""
    return replace(alert, state=AlertState.DELIVERED) if alert_may(alert.state, AlertState.DELIVERED) else None


def acknowledged(alert: AlertRecord, ack: AckRecord) -> AlertRecord | None:
    """The first ack closes the alert and stops its timers; None for a later one (kept as a duplicate)."""
    if alert.ack is not None:
        return None
    check_alert(alert.state, AlertState.ACKNOWLEDGED)
    return replace(alert, state=AlertState.ACKNOWLEDGED, ack=ack, next_action_at=None)


def track_acks(ack: AckRecord, alerts: Sequence[AlertRecord]) -> list[AlertRecord]:
    """A desk's ack of a track, or of one alert of it, covers every alert of the track that was routed to that desk
    and has no ack yet (a given-up one too: a late ack is still a person who saw it). Each is closed with the
    track's ack, marked `via_track` unless it is the alert the ack named."""
    closed = []
    for a in alerts:
        if ack.desk_id not in a.desks:
            continue
        own = replace(ack, alert_id=a.alert_id, latency_s=max(0.0, ack.at - a.created_at),
                      via_track=ack.via_track or a.alert_id != ack.alert_id)
        done = acknowledged(a, own)
        if done is not None:
            closed.append(done)
    return closed


def covered_by_track(alert: AlertRecord, track_acks: Collection[AckRecord]) -> AlertRecord:
    """A new alert of a track that every desk it goes to has acknowledged counts as acknowledged at once (it still
    reaches the consoles, as an update, and starts no backups). A desk that has not acknowledged the track gets it
    as an alarm, with its backups; a `flash` report always alarms on its own."""
    by_desk = {a.desk_id: a for a in track_acks}
    if alert.priority == Priority.FLASH or not alert.desks or any(d not in by_desk for d in alert.desks):
        return alert
    own = replace(by_desk[alert.desks[0]], alert_id=alert.alert_id, at=alert.created_at, latency_s=0.0,
                  via_track=True)
    return replace(alert, state=AlertState.ACKNOWLEDGED, ack=own, next_action_at=None)


def reached_someone(alert: AlertRecord) -> bool:
    """Some desk has had it: a console confirmed it, or a send of it left (to a broker, a provider, a server)."""
    if alert.state in (AlertState.DELIVERED, AlertState.ACKNOWLEDGED):
        return True
    return any(d.sent_at is not None for d in alert.deliveries)


def worth_sending(alert: AlertRecord) -> bool:
    """May a send handed to a channel still go out? While the alert is open, yes. After its give-up too, if it
    has reached nobody: the give-up stops the rounds and tells the operator, but a warning that a backlog held
    until then goes once, late, rather than never (an ack to it is still recorded)."""
    if alert.state in OPEN_ALERT_STATES:
        return True
    return alert.state is AlertState.UNACKNOWLEDGED and not reached_someone(alert)


def given_up(alert: AlertRecord) -> AlertRecord | None:
    """Nobody acknowledged in time: `unacknowledged`, timers stopped; None if it was not open."""
    if not alert_may(alert.state, AlertState.UNACKNOWLEDGED):
        return None
    return replace(alert, state=AlertState.UNACKNOWLEDGED, next_action_at=None)


def free_short_code(wanted: str, taken: Callable[[str], bool]) -> str:
    """`wanted`, or another code no open alert holds (longer codes once the short ones get crowded)."""
    code = wanted
    for attempt in range(60):
        if not taken(code):
            return code
        code = short_code.new_code(min(short_code.MAX_LENGTH, short_code.MIN_LENGTH + attempt // 20))
    raise RuntimeError("no free short code found")
