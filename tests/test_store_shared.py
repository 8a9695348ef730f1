"""Several relays on one PostgreSQL database, at the store: claims, leases, takeovers, the change feed, one ack.

Each "relay" here is a PostgresStore of its own (its own pool, its own relay id) on one fresh database of the
private server; the engine's side of it runs in tests/faults/test_several_relays.py with real relay processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.domain.records import AckRecord, AttemptOutcome, Schedule
from relay.domain.states import DeliveryState
from relay.domain.tracks import TrackParams
from relay.engine.change_feed import ChangeFeed
from relay.engine.events import EventBus
from relay.engine.metrics import Metrics
from relay.engine.track_book import TrackBook
from relay.store.postgres import PostgresStore
from tests.support.fake_clock import FakeClock
from tests.support.wait import eventually
from tests.test_store_contract import new_alert

pytest_plugins = ("tests.support.postgres",)

LEASE_S = 5.0
Relay = Callable[[str], Awaitable[PostgresStore]]


@pytest.fixture
async def relay(postgres_url: str) -> AsyncIterator[Relay]:
    """`await relay("r1")`: a store as relay r1 sees it, running until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    async def open_as(relay_id: str) -> PostgresStore:
        store = await PostgresStore.open(postgres_url, relay_id=relay_id, lease_s=LEASE_S)
        tasks.append(asyncio.create_task(store.run()))
        return store

    yield open_as
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)


async def test_a_due_alert_is_stepped_by_the_relay_that_holds_it_and_by_another_once_its_lease_lapsed(
    relay: Relay,
) -> None:
    now = time.time()
    r1, r2 = await relay("r1"), await relay("r2")
    await r1.renew_lease(now)
    await r2.renew_lease(now)
    a = (await r1.accept(new_alert("due-1", at=now - 30))).alert  # accepted by r1: r1's
    await r1.save_schedule(a.alert_id, Schedule(now - 1, 0, None))

    assert await r2.due_alerts(now, 10) == []
    assert await r2.next_due_at(now) is None  # nothing r2 may step: it does not wake for r1's alert
    assert [x.alert_id for x in await r1.due_alerts(now, 10)] == [a.alert_id]
    assert await r1.next_due_at(now) == pytest.approx(now - 1)

    later = now + LEASE_S + 0.1  # r1 renewed no more: its lease has lapsed
    await r2.renew_lease(later)
    assert await r2.due_alerts(later, 10) == []  # a dead relay's alerts are taken over, counted, before anything
    assert [x.alert_id for x in await r2.take_over(later, 10)] == [a.alert_id]
    assert [x.alert_id for x in await r2.due_alerts(later, 10)] == [a.alert_id]
    assert await r1.due_alerts(later, 10) == []  # r2 holds it now, and r2 is alive


async def test_two_relays_looking_at_once_step_each_due_alert_once(relay: Relay) -> None:
    now = time.time()
    r1, r2, gone = await relay("r1"), await relay("r2"), await relay("gone")
    await r1.renew_lease(now)
    await r2.renew_lease(now)
    ids = set()
    for n in range(40):  # accepted by a relay that never held a lease: anyone's
        a = (await gone.accept(new_alert(f"race-{n}", at=now - 30))).alert
        await gone.save_schedule(a.alert_id, Schedule(now - 1, 0, None))
        ids.add(a.alert_id)

    got1, got2 = await asyncio.gather(r1.due_alerts(now, 100), r2.due_alerts(now, 100))
    ids1, ids2 = {a.alert_id for a in got1}, {a.alert_id for a in got2}
    assert not ids1 & ids2
    assert ids1 | ids2 == ids


