"""The contract every Store implementation keeps, blind to which one it is. Parametrised: SQLite and PostgreSQL (a
private server the tests start, a fresh database per test) run the same. What only SQLite has is in
test_store_sqlite.py, what only PostgreSQL has in test_store_postgres.py."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from relay.domain import short_code, tracks
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
from relay.domain.tracks import Sighting, TrackState
from relay.store.base import Store, StoreUnavailable
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.support.wait import eventually

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

# the private PostgreSQL server and a fresh database per test (imported by pytest alone: see the plugin's notes)
pytest_plugins = ("tests.support.postgres",)

Opener = Callable[[], Awaitable[Store]]


async def _sqlite(tmp_path: Path) -> SQLiteStore:
    return await SQLiteStore.open(tmp_path / "store" / "relay.db")


@dataclass
class Backend:
    """What a test may do to the store's backing service. `server`: None for an embedded store (SQLite has no
    server to lose; its own failures are in test_store_sqlite.py and tests/faults/)."""

    name: str
    server: PostgresServer | None = None


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("postgres_server"))
    return Backend(request.param)


@pytest.fixture
async def store(backend: Backend, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if backend.name == "postgres":
        s = await PostgresStore.open(request.getfixturevalue("postgres_url"))
    else:
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


async def test_a_sent_message_is_found_again_by_any_ref_its_receipt_may_use(store: Store) -> None:
    """An SMSC's message id is kept with the delivery that carried it, so a receipt read after a restart finds it;
    a bundle is every delivery it carried; an id reused later names the newer send; nothing of it outlives the
    retention."""
    a = (await store.accept(new_alert("r-1"))).alert
    b = (await store.accept(new_alert("r-2"))).alert
    t = time.time()
    bundle = (a.deliveries[0].delivery_id, b.deliveries[0].delivery_id)
    for delivery_id in bundle:
        await store.finish_attempt(delivery_id, AttemptOutcome.SENT, t, refs=("t:1a2b", "n:6699"), channel="sms")
    assert await store.deliveries_by_ref("sms", ["t:6699", "n:26265", "n:6699"]) == sorted(bundle)
    assert await store.deliveries_by_ref("sms", ["t:1a2b"]) == sorted(bundle)
    assert await store.deliveries_by_ref("sms", ["t:ffff", "n:65535"]) == []
    assert await store.deliveries_by_ref("email", ["t:1a2b"]) == []  # another channel's ids are another space
    # a failed send names nothing a receipt could come for
    await store.finish_attempt(a.deliveries[1].delivery_id, AttemptOutcome.RETRY, t, error="x", refs=("t:zz",),
                               channel="sms")
    assert await store.deliveries_by_ref("sms", ["t:zz"]) == []
    # the SMSC's counter wrapped: the same id on a later send is that send's
    await store.finish_attempt(a.deliveries[1].delivery_id, AttemptOutcome.SENT, t + 60, refs=("t:1a2b",),
                               channel="sms")
    assert await store.deliveries_by_ref("sms", ["t:1a2b"]) == [a.deliveries[1].delivery_id]
    assert await store.deliveries_by_ref("sms", ["n:6699"]) == sorted(bundle)
    while await store.prune(t + 3600, batch=1000):
        pass
    assert await store.deliveries_by_ref("sms", ["t:1a2b", "n:6699"]) == []


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


async def test_a_console_showing_an_alert_counts_as_delivered_once_per_desk(store: Store) -> None:
    a = (await store.accept(new_alert())).alert
    shown = await store.mark_shown(a.alert_id, "d-1", time.time())
    assert shown is not None and shown.newly_delivered and shown.newly_shown
    assert shown.alert.state is AlertState.DELIVERED
    again = await store.mark_shown(a.alert_id, "d-1", time.time())
    assert again is not None and not again.newly_shown and not again.newly_delivered
    other_desk = await store.mark_shown(a.alert_id, "d-2", time.time())
    assert other_desk is not None and other_desk.newly_shown and not other_desk.newly_delivered
    assert await store.mark_shown("no-such-alert", "d-1", time.time()) is None
    got = await store.get_alert(a.alert_id)
    assert got is not None
    web = {d.desk_id: d for d in got.deliveries if d.channel == "web"}
    assert sorted(web) == ["d-1", "d-2"]
    assert all(d.state is DeliveryState.DELIVERED and d.delivered_at is not None for d in web.values())
    assert [e.kind for e in await store.events(a.alert_id)] == ["accepted", "delivered"]


# ---- tracks ---------------------------------------------------------------------------------------------


def in_track(new: NewAlert, track: TrackState | None) -> tuple[NewAlert, TrackState]:
    """`new` as the latest report of `track` (None: the first of a new track, named after its alert)."""
    sighting = Sighting.of(new.alert.report)
    estimate = tracks.start(sighting, new.alert.alert_id) if track is None else tracks.join(track, sighting)
    return replace(new, alert=replace(new.alert, track_id=estimate.track_id), track=estimate), estimate


async def test_a_track_reads_back_with_its_alerts_and_its_estimate(store: Store) -> None:
    now = time.time()
    first, est = in_track(new_alert("r-1", at=now - 30), None)
    second, est = in_track(new_alert("r-2", at=now - 20, desks=("d-1",)), est)
    for new in (first, second):
        await store.accept(new)
    lone = (await store.accept(new_alert("r-3", operator="op-2", at=now - 10, desks=("d-3",)))).alert
    t = est.track_id

    track = await store.get_track(t)
    assert track is not None
    assert [a.alert_id for a in track.alerts] == [first.alert.alert_id, second.alert.alert_id]  # oldest first
    assert track.estimate == est and track.estimate.reports == 2
    assert track.opened_at == pytest.approx(now - 30) and track.updated_at == pytest.approx(now - 20)
    assert track.alerts[1].desks == ("d-1",) and track.alerts[0].state is AlertState.PENDING
    assert track.merged_into is None and track.acks == ()
    assert await store.get_track("no-such-track") is None

    assert [x.track_id for x in await store.list_tracks(since=None, limit=10)] == [lone.alert_id, t]  # latest first
    assert [x.track_id for x in await store.list_tracks(since=now - 15, limit=10)] == [lone.alert_id]
    assert [x.track_id for x in await store.list_tracks(since=None, limit=1)] == [lone.alert_id]
    assert [x.track_id for x in await store.list_tracks(since=None, limit=10, desk_id="d-2")] == [t]
    assert [x.track_id for x in await store.list_tracks(since=None, limit=10, operator_id="op-2")] == [lone.alert_id]
    recent = await store.recent_tracks(now - 25)  # by the latest report's observed_at
    assert sorted(x.track_id for x in recent) == sorted([t, lone.alert_id])
    assert [x.track_id for x in await store.recent_tracks(now - 15)] == [lone.alert_id]

    in_it = await store.open_in_track(t)
    assert in_it.opened_at == pytest.approx(now - 30)
    assert [(o.alert_id, o.short_code) for o in in_it.open] == [
        (first.alert.alert_id, first.alert.short_code), (second.alert.alert_id, second.alert.short_code)]
    nothing = await store.open_in_track("no-such-track")
    assert nothing.opened_at == math.inf and nothing.open == ()


async def test_a_desk_s_ack_of_a_track_covers_what_went_to_that_desk_and_later_reports(store: Store) -> None:
    now = time.time()
    first, est = in_track(new_alert("r-1", at=now - 30, desks=("d-1", "d-2")), None)
    second, est = in_track(new_alert("r-2", at=now - 20, desks=("d-2",)), est)
    for new in (first, second):
        await store.accept(new)
    t = est.track_id
    ack = AckRecord("", "d-1", "web", "Иванов", now - 5, 0.0, "10.0.0.7", via_track=True)
    results = await store.ack_track(t, ack)
    assert [(r.alert.alert_id, r.first, r.was_open, r.cancelled) for r in results] == [
        (first.alert.alert_id, True, True, 2)]  # the one routed to d-1; its queued sends stopped
    assert results[0].alert.ack is not None and results[0].alert.ack.via_track
    assert results[0].alert.ack.latency_s == pytest.approx(25)
    second_now = await store.get_alert(second.alert.alert_id)
    assert second_now is not None and second_now.state is AlertState.PENDING  # not d-1's
    track = await store.get_track(t)
    assert track is not None and [(a.desk_id, a.by, a.via_track) for a in track.acks] == [("d-1", "Иванов", True)]
    assert track.updated_at == pytest.approx(now - 5)
    again = await store.ack_track(t, replace(ack, by="Петров", at=now - 4))
    assert again == []
    track = await store.get_track(t)
    assert track is not None and [a.by for a in track.acks] == ["Иванов"]  # each desk's first ack is kept

    # an ack of one alert acknowledges the rest of its track for that desk, in the same commit
    d2 = await store.record_ack(AckRecord(second.alert.alert_id, "d-2", "mqtt", "Петров", now - 3, 17.0))
    assert d2 is not None and d2.first and d2.alert.state is AlertState.ACKNOWLEDGED
    assert d2.track == ()  # the first alert was acknowledged already (by d-1)
    track = await store.get_track(t)
    assert track is not None and sorted(a.desk_id for a in track.acks) == ["d-1", "d-2"]
    assert await store.open_in_track(t) == replace(await store.open_in_track(t), open=())

    # a later report every desk of which has acknowledged the track arrives acknowledged via it
    third, est = in_track(new_alert("r-4", at=now - 2, desks=("d-1",)), est)
    covered = replace(third.alert, state=AlertState.ACKNOWLEDGED, next_action_at=None,
                      ack=replace(track.acks[0], alert_id=third.alert.alert_id, at=third.alert.created_at))
    await store.accept(replace(third, alert=covered))
    got = await store.get_alert(third.alert.alert_id)
    assert got is not None and got.state is AlertState.ACKNOWLEDGED and got.ack is not None and got.ack.via_track
    assert [e.kind for e in await store.events(got.alert_id)] == ["accepted", "acknowledged"]
    assert await store.count_open() == 0


async def test_an_ack_of_one_alert_closes_the_rest_of_its_track_for_that_desk(store: Store) -> None:
    now = time.time()
    first, est = in_track(new_alert("r-1", at=now - 30, desks=("d-1",)), None)
    second, est = in_track(new_alert("r-2", at=now - 20, desks=("d-1", "d-2")), est)
    for new in (first, second):
        await store.accept(new)
    result = await store.record_ack(AckRecord(first.alert.alert_id, "d-1", "sms", "Иванов", now, 30.0, "+7900"))
    assert result is not None and result.first and result.was_open
    assert [(r.alert.alert_id, r.alert.ack.via_track if r.alert.ack else None) for r in result.track] == [
        (second.alert.alert_id, True)]
    got = await store.get_alert(second.alert.alert_id)
    assert got is not None and got.state is AlertState.ACKNOWLEDGED and got.ack is not None
    assert (got.ack.desk_id, got.ack.channel, got.ack.via_track) == ("d-1", "sms", True)
    assert got.ack.latency_s == pytest.approx(20)
    assert await store.count_open() == 0


async def test_a_merge_moves_every_alert_and_a_split_moves_one(store: Store) -> None:
    now = time.time()
    a1, est_a = in_track(new_alert("a-1", at=now - 40), None)
    a2, est_a = in_track(new_alert("a-2", at=now - 30), est_a)
    b1, est_b = in_track(new_alert("b-1", at=now - 20), None)
    for new in (a1, a2, b1):
        await store.accept(new)
    merged = tracks.rebuild(est_a.track_id, [Sighting.of(n.alert.report) for n in (a1, a2, b1)])
    await store.merge_tracks(est_b.track_id, est_a.track_id, merged, "d-1", "Петров", now - 10)
    gone = await store.get_track(est_b.track_id)
    assert gone is not None and gone.merged_into == est_a.track_id and gone.alerts == ()
    into = await store.get_track(est_a.track_id)
    assert into is not None and [a.alert_id for a in into.alerts] == [a1.alert.alert_id, a2.alert.alert_id,
                                                                      b1.alert.alert_id]
    assert into.estimate == merged
    assert [t.track_id for t in await store.list_tracks(since=None, limit=10)] == [est_a.track_id]
    assert [(t.track_id, t.merged_into) for t in await store.merged_tracks(now - 10)] == [
        (est_b.track_id, est_a.track_id)]  # by when it was merged, not when it was last seen
    assert await store.merged_tracks(now - 9) == []
    moved = await store.get_alert(b1.alert.alert_id)
    assert moved is not None and moved.track_id == est_a.track_id
    history = await store.events(b1.alert.alert_id)
    assert history[-1].kind == "track_merged" and history[-1].detail == {
        "from": est_b.track_id, "into": est_a.track_id, "desk_id": "d-1", "by": "Петров"}

    old = tracks.rebuild(est_a.track_id, [Sighting.of(n.alert.report) for n in (a1, b1)])
    new = tracks.start(Sighting.of(a2.alert.report), "T-split")
    await store.split_alert(a2.alert.alert_id, old, new, "d-2", "Сидоров", now - 5)
    split = await store.get_track("T-split")
    assert split is not None and [a.alert_id for a in split.alerts] == [a2.alert.alert_id]
    assert split.estimate == new
    left = await store.get_track(est_a.track_id)
    assert left is not None and [a.alert_id for a in left.alerts] == [a1.alert.alert_id, b1.alert.alert_id]
    assert left.estimate == old
    assert (await store.events(a2.alert.alert_id))[-1].detail["into"] == "T-split"
    audit = [e.kind for e in await store.audit_log(10)]
    assert audit[0] == "track_split" and audit.count("track_merged") == 1


async def test_giving_up_one_alert_of_a_track_makes_the_others_due_at_once(store: Store) -> None:
    now = time.time()
    first, est = in_track(new_alert("r-1", at=now - 30), None)
    second, est = in_track(new_alert("r-2", at=now - 20), est)
    for new in (first, second):
        await store.accept(new)
    await store.save_schedule(second.alert.alert_id, Schedule(now + 500, 0, None))
    assert await store.give_up(first.alert.alert_id, now) is not None
    due = await store.due_alerts(now, limit=10)
    assert [a.alert_id for a in due] == [second.alert.alert_id]


# ---- when the store cannot be reached -------------------------------------------------------------------


async def test_while_the_server_is_down_every_call_is_store_unavailable_and_then_it_recovers(
    store: Store, backend: Backend
) -> None:
    if backend.server is None:
        pytest.skip(f"{backend.name} is embedded: no server to stop")
    a = (await store.accept(new_alert("before"))).alert
    backend.server.stop()
    try:
        with pytest.raises(StoreUnavailable):
            await store.accept(new_alert("during"))
        with pytest.raises(StoreUnavailable):
            await store.record_ack(AckRecord(a.alert_id, "d-1", "http", "x", time.time(), 1.0))
        with pytest.raises(StoreUnavailable):
            await store.get_alert(a.alert_id)
        with pytest.raises(StoreUnavailable):
            await store.check_writable()
        with pytest.raises(StoreUnavailable):
            await store.list_alerts(states=None, limit=10)
    finally:
        backend.server.start()

    async def writable() -> bool:
        try:
            await store.check_writable()
        except StoreUnavailable:
            return False
        return True

    await eventually(writable, timeout=15, interval=0.1, what="the store writable again")
    assert (await store.accept(new_alert("after"))).outcome is AcceptOutcome.CREATED
    assert sorted(x.report_id for x in await store.list_alerts(states=None, limit=10)) == ["after", "before"]
    got = await store.get_alert(a.alert_id)
    assert got is not None and got.state is AlertState.PENDING  # the ack during the outage was not kept


async def test_a_server_killed_mid_use_loses_nothing_committed(store: Store, backend: Backend) -> None:
    if backend.server is None:
        pytest.skip(f"{backend.name} is embedded: no server to kill")
    accepted = [(await store.accept(new_alert(f"k-{n}"))).alert for n in range(20)]
    backend.server.kill()
    try:
        with pytest.raises(StoreUnavailable):
            await store.accept(new_alert("while-dead"))
    finally:
        backend.server.start()
    got = await eventually(lambda: _count_open_or_none(store), timeout=15, interval=0.1, what="a read again")
    assert got == len(accepted)
    assert (await store.accept(new_alert("k-0"))).outcome is AcceptOutcome.REPLAY


async def _count_open_or_none(store: Store) -> int | None:
    try:
        return await store.count_open()
    except StoreUnavailable:
        return None
