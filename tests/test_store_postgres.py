"""What only the PostgreSQL store has: migrations under concurrent openers, libpq URLs with several hosts, a server
that restarts, switches over, or is not there when the relay starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from relay.domain import tracks
from relay.domain.config import Settings, StoreSection
from relay.domain.records import (
    AcceptOutcome,
    AckRecord,
    AttemptOutcome,
    AuthFailureTally,
    EventRecord,
    Schedule,
)
from relay.domain.states import AlertState
from relay.domain.tracks import Sighting
from relay.operations.cli import render_config
from relay.store import postgres_schema
from relay.store.base import StoreUnavailable
from relay.store.postgres import PostgresStore, connect_kwargs
from relay.store.postgres_schema import MIGRATIONS
from tests.support.relay import report, running_relay, settings_dict
from tests.support.wait import eventually, free_port
from tests.test_store_contract import in_track, new_alert

if TYPE_CHECKING:
    from tests.support.broker import Mosquitto
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)


@pytest.fixture
async def running() -> AsyncIterator[list[PostgresStore]]:
    """Stores a test opens (append each); each one's `run` goes on until the test ends."""
    stores: list[PostgresStore] = []
    tasks: list[asyncio.Task[None]] = []

    class Started(list[PostgresStore]):
        def append(self, store: PostgresStore) -> None:
            super().append(store)
            tasks.append(asyncio.create_task(store.run()))

    started = Started(stores)
    yield started
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)


def versions(server: PostgresServer, url: str) -> list[int]:
    database = url.rsplit("/", 1)[1].split("?")[0]
    return [int(r[0]) for r in server.sql("SELECT version FROM schema_version ORDER BY version", database)]


# ---- migrations ---------------------------------------------------------------------------------------


async def test_relays_starting_at_once_migrate_the_schema_once(
    postgres_server: PostgresServer, postgres_url: str, running: list[PostgresStore]
) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(postgres_url) for _ in range(4)))
    for s in stores:
        running.append(s)
    assert versions(postgres_server, postgres_url) == list(range(1, len(MIGRATIONS) + 1))
    results = await asyncio.gather(*(s.accept(new_alert(f"r-{n}")) for n, s in enumerate(stores)))
    assert all(r.outcome is AcceptOutcome.CREATED for r in results)
    assert {await s.count_open() for s in stores} == {4}  # one database, seen alike by every relay


async def test_a_migration_that_fails_leaves_nothing_of_itself_and_the_relay_refuses_to_run(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch, running: list[PostgresStore]
) -> None:
    running.append(await PostgresStore.open(postgres_url))
    database = postgres_url.rsplit("/", 1)[1]
    broken = [*MIGRATIONS, ["CREATE TABLE half_done (x integer)", "SELECT no_such_function()"]]
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", broken)
    with pytest.raises(RuntimeError, match="migration failed: UndefinedFunction"):
        await PostgresStore.open(postgres_url)
    assert versions(postgres_server, postgres_url) == list(range(1, len(MIGRATIONS) + 1))
    assert postgres_server.sql("SELECT to_regclass('half_done') IS NULL", database) == [(True,)]


async def test_a_database_newer_than_the_relay_is_refused(
    postgres_server: PostgresServer, postgres_url: str, running: list[PostgresStore]
) -> None:
    running.append(await PostgresStore.open(postgres_url))
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.sql(f"INSERT INTO schema_version VALUES ({len(MIGRATIONS) + 1}, 0)", database)
    with pytest.raises(RuntimeError, match="newer than this relay knows"):
        await PostgresStore.open(postgres_url)


# ---- URLs -----------------------------------------------------------------------------------------------


def test_store_urls_with_several_hosts_are_accepted_and_shown_without_their_password() -> None:
    url = "postgresql://relay:s3cret@db-1:5432,db-2:5433,[::1]:5434/relay?target_session_attrs=read-write"
    section = StoreSection(url=url)
    assert section.kind == "postgresql" and section.url == url and section.lease_s == 5
    shown = render_config(Settings(store={"url": url}))
    assert "s3cret" not in shown
    assert 'url = "postgresql://relay:**********@db-1:5432,db-2:5433,[::1]:5434/relay?target_session_attrs=' in shown
    assert "password=**********" in StoreSection(url="postgresql:///relay?host=/run/pg&password=x").model_dump(
        mode="json")["url"]
    for bad, why in [("postgresql://relay@db-1:99999/relay", "port"),
                     ("postgresql://db-1/relay?target_session_attrs=rw", "target_session_attrs"),
                     ("mysql://db-1/relay", "sqlite:///")]:
        with pytest.raises(ValueError, match=why):
            StoreSection(url=bad)
    with pytest.raises(ValueError, match="greater than 0"):
        StoreSection(lease_s=0)


def test_libpq_timeouts_are_added_where_the_url_sets_none() -> None:
    kwargs = connect_kwargs("postgresql://relay@db-1,db-2/relay?connect_timeout=2&target_session_attrs=read-write")
    assert kwargs["autocommit"] is True and "connect_timeout" not in kwargs  # the URL's own 2 s stays
    assert kwargs["keepalives"] == "1" and kwargs["tcp_user_timeout"] == "10000"


