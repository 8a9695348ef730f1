"""The legal state changes of a delivery and of an alert. Every change is checked here, nowhere else."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"  # written before anything is sent (the outbox row)
    SENDING = "sending"
    SENT = "sent"  # the channel took it (PUBACK, Twilio 201, SMTP 250)
    DELIVERED = "delivered"  # the far end confirmed it (console `received`, carrier receipt)
    FAILED = "failed"
    CANCELLED = "cancelled"  # the alert was acknowledged before this was sent


class AlertState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"


OPEN_ALERT_STATES = frozenset({AlertState.PENDING, AlertState.DELIVERED})

_D = DeliveryState
DELIVERY_TRANSITIONS: Mapping[DeliveryState, frozenset[DeliveryState]] = {
    _D.QUEUED: frozenset({_D.SENDING, _D.CANCELLED}),
    # back to QUEUED: a transient failure, tried again later
    _D.SENDING: frozenset({_D.SENT, _D.QUEUED, _D.FAILED, _D.CANCELLED}),
    # SENT/DELIVERED/FAILED -> SENDING: a repeat of the backups
    _D.SENT: frozenset({_D.DELIVERED, _D.FAILED, _D.SENDING}),
    _D.DELIVERED: frozenset({_D.SENDING}),
    _D.FAILED: frozenset({_D.SENDING, _D.DELIVERED}),
    _D.CANCELLED: frozenset(),
}

_A = AlertState
ALERT_TRANSITIONS: Mapping[AlertState, frozenset[AlertState]] = {
    _A.PENDING: frozenset({_A.DELIVERED, _A.ACKNOWLEDGED, _A.UNACKNOWLEDGED}),
    _A.DELIVERED: frozenset({_A.ACKNOWLEDGED, _A.UNACKNOWLEDGED}),
    # a late ack is still a person who saw it: recorded, and the operator is told
    _A.UNACKNOWLEDGED: frozenset({_A.ACKNOWLEDGED}),
    _A.ACKNOWLEDGED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def delivery_may(old: DeliveryState, new: DeliveryState) -> bool:
    return new in DELIVERY_TRANSITIONS[old]


def check_delivery(old: DeliveryState, new: DeliveryState) -> None:
    if not delivery_may(old, new):
        raise IllegalTransition(f"delivery {old} -> {new}")


def alert_may(old: AlertState, new: AlertState) -> bool:
    return new in ALERT_TRANSITIONS[old]


def check_alert(old: AlertState, new: AlertState) -> None:
    if not alert_may(old, new):
        raise IllegalTransition(f"alert {old} -> {new}")