async def test_a_dead_relays_sends_and_unsent_alerts_are_taken_over_once(relay: Relay) -> None:
    now = time.time()
    dead, r2, r3 = await relay("dead"), await relay("r2"), await relay("r3")
    await dead.renew_lease(now - LEASE_S - 1)  # it renewed last over lease_s ago
    await r2.renew_lease(now)
    await r3.renew_lease(now)
    unsent = (await dead.accept(new_alert("never-published", at=now - 2))).alert  # stored, then the relay died
    sending = (await dead.accept(new_alert("mid-send", at=now - 2))).alert
    for d in sending.deliveries:
        await dead.start_attempt(d.delivery_id, now - 1)  # marked sending, the send's outcome never recorded
    acked = (await dead.accept(new_alert("closed", at=now - 2))).alert
    await dead.record_ack(AckRecord(acked.alert_id, "d-1", "mqtt", "Иванов", now - 1, 1.0))
    mine = (await r2.accept(new_alert("r2-own", at=now - 2))).alert

    got2, got3 = await asyncio.gather(r2.take_over(now, 100), r3.take_over(now, 100))
    taken = [a.alert_id for a in got2] + [a.alert_id for a in got3]
    assert sorted(taken) == sorted([unsent.alert_id, sending.alert_id])  # each once; not the closed one, not r2's
    by_id = {a.alert_id: a for a in (*got2, *got3)}
    assert {d.state for d in by_id[sending.alert_id].deliveries} == {DeliveryState.SENDING}
    assert by_id[unsent.alert_id].next_action_at == pytest.approx(now)  # never sent: due at once
    assert mine.alert_id not in taken
    assert await r2.take_over(now + 0.5, 100) == [] and await r3.take_over(now + 0.5, 100) == []
    # the one that took an alert holds it: the other does not step it
    holder, other = (r2, r3) if sending.alert_id in {a.alert_id for a in got2} else (r3, r2)
    assert sending.alert_id not in {a.alert_id for a in await other.alerts_with_sending(100, now=now)}
    assert sending.alert_id in {a.alert_id for a in await holder.alerts_with_sending(100, now=now)}


async def test_a_relay_starting_again_finishes_its_own_sends_but_not_a_live_relays(relay: Relay) -> None:
    now = time.time()
    r1, r2 = await relay("r1"), await relay("r2")
    await r1.renew_lease(now)
    await r2.renew_lease(now)
    theirs = (await r2.accept(new_alert("r2-sending", at=now - 2))).alert
    ours = (await r1.accept(new_alert("r1-sending", at=now - 2))).alert
    for d in (*theirs.deliveries, *ours.deliveries):
        await r1.start_attempt(d.delivery_id, now - 1)
    again = await relay("r1")  # r1 restarted: the same id, a new process
    lease = await again.renew_lease(now + 1)
    assert lease.other_instance and not lease.lapsed and lease.alive == 2
    assert [a.alert_id for a in await again.alerts_with_sending(100, now=now + 1)] == [ours.alert_id]


async def test_a_lease_says_when_it_had_lapsed(relay: Relay) -> None:
    now = time.time()
    r1 = await relay("r1")
    first = await r1.renew_lease(now)
    assert (first.alive, first.lapsed, first.other_instance) == (1, False, False)
    assert not (await r1.renew_lease(now + 1)).lapsed
    late = await r1.renew_lease(now + 1 + LEASE_S + 0.5)  # cut off from the store longer than its lease
    assert late.lapsed and not late.other_instance


async def test_two_relays_receiving_the_same_ack_at_once_record_one_ack(relay: Relay) -> None:
    now = time.time()
    r1, r2 = await relay("r1"), await relay("r2")
    for n in range(10):
        a = (await r1.accept(new_alert(f"ack-{n}", at=now - 5))).alert
        results = await asyncio.gather(
            r1.record_ack(AckRecord(a.alert_id, "d-1", "mqtt", "Иванов", now, 5.0)),
            r2.record_ack(AckRecord(a.alert_id, "d-1", "mqtt", "Иванов", now, 5.0)),
        )
        assert sorted(r.first for r in results if r is not None) == [False, True]
        stored = await r2.get_alert(a.alert_id)
        assert stored is not None and stored.ack is not None


