"""The domain's decisions on plain records: no store, no I/O. Every store implementation gets the same answers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.domain import transitions as t
from relay.domain.records import AckRecord, AlertRecord, AttemptOutcome, DeliveryRecord
from relay.domain.states import AlertState, DeliveryState, IllegalTransition

D = DeliveryState
OPEN, CLOSED = AlertState.PENDING, AlertState.ACKNOWLEDGED


def delivery(state: DeliveryState = D.QUEUED, **kw: object) -> DeliveryRecord:
    return DeliveryRecord("A.d1.email.0", "A", "d1", "email", "duty@example.org", state=state, **kw)  # type: ignore[arg-type]


def alert(state: AlertState = OPEN, ack: AckRecord | None = None) -> AlertRecord:
    return AlertRecord("A", "r", "op", "K7QX", state, "immediate", False, 0.0, {}, ("d1",), ack=ack,
                       next_action_at=10.0)


def test_a_send_starts_only_while_the_alert_is_open() -> None:
    started = t.attempt_started(delivery(), OPEN)
    assert started is not None and (started.state, started.attempts) == (D.SENDING, 1)
    cancelled = t.attempt_started(delivery(), CLOSED)
    assert cancelled is not None and cancelled.state is D.CANCELLED
    assert t.attempt_started(delivery(D.SENDING), OPEN) is None  # never twice at once


@pytest.mark.parametrize(("outcome", "alert_state", "expected", "permanent"), [
    (AttemptOutcome.SENT, OPEN, D.SENT, False),
    (AttemptOutcome.FAILED, OPEN, D.FAILED, True),
    (AttemptOutcome.RETRY, OPEN, D.QUEUED, False),
    (AttemptOutcome.RETRY, CLOSED, D.CANCELLED, False),
    (AttemptOutcome.CANCELLED, OPEN, D.CANCELLED, False),
])
def test_the_outcome_of_a_send_decides_the_next_state(
    outcome: AttemptOutcome, alert_state: AlertState, expected: DeliveryState, permanent: bool
) -> None:
    done = t.attempt_finished(delivery(D.SENDING, attempts=1), alert_state, outcome, 5.0, "why")
    assert done is not None and (done.state, done.permanent, done.attempted_at) == (expected, permanent, 5.0)
    assert t.attempt_finished(delivery(D.CANCELLED), OPEN, outcome, 5.0, None) is None


def test_a_repeat_keeps_the_first_sent_at() -> None:
    again = t.attempt_finished(delivery(D.SENDING, attempts=2, sent_at=1.0), OPEN, AttemptOutcome.SENT, 9.0, None)
    assert again is not None and again.sent_at == 1.0


def test_a_receipt_walks_forward_by_the_legal_path_and_only_once() -> None:
    got = t.receipt(delivery(D.QUEUED), 3.0)
    assert got is not None and (got.state, got.attempts, got.sent_at, got.delivered_at) == (D.DELIVERED, 1, 3.0, 3.0)
    assert t.receipt(delivery(D.DELIVERED), 4.0) is None
    assert t.receipt(delivery(D.CANCELLED), 4.0) is None


def test_undelivered_after_delivered_changes_nothing() -> None:
    failed = t.undelivered(delivery(D.SENT), "30003")
    assert failed is not None and failed.state is D.FAILED
    assert t.undelivered(delivery(D.DELIVERED), "late") is None


def test_a_backup_round_rearms_all_but_the_failed_for_good_the_busy_and_the_opted_out() -> None:
    bad = DeliveryRecord("A.d1.sms.0", "A", "d1", "sms", "+70000000001", state=D.FAILED, permanent=True)
    busy = DeliveryRecord("A.d1.sms.1", "A", "d1", "sms", "+70000000002", state=D.SENDING)
    stop = DeliveryRecord("A.d1.sms.2", "A", "d1", "sms", "+70000000003", state=D.SENT)
    new = delivery()
    existing = {d.delivery_id: d for d in (bad, busy, stop)}
    r = t.backup_round(existing, [bad, busy, stop, new], {("sms", "+70000000003")}, 7.0)
    assert r.created == [new]
    assert [d.delivery_id for d in r.to_send] == [new.delivery_id]
    opted = next(d for d in r.changed if d.delivery_id == stop.delivery_id)
    assert opted.state is D.FAILED and opted.permanent and "STOP" in (opted.error or "")


def test_the_first_ack_wins_and_closes() -> None:
    ack = AckRecord("A", "d1", "sms", "+7", 2.0, 2.0)
    closed = t.acknowledged(alert(), ack)
    assert closed is not None and closed.state is AlertState.ACKNOWLEDGED and closed.next_action_at is None
    assert t.acknowledged(closed, AckRecord("A", "d1", "http", "x", 3.0, 3.0)) is None
    late = t.acknowledged(alert(AlertState.UNACKNOWLEDGED), ack)  # a late ack still counts
    assert late is not None and late.state is AlertState.ACKNOWLEDGED


def test_give_up_and_delivered_only_from_the_states_that_allow_them() -> None:
    assert t.given_up(alert(CLOSED)) is None
    gone = t.given_up(alert())
    assert gone is not None and gone.state is AlertState.UNACKNOWLEDGED
    assert t.delivered(alert(AlertState.DELIVERED)) is None
    with pytest.raises(IllegalTransition):
        t.acknowledged(alert(AlertState.ACKNOWLEDGED), AckRecord("A", "d1", "sms", "+7", 2.0, 2.0))


def test_a_taken_short_code_is_redrawn() -> None:
    taken = {"K7QX"}
    code = t.free_short_code("K7QX", taken.__contains__)
    assert code != "K7QX" and len(code) >= 4
    with pytest.raises(RuntimeError):
        t.free_short_code("K7QX", lambda _: True)


def test_a_send_that_raised_failed_but_not_for_good() -> None:
    broke = t.attempt_finished(delivery(D.SENDING, attempts=1), OPEN, AttemptOutcome.BROKE, 5.0, "unexpected: X")
    assert broke is not None and (broke.state, broke.permanent) == (D.FAILED, False)
    assert t.replan_now(broke)
    rearmed = t.backup_round({broke.delivery_id: broke}, [broke], (), 60.0)
    assert [d.delivery_id for d in rearmed.to_send] == [broke.delivery_id]  # the next round tries it afresh


def test_a_send_is_worth_making_while_open_and_after_give_up_only_if_nobody_had_the_alert() -> None:
    unsent = replace(alert(AlertState.UNACKNOWLEDGED), deliveries=(delivery(D.SENDING, attempts=1),))
    sent_once = replace(unsent, deliveries=(delivery(D.SENDING, attempts=2, sent_at=5.0),))
    assert t.worth_sending(alert(OPEN)) and t.worth_sending(alert(AlertState.DELIVERED))
    assert not t.reached_someone(unsent) and t.worth_sending(unsent)
    assert t.reached_someone(sent_once) and not t.worth_sending(sent_once)
    assert t.reached_someone(alert(AlertState.DELIVERED))
    assert not t.worth_sending(alert(CLOSED))
