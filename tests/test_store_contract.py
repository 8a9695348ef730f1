"""The contract every Store implementation keeps, blind to which one it is. Parametrised: a PostgreSQL store joins
the list and runs the same. What only SQLite has is in test_store_sqlite.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from relay.domain import short_code
from relay.domain.clock import to_datetime
from relay.domain.model import validate_report
from relay.domain.records import (
    AcceptOutcome,
    AckRecord,
    AlertRecord,
    AttemptOutcome,
    AuthFailureTally,
    DeliveryRecord,
    EventRecord,
    NewAlert,
    Schedule,
)
from relay.domain.states import AlertState, DeliveryState
from relay.store.base import Store
from relay.store.sqlite import SQLiteStore

Opener = Callable[[], Awaitable[Store]]


async def _sqlite(tmp_path: Path) -> SQLiteStore:
    return await SQLiteStore.open(tmp_path / "store" / "relay.db")


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await _sqlite(tmp_path)
    writer = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        writer.cancel()
        await asyncio.wait([writer])


def new_alert(report_id: str = "r-1", *, operator: str = "op-1", code: str | None = None, at: float | None = None,
              desks: tuple[str, ...] = ("d-1", "d-2"), digest: str = "sha-a") -> NewAlert:
    now = time.time() if at is None else at
    alert_id = f"A-{operator}-{report_id}"
    deliveries = tuple(
        DeliveryRecord(f"{alert_id}.{d}.mqtt", alert_id, d, "mqtt", f"uav/alerts/{d}") for d in desks
    )
    alert = AlertRecord(
        alert_id=alert_id, report_id=report_id, operator_id=operator, short_code=code or short_code.new_code(),
        state=AlertState.PENDING, priority="immediate", stale=False, created_at=now,
        report=validate_report(json.dumps({
            "report_id": report_id, "observed_at": to_datetime(now).isoformat(), "location": {"lat": 52.6, "lon": 39.6},
            "caller": {"phone": "+79001234567"},
        }), to_datetime(now)),
        desks=desks, deliveries=deliveries,
        next_action_at=now + 900,
    )
    return NewAlert(alert, digest, "http")


async def test_an_accepted_alert_reads_back_whole(store: Store) -> None:
    new = new_alert()
    accepted = await store.accept(new)
    assert accepted.outcome is AcceptOutcome.CREATED
    got = await store.get_alert(new.alert.alert_id)
    assert got is not None
    assert got.report == new.alert.report
    assert got.desks == ("d-1", "d-2")
    assert [d.state for d in got.deliveries] == [DeliveryState.QUEUED, DeliveryState.QUEUED]
    assert got.short_code == accepted.alert.short_code
    assert got.next_action_at == pytest.approx(new.alert.next_action_at)
    assert [e.kind for e in await store.events(got.alert_id)] == ["accepted"]


async def test_replay_and_conflict_are_told_apart_by_content(store: Store) -> None:
    first = await store.accept(new_alert("r-9"))
    replay = await store.accept(replace(new_alert("r-9"), alert=replace(new_alert("r-9").alert, alert_id="other")))
    assert replay.outcome is AcceptOutcome.REPLAY
    assert replay.alert.alert_id == first.alert.alert_id
    conflict = await store.accept(new_alert("r-9", digest="sha-b"))
    assert conflict.outcome is AcceptOutcome.CONFLICT
    other_operator = await store.accept(new_alert("r-9", operator="op-2"))
    assert other_operator.outcome is AcceptOutcome.CREATED


async def test_open_alerts_never_share_a_short_code(store: Store) -> None:
    a = await store.accept(new_alert("r-1", code="K7QX"))
    b = await store.accept(new_alert("r-2", code="K7QX"))
    assert a.alert.short_code == "K7QX"
    assert b.alert.short_code != "K7QX"
    await store.record_ack(AckRecord(a.alert.alert_id, "d-1", "http", "x", time.time(), 1.0))
    c = await store.accept(new_alert("r-3", code="K7QX"))  # a closed alert frees its code
    assert c.alert.short_code == "K7QX"


async def test_first_ack_closes_the_alert_and_cancels_what_is_still_queued(store: Store) -> None:
    a = (await store.accept(new_alert())).alert
    d1, d2 = a.deliveries
    await store.finish_attempt(d1.delivery_id, AttemptOutcome.SENT, time.time())
    first = await store.record_ack(AckRecord(a.alert_id, "d-1", "mqtt", "Иванов", time.time(), 2.5))
    assert first is not None and first.first and first.was_open
    assert first.cancelled == 1
    second = await store.record_ack(AckRecord(a.alert_id, "d-2", "http", "Петров", time.time(), 3.0))
    assert second is not None and not second.first
    got = await store.get_alert(a.alert_id)
    assert got is not None
    assert got.state is AlertState.ACKNOWLEDGED
    assert got.ack is not None and got.ack.by == "Иванов"
    assert {d.delivery_id: d.state for d in got.deliveries} == {
        d1.delivery_id: DeliveryState.SENT, d2.delivery_id: DeliveryState.CANCELLED,
    }
    assert got.next_action_at is None
    assert [e.kind for e in await store.events(a.alert_id)] == ["accepted", "acknowledged", "duplicate_ack"]
    # a send that was under way when the ack came is recorded, but nothing queued comes back to life
    assert await store.start_attempt(d2.delivery_id, time.time()) is None


async def test_a_receipt_walks_the_delivery_forward_and_marks_the_alert_delivered(store: Store) -> None:
    a = (await store.accept(new_alert())).alert
    receipt = await store.mark_delivered(a.alert_id, "d-1", "mqtt", time.time())
    assert receipt is not None and receipt.newly_delivered
    again = await store.mark_delivered(a.alert_id, "d-1", "mqtt", time.time())
    assert again is not None and not again.newly_delivered
    assert await store.mark_delivered(a.alert_id, "d-9", "mqtt", time.time()) is None
    got = await store.get_alert(a.alert_id)
    assert got is not None and got.state is AlertState.DELIVERED
    delivered = next(d for d in got.deliveries if d.desk_id == "d-1")
    assert delivered.state is DeliveryState.DELIVERED
    assert delivered.attempts == 1 and delivered.delivered_at is not None


async def test_a_failed_send_goes_back_to_the_queue_and_counts_the_attempt(store: Store) -> None:
    a = (await store.accept(new_alert())).alert
    d = a.deliveries[0]
    t = time.time()
    retry = await store.finish_attempt(d.delivery_id, AttemptOutcome.RETRY, t, error="unreachable: broker down")
    assert retry is not None
    assert (retry.state, retry.attempts, retry.error, retry.attempted_at) == (
        DeliveryState.QUEUED, 1, "unreachable: broker down", t,
    )
    queued = await store.alerts_with_queued("mqtt", limit=10)
    assert [q.alert_id for q in queued] == [a.alert_id]
    sent = await store.finish_attempt(d.delivery_id, AttemptOutcome.SENT, time.time())
    assert sent is not None and sent.attempts == 2 and sent.error is None


async def test_due_times_are_stored_and_found(store: Store) -> None:
    now = time.time()
    early = (await store.accept(new_alert("early", at=now - 100))).alert
    late = (await store.accept(new_alert("late", at=now))).alert
    await store.save_schedule(early.alert_id, Schedule(now - 1, 1, now - 50))
    await store.save_schedule(late.alert_id, Schedule(now + 60, 0, None))
    assert await store.next_due_at() == pytest.approx(now - 1)
    due = await store.due_alerts(now, limit=10)
    assert [a.alert_id for a in due] == [early.alert_id]
    assert (due[0].backup_rounds, due[0].last_backup_at) == (1, pytest.approx(now - 50))


async def test_giving_up_closes_an_open_alert_once(store: Store) -> None:
    a = (await store.accept(new_alert())).alert
    closed = await store.give_up(a.alert_id, time.time())
    assert closed is not None and closed.state is AlertState.UNACKNOWLEDGED
    assert await store.give_up(a.alert_id, time.time()) is None
    late = await store.record_ack(AckRecord(a.alert_id, "d-1", "mqtt", "поздно", time.time(), 1000))
    assert late is not None and late.first and not late.was_open
    assert await store.count_open() == 0


async def test_listing_is_newest_first_and_scoped(store: Store) -> None:
    for n in range(3):
        await store.accept(new_alert(f"r-{n}", desks=("d-1",) if n != 1 else ("d-2",)))
    everything = await store.list_alerts(states=None, limit=10)
    assert [a.report_id for a in everything] == ["r-2", "r-1", "r-0"]
    for_d1 = await store.list_alerts(states=None, limit=10, desk_id="d-1")
    assert [a.report_id for a in for_d1] == ["r-2", "r-0"]
    assert await store.list_alerts(states=[AlertState.ACKNOWLEDGED], limit=10) == []
    assert len(await store.list_alerts(states=None, limit=10, operator_id="op-2")) == 0


async def test_an_inbound_message_id_is_first_once_per_channel(store: Store) -> None:
    now = time.time()
    assert await store.first_inbound("sms", "SM1", now)
    assert not await store.first_inbound("sms", "SM1", now + 30)  # Twilio delivering it again
    assert await store.first_inbound("sms", "SM2", now)
    assert await store.first_inbound("smpp", "SM1", now)  # ids of another channel are another space


async def test_failed_authentication_is_one_counted_row_per_source_and_hour_on_the_audit(store: Store) -> None:
    hour = 1_800_000_000 // 3600 * 3600.0
    tally = AuthFailureTally("link_refused", "/ack/{token}", "10.0.0.1", 40, hour + 10, hour + 20,
                             "link signature does not match (forged or altered)")
    await store.add_auth_failures([tally])
    await store.add_auth_failures([replace(tally, count=60, first_at=hour + 30, last_at=hour + 40, reason="x"),
                                   replace(tally, source="10.0.0.2", count=1, first_at=hour + 5, last_at=hour + 5)])
    await store.add_auth_failures([replace(tally, count=7, first_at=hour + 3600, last_at=hour + 3601)])
    audit = [e for e in await store.audit_log(100) if e.kind == "link_refused"]
    assert [(e.detail["from"], e.detail["count"]) for e in audit] == [
        ("10.0.0.1", 7), ("10.0.0.1", 100), ("10.0.0.2", 1),  # newest first; the next hour is a row of its own
    ]
    one = audit[1]
    assert one.at == hour + 40 and one.detail["endpoint"] == "/ack/{token}" and one.detail["reason"] == "x"
    assert one.detail["first_at"].startswith("2027-01-15T08:00:10") and one.detail["last_at"].endswith("40+00:00")


async def test_pruning_deletes_old_history_in_batches_and_keeps_alerts(store: Store) -> None:
    now = time.time()
    old_at, cutoff = now - 100 * 86400, now - 90 * 86400
    a = (await store.accept(new_alert("old", at=old_at))).alert
    await store.record_ack(AckRecord(a.alert_id, "d-1", "http", "Иванов", old_at + 5, 5.0))
    for n in range(25):
        await store.add_event(EventRecord("", old_at + n, "link_refused", {"n": n}))
    await store.add_event(EventRecord("", now, "link_refused", {"n": "recent"}))
    await store.add_auth_failures([AuthFailureTally("auth_refused", "/api/v1/alerts", "10.0.0.9", 3, old_at, old_at,
                                                    "no bearer token")])
    await store.first_inbound("sms", "SM-old", old_at)
    await store.first_inbound("sms", "SM-new", now)

    deleted = []
    while batch := await store.prune(cutoff, 10):
        deleted.append(batch)
    assert sum(deleted) == 26 + 1 + 1 and max(deleted) <= 3 * 10  # ack event + 25 refusals; a tally; an id
    kept = await store.get_alert(a.alert_id)
    assert kept is not None and kept.ack is not None and kept.deliveries  # the alert, its ack and deliveries
    assert [e.kind for e in await store.events(a.alert_id)] == ["accepted"]  # from the alert row itself
    assert [e.detail for e in await store.audit_log(100)] == [{"n": "recent"}]
    assert await store.first_inbound("sms", "SM-old", now)  # forgotten
    assert not await store.first_inbound("sms", "SM-new", now)  # still known
