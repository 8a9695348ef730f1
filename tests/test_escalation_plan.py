"""The escalation rule with plain values: no I/O, no clock, every edge of the contract's rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.domain.escalation import BackupReason, GiveUp, Policy, SendBackups, SendPrimary, plan
from relay.domain.records import AckRecord, AlertRecord, DeliveryRecord
from relay.domain.states import AlertState, DeliveryState

T0 = 1_000_000.0
POLICY = Policy(ack_timeout_s=10, repeat_s=60, give_up_s=900, retry_s=5, backups=frozenset({"sms", "email"}))
NO_BACKUPS = replace(POLICY, backups=frozenset())


def alert(*deliveries: DeliveryRecord, priority: str = "immediate", rounds: int = 0, last: float | None = None,
          state: AlertState = AlertState.PENDING) -> AlertRecord:
    return AlertRecord(
        alert_id="A", report_id="r", operator_id="op", short_code="K7QX", state=state, priority=priority,
        stale=False, created_at=T0, report={}, desks=("d",), deliveries=deliveries, backup_rounds=rounds,
        last_backup_at=last,
    )


def mqtt(state: DeliveryState = DeliveryState.QUEUED, attempts: int = 0, attempted_at: float | None = None,
         delivery_id: str = "A.d.mqtt") -> DeliveryRecord:
    return DeliveryRecord(delivery_id, "A", "d", "mqtt", "uav/alerts/d", state, attempts, attempted_at=attempted_at)


def test_at_t0_the_primary_goes_out_and_backups_wait_for_the_ack_timeout() -> None:
    p = plan(alert(mqtt()), POLICY, T0, primary_up=True)
    assert p.actions == (SendPrimary(("A.d.mqtt",)),)
    assert p.schedule.next_action_at == T0 + 10
    assert p.schedule.backup_rounds == 0


def test_no_ack_within_the_timeout_fires_the_backups_not_before() -> None:
    sent = alert(mqtt(DeliveryState.SENT, 1, T0))
    assert plan(sent, POLICY, T0 + 9.999, primary_up=True).actions == ()
    p = plan(sent, POLICY, T0 + 10, primary_up=True)
    assert p.actions == (SendBackups(BackupReason.ACK_TIMEOUT),)
    assert p.schedule == replace(p.schedule, next_action_at=T0 + 70, backup_rounds=1, last_backup_at=T0 + 10)


def test_backups_repeat_every_repeat_s_after_the_first_backup_send() -> None:
    a = alert(mqtt(DeliveryState.DELIVERED, 1, T0), rounds=1, last=T0 + 10)
    assert plan(a, POLICY, T0 + 69, primary_up=True).actions == ()
    p = plan(a, POLICY, T0 + 70, primary_up=True)
    assert p.actions == (SendBackups(BackupReason.REPEAT),)
    assert (p.schedule.backup_rounds, p.schedule.next_action_at) == (2, T0 + 130)


def test_primary_down_at_t0_fails_over_at_once() -> None:
    p = plan(alert(mqtt()), POLICY, T0, primary_up=False)
    assert p.actions == (SendBackups(BackupReason.FAILOVER),)  # and the MQTT delivery waits for the broker
    assert p.schedule.backup_rounds == 1


def test_a_failed_publish_fails_over_at_once_and_is_retried_later() -> None:
    failed = alert(mqtt(DeliveryState.QUEUED, attempts=1, attempted_at=T0 + 1))
    p = plan(failed, POLICY, T0 + 1, primary_up=True)
    assert p.actions == (SendBackups(BackupReason.FAILOVER),)
    assert p.schedule.next_action_at == T0 + 6  # the publish is tried again after retry_s
    retry = plan(replace(failed, backup_rounds=1, last_backup_at=T0 + 1), POLICY, T0 + 6, primary_up=True)
    assert retry.actions == (SendPrimary(("A.d.mqtt",)),)


def test_a_publish_failed_for_good_is_also_a_failover() -> None:
    p = plan(alert(mqtt(DeliveryState.FAILED, 1, T0)), POLICY, T0 + 0.1, primary_up=True)
    assert p.actions == (SendBackups(BackupReason.FAILOVER),)


def test_flash_fires_every_channel_at_t0() -> None:
    p = plan(alert(mqtt(), priority="flash"), POLICY, T0, primary_up=True)
    assert p.actions == (SendPrimary(("A.d.mqtt",)), SendBackups(BackupReason.FLASH))
    assert p.schedule.next_action_at == T0 + 60


def test_give_up_after_give_up_s_and_nothing_more() -> None:
    a = alert(mqtt(DeliveryState.SENT, 1, T0), rounds=14, last=T0 + 850)
    assert plan(a, POLICY, T0 + 899.9, primary_up=True).schedule.next_action_at == T0 + 900
    p = plan(a, POLICY, T0 + 900, primary_up=True)
    assert p.actions == (GiveUp(),)
    assert p.schedule.next_action_at is None


def test_the_next_due_time_never_passes_give_up() -> None:
    a = alert(mqtt(DeliveryState.SENT, 1, T0), rounds=15, last=T0 + 880)
    assert plan(a, POLICY, T0 + 881, primary_up=True).schedule.next_action_at == T0 + 900


@pytest.mark.parametrize("state", [AlertState.ACKNOWLEDGED, AlertState.UNACKNOWLEDGED])
def test_a_closed_alert_plans_nothing(state: AlertState) -> None:
    a = alert(mqtt(), state=state, rounds=1, last=T0)
    p = plan(a, POLICY, T0 + 5000, primary_up=True)
    assert p.actions == ()
    assert p.schedule.next_action_at is None


def test_an_ack_racing_a_repeat_wins() -> None:
    # the repeat was due, but the ack was recorded first: the stored alert is closed, nothing goes out
    acked = replace(
        alert(mqtt(DeliveryState.SENT, 1, T0), rounds=1, last=T0 + 10, state=AlertState.ACKNOWLEDGED),
        ack=AckRecord("A", "d", "sms", "x", T0 + 69.9, 69.9),
    )
    assert plan(acked, POLICY, T0 + 70, primary_up=True).actions == ()


def test_a_restart_resumes_from_the_stored_times_not_from_zero() -> None:
    # the relay was down from t=30 to t=200: the repeat due at t=70 fires at once, then every 60 s from now
    a = alert(mqtt(DeliveryState.SENT, 1, T0), rounds=1, last=T0 + 10)
    p = plan(a, POLICY, T0 + 200, primary_up=True)
    assert p.actions == (SendBackups(BackupReason.REPEAT),)
    assert p.schedule.next_action_at == T0 + 260


def test_without_backup_channels_only_the_primary_and_give_up_remain() -> None:
    p = plan(alert(mqtt()), NO_BACKUPS, T0, primary_up=False)
    assert p.actions == ()
    assert p.schedule.next_action_at == T0 + 900
    assert plan(alert(mqtt(DeliveryState.SENT, 1, T0)), NO_BACKUPS, T0 + 100, primary_up=True).actions == ()


def test_a_primary_back_up_gets_every_unsent_delivery() -> None:
    a = alert(mqtt(delivery_id="A.d.mqtt"), mqtt(delivery_id="A.e.mqtt"), rounds=1, last=T0)
    p = plan(a, POLICY, T0 + 20, primary_up=True)
    assert p.actions == (SendPrimary(("A.d.mqtt", "A.e.mqtt")),)


# ---- calls (CONTRACT.md, "Voice calls") ------------------------------------------------------------------------

VOICE_POLICY = replace(POLICY, backups=frozenset({"sms", "email", "voice"}), voice_after_s=60)


def test_calls_join_at_voice_after_s_between_rounds_and_then_with_each_round() -> None:
    from relay.domain.escalation import SendCalls, calls_at

    sent = alert(mqtt(DeliveryState.SENT, 1, T0), rounds=1, last=T0 + 10)
    before = plan(sent, VOICE_POLICY, T0 + 30, primary_up=True)
    assert not any(isinstance(a, SendCalls) for a in before.actions)
    assert before.schedule.next_action_at == T0 + 60  # woken for the first calls, before the next round at +70
    at = plan(sent, VOICE_POLICY, T0 + 60, primary_up=True)
    assert SendCalls() in at.actions and at.schedule.next_action_at == T0 + 60  # and looked at again at once
    called = replace(sent, deliveries=(*sent.deliveries, DeliveryRecord(
        "A.d.voice.0", "A", "d", "voice", "+79005550001", DeliveryState.SENT, 1, attempted_at=T0 + 60)))
    after = plan(called, VOICE_POLICY, T0 + 61, primary_up=True)
    assert not any(isinstance(a, SendCalls) for a in after.actions)
    assert after.schedule.next_action_at == T0 + 70  # the next round, which calls again
    assert calls_at(sent, VOICE_POLICY, None) == T0 + 60 and calls_at(sent, POLICY, None) is None
    assert not any(isinstance(a, SendCalls) for a in plan(sent, POLICY, T0 + 65, primary_up=True).actions)


def test_a_call_that_was_not_answered_is_not_retried_alone() -> None:
    busy = DeliveryRecord("A.d.voice.0", "A", "d", "voice", "+79005550001", DeliveryState.QUEUED, 1,
                          attempted_at=T0 + 60)
    p = plan(alert(mqtt(DeliveryState.SENT, 1, T0), busy, rounds=1, last=T0 + 10), VOICE_POLICY, T0 + 66,
             primary_up=True)
    assert p.actions == ()  # the desk's next number was called by the dispatcher; the next round calls again