@pytest.fixture
def standby() -> AsyncIterator[PostgresServer]:
    from tests.support.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def make_read_only(server: PostgresServer, read_only: bool) -> None:
    """As a switchover leaves a server: a primary demoted answers read-only, a standby promoted read-write."""
    server.sql(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if read_only else 'off'}")
    server.sql("SELECT pg_reload_conf()")


async def test_a_multi_host_url_finds_the_read_write_server_and_follows_a_switchover(
    postgres_server: PostgresServer, postgres_url: str, standby: PostgresServer, running: list[PostgresStore]
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    standby.sql(f'CREATE DATABASE "{database}"')
    pre = await PostgresStore.open(standby.url(database))  # the standby holds the same schema (a replica would)
    running.append(pre)
    make_read_only(standby, True)
    dead = free_port()  # a host that does not answer at all, listed first
    primary = postgres_server
    url = (f"postgresql://relay:relay-test-password@127.0.0.1:{dead},127.0.0.1:{standby.port},"
           f"127.0.0.1:{primary.port}/{database}?target_session_attrs=read-write")
    store = await PostgresStore.open(url)
    running.append(store)
    assert (await store.accept(new_alert("before"))).outcome is AcceptOutcome.CREATED
    assert primary.sql("SELECT report_id FROM alerts", database) == [("before",)]

    try:
        make_read_only(primary, True)  # the switchover: the old primary read-only, the standby promoted
        make_read_only(standby, False)

        async def stored_after() -> bool:
            try:
                return (await store.accept(new_alert("after"))).outcome is not AcceptOutcome.CONFLICT
            except StoreUnavailable:
                return False  # a pooled connection to the old primary: dropped, the next one goes to the new

        await eventually(stored_after, timeout=15, interval=0.1, what="a write on the new primary")
        assert standby.sql("SELECT report_id FROM alerts", database) == [("after",)]
    finally:
        make_read_only(primary, False)


# ---- the server restarting, or not there ----------------------------------------------------------------


async def test_a_restart_of_the_server_while_the_relay_is_idle_costs_no_refused_report(
    postgres_server: PostgresServer, postgres_url: str, running: list[PostgresStore]
) -> None:
    store = await PostgresStore.open(postgres_url)
    running.append(store)
    await asyncio.gather(*(store.accept(new_alert(f"warm-{n}")) for n in range(8)))  # several pooled connections
    postgres_server.restart()
    assert (await store.accept(new_alert("after-restart"))).outcome is AcceptOutcome.CREATED
    assert store.last_error is None


async def test_a_store_opened_while_the_server_is_down_connects_and_migrates_when_it_comes_up(
    postgres_server: PostgresServer, postgres_url: str, running: list[PostgresStore]
) -> None:
    postgres_server.stop()
    try:
        store = await PostgresStore.open(postgres_url, wait_s=1)
        running.append(store)
        assert store.last_error is not None and "refused" in store.last_error
        with pytest.raises(StoreUnavailable, match="refused"):
            await store.accept(new_alert())
    finally:
        postgres_server.start()
    await eventually(lambda: store.last_error is None, timeout=10, what="the store connected")
    assert (await store.accept(new_alert())).outcome is AcceptOutcome.CREATED
    assert versions(postgres_server, postgres_url) == list(range(1, len(MIGRATIONS) + 1))


async def test_a_relay_started_while_postgresql_is_down_answers_503_then_recovers_by_itself(
    postgres_server: PostgresServer, postgres_url: str, broker: Mosquitto, tmp_path: Path
) -> None:
    settings = settings_dict(broker.port, tmp_path / "data", store={"url": postgres_url})
    postgres_server.stop()
    try:
        async with running_relay(settings) as r:
            status, body = await r.post_report(report("while-down"))
            assert status == 503, body
            status, ready = await r.get("/readyz")
            assert status == 503 and any(reason.startswith("store:") for reason in ready["reasons"])
            assert await r.metric("relay_store_up") == 0
            postgres_server.start()

            async def accepted() -> bool:
                status, _ = await r.post_report(report("after"))
                return status == 201

            await eventually(accepted, timeout=15, interval=0.2, what="a report accepted")
            status, _ = await r.get("/readyz")
            assert status == 200
            assert await r.metric("relay_store_up") == 1
    finally:
        if postgres_server.proc is None:
            postgres_server.start()


# ---- query plans ------------------------------------------------------------------------------------------

BIG_TABLES = {"alerts", "deliveries", "acks", "events", "alert_desks", "auth_failures", "inbound_messages", "tracks",
              "alert_changes"}
ALLOWED_SCANS = (  # as in test_store_query_plans.py: once at start, not on the relay's paths
    "SELECT count(*) FROM alerts WHERE state IN",
)


async def test_no_statement_of_the_store_reads_a_big_table_whole(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch, running: list[PostgresStore]
) -> None:
    """Every statement the store runs on the engine's and the API's paths, asked of the planner with sequential
    scans priced out (`enable_seqscan = off`): a Seq Scan left on a big table means no index can serve it."""
    seen: dict[str, object] = {}
    execute, executemany = psycopg.AsyncConnection.execute, psycopg.AsyncCursor.executemany

    async def traced(self: psycopg.AsyncConnection[object], query: str, params: tuple[object, ...] = (),
                     **kwargs: object) -> object:
        seen.setdefault(str(query), params or ())
        return await execute(self, query, params, **kwargs)  # type: ignore[arg-type]

    async def traced_many(self: psycopg.AsyncCursor[object], query: str, params_seq: list[tuple[object, ...]],
                          **kwargs: object) -> None:
        rows = list(params_seq)
        seen.setdefault(str(query), tuple(rows[0]) if rows else ())
        await executemany(self, query, rows, **kwargs)  # type: ignore[arg-type]

    store = await PostgresStore.open(postgres_url)
    running.append(store)
    monkeypatch.setattr(psycopg.AsyncConnection, "execute", traced)
    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", traced_many)
    now = time.time()
    first, est = in_track(new_alert("p-1", at=now - 60), None)
    second, est = in_track(new_alert("p-2", at=now - 50), est)
    for new in (first, second, new_alert("p-3", code=first.alert.short_code)):
        await store.accept(new)
    a, b = first.alert, second.alert
    await store.accept(first)  # a replay
    d = a.deliveries[0]
    await store.start_attempt(d.delivery_id, now)
    await store.finish_attempt(d.delivery_id, AttemptOutcome.RETRY, now, "unreachable")
    await store.finish_attempt(d.delivery_id, AttemptOutcome.SENT, now)
    await store.mark_delivered(a.alert_id, "d-1", "mqtt", now)
    await store.mark_shown(a.alert_id, "d-2", now)
    await store.delivery_report(d.delivery_id, now, delivered=False, error="30003")
    await store.save_schedule(b.alert_id, Schedule(now - 1, 0, None))
    await store.due_alerts(now, 100)
    await store.next_due_at()
    await store.next_due_at(now)
    await store.alerts_with_queued("mqtt", 100)
    await store.alerts_with_queued("mqtt", 100, now=now)
    await store.alerts_with_sending(100)
    await store.alerts_with_sending(100, now=now)
    await store.renew_lease(now)
    other = await PostgresStore.open(postgres_url, relay_id="relay-2", lease_s=5)
    running.append(other)
    await other.renew_lease(now - 60)  # a relay whose lease lapsed: its alerts are taken over
    await store.take_over(now, 100)
    await store.changes_after(await store.last_change(), [1, 2], 100)
    await store.get_alerts([a.alert_id, b.alert_id])
    await store.start_backup_round(b.alert_id, Schedule(now + 60, 1, now), [], now)
    await store.set_sms_opt_out("+79001234567", True, now)
    await store.find_by_code(a.short_code, now)
    await store.find_by_code("ZZZZ", now)
    await store.record_ack(AckRecord(a.alert_id, "d-1", "http", "Иванов", now, 5.0))
    await store.record_ack(AckRecord(a.alert_id, "d-2", "http", "Петров", now, 6.0))
    await store.ack_track(est.track_id, AckRecord("", "d-2", "web", "Петров", now, 0.0, via_track=True))
    await store.give_up(b.alert_id, now)
    for states in (None, [AlertState.PENDING]):
        await store.list_alerts(states=states, limit=100)
    await store.list_alerts(states=None, limit=100, operator_id="op-1")
    await store.list_alerts(states=None, limit=100, desk_id="d-1")
    await store.get_track(est.track_id)
    await store.list_tracks(since=now - 100, limit=100, operator_id="op-1", desk_id="d-1")
    await store.recent_tracks(now - 1000)
    await store.open_in_track(est.track_id)
    split = tracks.start(Sighting.of(b.report), "T-split")
    await store.split_alert(b.alert_id, est, split, "d-1", "x", now)
    await store.merge_tracks("T-split", est.track_id, est, "d-1", "x", now)
    await store.add_event(EventRecord("", now, "link_refused", {}))
    await store.add_auth_failures([AuthFailureTally("auth_refused", "/x", "10.0.0.1", 1, now, now, "no token")])
    await store.first_inbound("sms", "SM1", now)
    await store.events(a.alert_id)
    await store.audit_log(100)
    await store.prune(now - 86400, 100)
    await store.check_writable()
    monkeypatch.undo()

    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.sql("SET enable_seqscan = off", database)
    scans = []
    for sql, params in seen.items():
        head = sql.lstrip().split(None, 1)[0].upper()
        if head not in {"SELECT", "UPDATE", "DELETE", "INSERT", "WITH"} or sql.startswith(ALLOWED_SCANS):
            continue
        conn = postgres_server._admin[database]
        with conn.transaction():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())  # type: ignore[arg-type]
        scans += [f"{line.strip()}: {sql[:200]}" for line in plan.splitlines()
                  if "Seq Scan on " in line and line.split("Seq Scan on ")[1].split()[0] in BIG_TABLES]
    assert len(seen) > 40
    assert scans == [], "\n".join(scans)
