"""The escalation rule, as one pure function: what to send now, and when to look at the alert again.

At t=0 the alert goes to every routed desk over the primary channel (MQTT). If the primary is down or the
publish fails, the backups fire at once (failover), which counts as the first backup send; otherwise they fire
after `ack_timeout_s` without an ack. They repeat every `repeat_s` after the first backup send until an ack.
At `give_up_s` after acceptance the alert becomes `unacknowledged` and sending stops. `flash` fires every
channel at t=0. The result's schedule is stored, so a restart resumes from it instead of starting over.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from relay.domain.model import Priority
from relay.domain.records import AlertRecord, DeliveryRecord, Schedule
from relay.domain.states import OPEN_ALERT_STATES, DeliveryState


@dataclass(frozen=True, slots=True)
class Policy:
    ack_timeout_s: float
    repeat_s: float
    give_up_s: float
    retry_s: float  # a primary publish that failed is tried again after this, while the primary is up
    backups: frozenset[str] = frozenset()  # the backup channels configured; none: nothing to escalate to
    primary: str = "mqtt"
    # Calls (channel VOICE, one of `backups`) join this long after the track's first alert; None: no calls.
    voice_after_s: float | None = None


VOICE = "voice"


class BackupReason(enum.StrEnum):
    FLASH = "flash"
    FAILOVER = "failover"
    ACK_TIMEOUT = "ack_timeout"
    REPEAT = "repeat"


@dataclass(frozen=True, slots=True)
class SendPrimary:
    delivery_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendBackups:
    reason: BackupReason


@dataclass(frozen=True, slots=True)
class RetryBackups:
    """Backup deliveries whose last try failed for a passing reason (SMTP down, Twilio 5xx): try again."""

    delivery_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendCalls:
    """The first calls, at voice_after_s: each desk's numbers, one at a time; later rounds call again."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    pass


Action = SendPrimary | SendBackups | SendCalls | RetryBackups | GiveUp


def calls_at(alert: AlertRecord, policy: Policy, track: TrackChain | None) -> float | None:
    """From when this alert's backup rounds call too: voice_after_s after its track's first alert; None: never."""
    if policy.voice_after_s is None:
        return None
    started = alert.created_at if track is None else min(track.opened_at, alert.created_at)
    return started + policy.voice_after_s


@dataclass(frozen=True, slots=True)
class TrackChain:
    """The alert's track, as the rule needs it. A track has one backup chain, carried by its lead (its oldest open
    alert that is not `flash`); each of the lead's rounds lists the track's other open codes. A `flash` alert
    always carries its own."""

    lead: bool
    opened_at: float  # the track's first alert: the ack timeout counts from it


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    schedule: Schedule


def plan(
    alert: AlertRecord, policy: Policy, now: float, *, primary_up: bool, track: TrackChain | None = None
) -> Plan:
    rounds, last_backup = alert.backup_rounds, alert.last_backup_at
    if alert.state not in OPEN_ALERT_STATES:
        return Plan((), Schedule(None, rounds, last_backup))
    give_up_at = alert.created_at + policy.give_up_s
    if now >= give_up_at:
        return Plan((GiveUp(),), Schedule(None, rounds, last_backup))

    actions: list[Action] = []
    due: list[float] = [give_up_at]

    primary = [d for d in alert.deliveries if d.channel == policy.primary]
    unsent = [d for d in primary if d.state is DeliveryState.QUEUED]
    if primary_up:
        ready = [d for d in unsent if _retry_at(d, policy) <= now]
        if ready:
            actions.append(SendPrimary(tuple(d.delivery_id for d in ready)))
        due.extend(_retry_at(d, policy) for d in unsent if d not in ready)

    if policy.backups:
        # a call is not retried on its own: a desk's numbers are called in turn, and each round calls again
        failed_backups = [
            d for d in alert.deliveries
            if d.channel in policy.backups and d.channel != VOICE and d.state is DeliveryState.QUEUED
            and d.attempts > 0
        ]
        retry_now = [d for d in failed_backups if _retry_at(d, policy) <= now]
        due.extend(_retry_at(d, policy) for d in failed_backups if d not in retry_now)
        if rounds == 0:
            # a publish that was tried and did not reach the broker, or failed for good
            primary_failed = any(d.attempts > 0 for d in unsent) or any(
                d.state is DeliveryState.FAILED for d in primary
            )
            if alert.priority == Priority.FLASH:
                backup_at, reason = alert.created_at, BackupReason.FLASH
            elif primary_failed or (unsent and not primary_up):
                backup_at, reason = now, BackupReason.FAILOVER
            else:
                started = alert.created_at if track is None else min(track.opened_at, alert.created_at)
                backup_at, reason = started + policy.ack_timeout_s, BackupReason.ACK_TIMEOUT
        else:
            backup_at, reason = (last_backup or alert.created_at) + policy.repeat_s, BackupReason.REPEAT
        if track is not None and not track.lead and alert.priority != Priority.FLASH:
            # the lead's rounds carry this alert; look again when they would fall due, in case the lead is gone
            due.append(backup_at if backup_at > now else now + policy.repeat_s)
            return Plan(tuple(actions), Schedule(min(due), rounds, last_backup))
        voice_at = calls_at(alert, policy, track)
        if voice_at is not None and not any(d.channel == VOICE for d in alert.deliveries):
            # the first calls at voice_after_s, between rounds if need be; a round due now calls anyway
            if voice_at > now:
                due.append(voice_at)
            elif backup_at > now:
                actions.append(SendCalls())
                due.append(now)  # looked at again at once: a step at acceptance sends the primary alone
        if backup_at <= now:
            actions.append(SendBackups(reason))  # a round re-arms every backup delivery, the failed ones too
            rounds, last_backup = rounds + 1, now
            backup_at = now + policy.repeat_s
        elif retry_now:
            actions.append(RetryBackups(tuple(d.delivery_id for d in retry_now)))
        due.append(backup_at)

    return Plan(tuple(actions), Schedule(min(due), rounds, last_backup))


def _retry_at(d: DeliveryRecord, policy: Policy) -> float:
    if d.attempts == 0 or d.attempted_at is None:
        return -math.inf
    return d.attempted_at + policy.retry_s


def schedule_at_accept(first: Plan, alert: AlertRecord) -> Schedule:
    """The schedule stored with a new alert. A backup round the plan wants at once (flash, the primary down) is
    not done by the intake: the scheduler does it, with its own outbox commit, so the alert is stored due now with
    no round counted yet; a crash in between leaves the round due, not lost."""
    if any(isinstance(a, SendBackups) for a in first.actions):
        return Schedule(alert.created_at, alert.backup_rounds, alert.last_backup_at)
    return first.schedule