async def test_the_change_feed_carries_each_relays_changes_with_their_origin(relay: Relay) -> None:
    now = time.time()
    r1, r2 = await relay("r1"), await relay("r2")
    start = await r2.last_change()
    a = (await r1.accept(new_alert("feed-1", at=now - 5))).alert
    await r2.record_ack(AckRecord(a.alert_id, "d-1", "mqtt", "Иванов", now, 5.0))
    d = a.deliveries[0]
    await r1.finish_attempt(d.delivery_id, AttemptOutcome.SENT, now)  # no state change: not in the feed
    changes = await r2.changes_after(start, [], 100)
    assert [(c.alert_id, c.origin) for c in changes] == [(a.alert_id, "r1"), (a.alert_id, "r2")]
    assert all(0 <= c.age_s < 30 for c in changes)
    assert await r2.changes_after(changes[-1].seq, [], 100) == []
    assert await r2.last_change() == changes[-1].seq


async def test_a_notify_wakes_a_waiting_relay_at_once(relay: Relay) -> None:
    r1, r2 = await relay("r1"), await relay("r2")
    await r2.wait_for_change(0.01)  # listening from now
    waiting = asyncio.create_task(r2.wait_for_change(30))
    await asyncio.sleep(0)
    started = time.monotonic()
    await r1.accept(new_alert("wake", at=time.time()))
    await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 10


async def test_a_change_committed_after_a_later_one_is_not_missed(relay: Relay, postgres_url: str) -> None:
    """Sequence numbers are taken before commit: a long transaction's change lands behind the feed's position."""
    import psycopg

    r1, r2 = await relay("r1"), await relay("r2")
    bus, metrics, clock = EventBus(), Metrics(), FakeClock(time.time())
    seen = bus.subscribe()
    recounts = 0

    async def recount() -> None:
        nonlocal recounts
        recounts += 1

    feed = ChangeFeed(store=r2, bus=bus, book=TrackBook(TrackParams(), enabled=True), clock=clock, metrics=metrics,
                      recount=recount)
    reader = asyncio.create_task(feed.run())
    try:
        slow = new_alert("slow", at=time.time())
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute("SELECT set_config('uav_relay.origin', 'r1', false)")
            async with conn.transaction():  # r1's accept, held open: its change has a sequence number already
                await conn.execute(
                    "INSERT INTO alerts (alert_id, operator_id, report_id, content_sha256, report_json, desks_json, "
                    "short_code, priority, stale, state, source, created_at, track_id, claimed_by) VALUES "
                    "(%s, 'op-1', 'slow', 'x', %s, '[\"d-1\"]', 'SLOW', 'routine', false, 'pending', 'http', %s, "
                    "%s, 'r1')", (slow.alert.alert_id, json.dumps(slow.alert.report.as_submitted()), time.time(),
                                  slow.alert.alert_id))
                fast = (await r1.accept(new_alert("fast", at=time.time()))).alert
                first = await asyncio.wait_for(seen.next(), 10)
                assert first.alert_id == fast.alert_id and first.foreign
        # committed now, behind the feed's position: it still comes
        later = await asyncio.wait_for(seen.next(), 10)
        assert later.alert_id == slow.alert.alert_id and later.state == "pending"
        await eventually(lambda: recounts >= 2)
        # a relay's own changes are not passed on again (it told its listeners itself)
        await r2.accept(new_alert("own", at=time.time()))
        other = (await r1.accept(new_alert("after-own", at=time.time()))).alert
        assert (await asyncio.wait_for(seen.next(), 10)).alert_id == other.alert_id
    finally:
        reader.cancel()
        await asyncio.wait([reader])


async def test_renewals_at_once_all_renew(relay: Relay, postgres_url: str) -> None:
    """The relay's start and its lease loop may renew at the same moment (once, that left a relay taking reports
    with no lease: another relay sent them too)."""
    import psycopg

    r1 = await relay("r1")
    now = time.time()
    leases = await asyncio.gather(*(r1.renew_lease(now + n * 0.01) for n in range(5)))
    assert [lease.alive for lease in leases] == [1] * 5
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT relay_id, lease_until FROM relays")
        assert [(r, round(u - now, 2)) for r, u in await cur.fetchall()] == [("r1", LEASE_S + 0.04)]
