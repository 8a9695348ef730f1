"""The PostgreSQL store: the same contract as the SQLite store, for a database several relays may share.

psycopg 3 and its pool (bench/pg_drivers.py: the driver chosen on measurements). Each operation is one transaction
on a pooled connection, run in pipeline mode: statements whose results the operation does not read (its inserts
and updates, the COMMIT) leave together with the next read, so an accept costs two round trips, not seven.

What SQLite got from its one writer, PostgreSQL gets from row locks: an operation that decides on an alert (its
state, its deliveries, its acks) first locks the alert's row, `FOR UPDATE`, and reads the rest after it; a track's
ack locks the track's alerts in alert_id order. Two acks of one alert, from two connections or later two relays:
the second waits, then finds it acknowledged. An operation that lost a race (a unique index, a deadlock) runs again
from the start, in a new transaction, a few times at most.

While PostgreSQL does not answer, every operation raises StoreUnavailable at once (the intake answers 503) and
`run` keeps trying to reach it, with a bounded backoff; the relay never stops for it. Where the server may have
committed before the connection died (the COMMIT's answer lost), the operation raises StoreUnavailable too: the
operator's retry of the report finds it stored (a replay), never a second alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import secrets
import select
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from relay.domain import tracks, transitions
from relay.domain.model import Priority, stored_report
from relay.domain.records import (
    Accepted,
    AcceptOutcome,
    AckRecord,
    AckResult,
    AlertChange,
    AlertRecord,
    AttemptOutcome,
    AuthFailureTally,
    DeliveryRecord,
    EventRecord,
    Lease,
    NewAlert,
    OpenAlert,
    OpenInTrack,
    ReceiptResult,
    Schedule,
    TrackAlert,
    TrackRecord,
)
from relay.domain.states import OPEN_ALERT_STATES, AlertState, DeliveryState
from relay.domain.tracks import Sighting, TrackState
from relay.store.base import StoreUnavailable
from relay.store.postgres_schema import CHANGES_CHANNEL, OPEN_SQL, ORIGIN_SETTING, migrate
from relay.store.rows import (
    ACK_COLS,
    ALERT_COLS,
    AUDIT_KINDS,
    AUTH_FAILURE_BUCKET_S,
    DELIVERY_COLS,
    WEB_CHANNEL,
    ack_detail,
    ack_json,
    ack_row,
    acks_from_json,
    alert_row,
    delivery_row,
    latest_send,
    tally_event,
)

log = logging.getLogger("relay.store")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]
Row = tuple[Any, ...]

DEFAULT_RELAY_ID = "uav-relay-1"  # mqtt.client_id's default: a relay's name in the database is its client id
# An alert this relay may step or send: claimed by none, by itself, or by a relay the database no longer knows (its
# row pruned). Not one of a relay whose lease lapsed: those go through `take_over` alone, so that every takeover is
# counted and logged, and none happens before the taker has held its own lease for lease_s (after an outage of the
# database every lease has lapsed at once). `a` is the alerts table; parameter `me`.
CLAIMABLE = ("(a.claimed_by IS NULL OR a.claimed_by = %(me)s OR NOT EXISTS "
             "(SELECT 1 FROM relays r WHERE r.relay_id = a.claimed_by))")
POOL_SIZE = 8  # connections per relay: the engine's steps, the dispatcher's sends and the API's reads side by side
ACQUIRE_S = 5.0  # a connection from a busy pool within this, or StoreUnavailable
ACQUIRE_DOWN_S = 0.5  # the same while the server is known not to answer: a report is refused soon, not late
OPEN_WAIT_S = 5.0  # `open` waits this long for the server; then the relay starts without it (and answers 503)
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 2.0  # `run`'s backoff while the server does not answer
IDLE_CHECK_S = 1.0  # how soon `run` starts asking after an operation found the server gone
RACE_RETRIES = 5  # an operation that lost a race runs again at most this many times
# Server-side bounds per connection: a statement (a lock wait included) and an abandoned transaction end there.
SESSION_SQL = ("SET statement_timeout = '30s'", "SET idle_in_transaction_session_timeout = '60s'")
# libpq's own defaults wait minutes for a peer that vanished; these notice it within about ten seconds. Each is
# used only where the URL does not say otherwise.
CONNECT_DEFAULTS = {
    "connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
    "keepalives_count": "3", "tcp_user_timeout": "10000", "application_name": "uav-relay",
}
_RACES = (pg_errors.UniqueViolation, pg_errors.SerializationFailure, pg_errors.DeadlockDetected)

_TRACK_COLS = "track_id, estimate_json, opened_at, updated_at, acks::text, merged_into"  # acks: jsonb here
# Records of the API's big reads (up to 1,000 alerts, their reports validated again) are built in this one thread:
# the rows come in on the loop, the CPU work of building goes beside it (as SQLite's reader threads do).
LOOP_SWITCH_INTERVAL_S = 0.0005


def new_instance_id() -> str:
    return secrets.token_hex(8)


def connect_kwargs(url: str) -> dict[str, Any]:
    """The libpq parameters added to the URL's: autocommit (each operation opens its own transaction), and the
    timeouts above where the URL does not set them."""
    given = conninfo_to_dict(url)
    return {"autocommit": True, **{k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}}


def _dead(conn: Conn) -> bool:
    """A pooled connection the server has closed (a restart, a switchover): an idle connection has nothing to
    read, so anything there (the server's last word, or end of file) means it is gone. No round trip."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class PostgresStore:
    shared = True  # several relays may run on one database: claims, leases and the change feed

    def __init__(
        self, url: str, *, pool_size: int = POOL_SIZE, relay_id: str = DEFAULT_RELAY_ID, lease_s: float = 5.0
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self.relay_id, self._lease_s = relay_id, lease_s
        self._instance = new_instance_id()
        self._leased = False  # this process has renewed its lease at least once
        self._taken_over: dict[str, float] = {}  # relays whose claims were all taken: id -> their lease_until then
        self._listener: Conn | None = None  # the change feed's LISTEN connection
        # The lease is renewed on a connection of its own: behind a burst's hundreds of operations queued for the
        # pool it would come late, the lease lapse, and another relay take over the work of one still doing it.
        self._lease_conn: Conn | None = None
        self._lease_lock = asyncio.Lock()  # one renewal at a time on it (the start and the lease loop may overlap)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._closed = False
        self._builder: ThreadPoolExecutor | None = None
        self.last_error: str | None = None  # the latest failure to reach or use the server; None while it works

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = POOL_SIZE, wait_s: float = OPEN_WAIT_S, relay_id: str = DEFAULT_RELAY_ID,
        lease_s: float = 5.0,
    ) -> PostgresStore:
        """Connect and migrate; if the server does not answer within `wait_s`, a store that keeps trying (in
        `run`) and refuses every operation until then. A schema newer than this relay knows raises."""
        store = cls(url, pool_size=pool_size, relay_id=relay_id, lease_s=lease_s)
        store._pool = AsyncConnectionPool(
            url, min_size=min(2, pool_size), max_size=pool_size, open=False, kwargs=connect_kwargs(url),
            configure=functools.partial(_configure, origin=relay_id), timeout=ACQUIRE_S, name="relay-store",
            # The pool's own backoff doubles without a bound (1 s, 2 s, 4 s, ... for minutes): instead it gives up
            # at once, and connects again when asked (one attempt at a time): by an operation, or by `run`, which
            # asks with its own bounded backoff while the server does not answer.
            reconnect_timeout=0,
        )
        # its warnings repeat each attempt; the store says once that the server went away, and once that it is back
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        await store._pool.open(wait=False)
        try:
            await store._reach()
            await store._ensure_schema(wait_s)
        except StoreUnavailable as exc:
            log.error("PostgreSQL does not answer: reports are refused until it does",
                      extra={"event": "store_failed", "error": str(exc)})
        except BaseException:
            await store._pool.close()
            raise
        return store

    # ---- the connection ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: reach the server and migrate if `open` could not; while it fails, ask again. Then
        close the pool (operations still under way finish first)."""
        delay = RETRY_FIRST_S
        try:
            while True:
                if self._schema_ready and self.last_error is None:
                    delay = RETRY_FIRST_S
                    await asyncio.sleep(IDLE_CHECK_S)
                    continue
                with contextlib.suppress(StoreUnavailable):
                    await self._reach()
                    if self._schema_ready:  # through the pool (which also drops what a restart killed)
                        await self._run(_op_probe, doing="read")
                    else:
                        await self._ensure_schema(ACQUIRE_S)
                if not self._schema_ready or self.last_error is not None:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            self._closed = True
            if self._builder is not None:
                self._builder.shutdown(wait=False, cancel_futures=True)
            for own in (self._listener, self._lease_conn):
                if own is not None:
                    await own.close()
            if self._pool is not None:
                await self._pool.close()

    async def _reach(self) -> None:
        """A connection of its own, outside the pool: whether the server answers, and if not, libpq's reason (the
        pool keeps its own to itself)."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._url, **connect_kwargs(self._url))
        except psycopg.Error as exc:
            raise self._failed(exc, "reach") from exc
        await probe.close()

    async def _ensure_schema(self, wait_s: float) -> None:
        async with self._schema_lock:
            if self._schema_ready:
                return
            conn = await self._acquire(wait_s)
            try:
                version = await migrate(conn)
            except psycopg.OperationalError as exc:  # the server went away meanwhile: migrated when it is back
                raise self._failed(exc, "migrate") from exc
            except psycopg.Error as exc:  # a migration the server refuses: a relay that must not run on it
                raise RuntimeError(f"database schema migration failed: {type(exc).__name__}: {exc}") from exc
            finally:
                await self._release(conn)
            self._schema_ready = True
            self._working()
            log.info("store ready", extra={"event": "store_ready", "schema_version": version})

    async def _acquire(self, wait_s: float | None = None) -> Conn:
        if self._closed or self._pool is None:
            raise StoreUnavailable("store is closed")
        found_dead = False
        for _ in range(self._pool_size + 1):  # after a restart every idle connection is dead: drop each
            wait = wait_s or (ACQUIRE_DOWN_S if self.last_error is not None or found_dead else ACQUIRE_S)
            try:
                conn = await self._pool.getconn(wait)
            except (PoolTimeout, PoolClosed) as exc:
                why = self.last_error or ("the server closed the connection, and " if found_dead else "") + (
                    f"no new connection within {wait} s")
                raise self._failed(exc, "reach", why) from exc
            if not _dead(conn):
                return conn
            found_dead = True
            await conn.close()
            await self._pool.putconn(conn)
        raise self._failed(None, "reach", "every connection was closed by the server")

    async def _release(self, conn: Conn) -> None:
        if self._pool is None:
            await conn.close()
            return
        await self._pool.putconn(conn)

    def _failed(self, exc: BaseException | None, doing: str, why: str = "") -> StoreUnavailable:
        """The error to raise; said in the log when the store stops working, not at every refusal after that."""
        why = " ".join((why or f"{type(exc).__name__}: {exc}").split())  # libpq's reasons span lines
        if self.last_error is None:
            log.error("store unavailable", extra={"event": "store_failed", "error": why})
        self.last_error = why
        return StoreUnavailable(f"cannot {doing} the store: {why}")

    def _working(self) -> None:
        if self.last_error is not None:
            log.warning("store available again", extra={"event": "store_back", "was": self.last_error})
            self.last_error = None

    async def _run(
        self, op: Callable[[Conn], Awaitable[T]], *, doing: str, durable: bool = True, snapshot: bool = False
    ) -> T:
        """`op` in one transaction, in pipeline mode. A write that lost a race runs again from the start. Any
        error of the server or the connection is StoreUnavailable; any other error of `op` is raised as is (it
        spoiled only itself: its transaction is rolled back)."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._schema_ready:
            raise StoreUnavailable(f"cannot reach the store: {self.last_error or 'not connected yet'}")
        for attempt in range(RACE_RETRIES + 1):
            conn = await self._acquire()
            try:
                # BEGIN and COMMIT as statements of the pipeline, not conn.transaction(): that costs two more
                # steps of psycopg's machinery per operation, 0.3 ms of the relay's CPU (bench/README.md, "Several
                # relays"). A failed operation is rolled back below, before its connection goes back to the pool.
                async with conn.pipeline():
                    if snapshot:  # a read of several statements sees one moment, as a SQLite read transaction
                        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    else:
                        await conn.execute("BEGIN")
                        if not durable:
                            # what a power cut may cost here is a send repeated or a count lost, never a report
                            await conn.execute("SET LOCAL synchronous_commit = off")
                    result = await op(conn)
                    await conn.execute("COMMIT")
                self._working()
                return result
            except _RACES as exc:
                if attempt == RACE_RETRIES:
                    raise self._failed(exc, doing) from exc
                log.info("store operation lost a race; again", extra={"event": "store_retry", "error": str(exc)})
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError | pg_errors.ReadOnlySqlTransaction):
                    await conn.close()  # a server gone, or one that is no longer the primary: connect anew
                raise self._failed(exc, doing) from exc
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    await conn.close()  # cancelled in the middle of a statement: the pool makes a new one
                raise
            finally:
                await self._rolled_back(conn)
                await self._release(conn)
        raise AssertionError("unreachable")

    async def _rolled_back(self, conn: Conn) -> None:
        """A connection left in a transaction (an operation that failed or lost a race) rolled back, or closed."""
        status = conn.info.transaction_status
        if conn.closed or status not in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
            return
        try:
            await conn.rollback()
        except psycopg.Error:
            await conn.close()

    async def _write(self, op: Callable[[Conn], Awaitable[T]], *, durable: bool = True) -> T:
        return await self._run(op, doing="write to", durable=durable)

    async def _read(self, op: Callable[[Conn], Awaitable[T]], *, snapshot: bool = True) -> T:
        if not snapshot:
            return await self._run(op, doing="read")
        return await self._run(op, doing="read", snapshot=True)

    async def _build(self, fn: Callable[[], T]) -> T:
        """Build records from rows beside the loop (see LOOP_SWITCH_INTERVAL_S)."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, thread_name_prefix="relay-store-build")
            if sys.getswitchinterval() > LOOP_SWITCH_INTERVAL_S:
                sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)
        return await asyncio.get_running_loop().run_in_executor(self._builder, fn)

    # ---- alerts --------------------------------------------------------------------------------------

    async def accept(self, new: NewAlert) -> Accepted:
        return await self._write(lambda conn: _op_accept(conn, new, self.relay_id))

    async def get_alert(self, alert_id: str) -> AlertRecord | None:
        return await self._read(lambda conn: _read_alert(conn, alert_id))

    async def list_alerts(
        self,
        *,
        states: Sequence[AlertState] | None,
        limit: int,
        operator_id: str | None = None,
        desk_id: str | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
    ) -> list[AlertRecord]:
        where: list[str] = []
        args: list[object] = []
        for bound, op in ((after_id, ">"), (before_id, "<")):
            if bound is not None:
                where.append(f"a.alert_id {op} %s")
                args.append(bound)
        src = "alerts a"
        if desk_id is not None:
            src = "alert_desks d JOIN alerts a ON a.alert_id = d.alert_id"
            where.append("d.desk_id = %s")
            args.append(desk_id)
        if operator_id is not None:
            where.append("a.operator_id = %s")
            args.append(operator_id)
        if states is not None:
            where.append("a.state = ANY(%s)")
            args.append([s.value for s in states])
        cols = ", ".join(f"a.{c.strip()}" for c in ALERT_COLS.split(","))
        sql = f"SELECT {cols} FROM {src}"  # noqa: S608 - only fixed fragments, values are bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY a.alert_id {'DESC' if after_id is None else 'ASC'} LIMIT %s"
        args.append(limit)

        async def fetch(conn: Conn) -> tuple[list[Row], list[Row], list[Row]]:
            rows = await _all(conn, sql, args)
            return (rows, *await _hydration(conn, [r[0] for r in rows]))

        fetched = await self._read(fetch)
        return await self._build(lambda: _alerts(*fetched))

    async def _read_alerts(self, sql: str, args: tuple[Any, ...]) -> list[AlertRecord]:
        """The alerts a query names, with their deliveries and acks, in one read."""

        async def fetch(conn: Conn) -> list[AlertRecord]:
            return await _hydrate(conn, await _all(conn, sql, args))

        return await self._read(fetch)

    # A relay's due alerts, its alerts to send when the primary is back, and its sends to finish after a restart
    # are those it may claim (CLAIMABLE), and it claims them in the same statement: two relays never step one
    # alert, and the one that did keeps it while its lease lives. `now` None: every one, claimed by none (tests).

    async def due_alerts(self, now: float, limit: int) -> list[AlertRecord]:
        return await self._claim(
            f"SELECT alert_id FROM alerts a WHERE next_action_at <= %(now)s AND state IN {OPEN_SQL} "  # noqa: S608
            f"AND {CLAIMABLE} ORDER BY next_action_at LIMIT %(limit)s",
            now, limit, order=lambda a: (a.next_action_at or 0.0, a.alert_id),
        )

    async def next_due_at(self, now: float | None = None) -> float | None:
        if now is None:
            sql, args = "SELECT min(next_action_at) FROM alerts WHERE next_action_at IS NOT NULL", {}
        else:
            sql = f"SELECT min(next_action_at) FROM alerts a WHERE next_action_at IS NOT NULL AND {CLAIMABLE}"  # noqa: S608
            args = {"now": now, "me": self.relay_id}
        row = await self._read(lambda conn: _one(conn, sql, args), snapshot=False)
        return None if row is None else row[0]

    async def alerts_with_queued(self, channel: str, limit: int, now: float | None = None) -> list[AlertRecord]:
        return await self._claim(
            f"SELECT alert_id FROM alerts a WHERE state IN {OPEN_SQL} AND {CLAIMABLE} AND alert_id IN "  # noqa: S608
            "(SELECT alert_id FROM deliveries WHERE state = 'queued' AND channel = %(channel)s) "
            "ORDER BY alert_id LIMIT %(limit)s",
            now, limit, channel=channel,
        )

    async def _claim(
        self, select_ids: str, now: float | None, limit: int, *, order: Callable[[AlertRecord], Any] | None = None,
        **args: Any,
    ) -> list[AlertRecord]:
        """The alerts `select_ids` finds (unlocked ones only), claimed for this relay, with their deliveries."""
        params = {"now": math.inf if now is None else now, "me": self.relay_id, "limit": limit, **args}
        if now is None:
            select_ids = select_ids.replace(CLAIMABLE, "true")
        sql = (f"UPDATE alerts SET claimed_by = %(me)s WHERE alert_id IN ({select_ids} FOR UPDATE SKIP LOCKED) "  # noqa: S608
               f"RETURNING {ALERT_COLS}")

        async def claim(conn: Conn) -> list[AlertRecord]:
            return await _hydrate(conn, await _all(conn, sql, params))

        # a claim lost in a crash of the server is harmless: the alert is claimable again
        found = await self._write(claim, durable=False)
        return sorted(found, key=order or (lambda a: a.alert_id))

    # ---- leases: several relays on one database --------------------------------------------------------------

    async def renew_lease(self, now: float) -> Lease:
        """This relay's lease, live for `lease_s` from `now`; what the renewal found."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        async with self._lease_lock:
            alive, old_instance, old_until = await self._renew_on_own_connection(now)
        first, self._leased = not self._leased, True
        held = old_until is not None and old_until > now
        return Lease(
            alive=alive,
            lapsed=old_until is not None and not held and not first,
            other_instance=old_instance is not None and old_instance != self._instance and held,
        )

    async def _renew_on_own_connection(self, now: float) -> tuple[int, str | None, float | None]:
        try:
            if self._lease_conn is None or self._lease_conn.closed:
                self._lease_conn = await psycopg.AsyncConnection.connect(self._url, **connect_kwargs(self._url))
                await _configure(self._lease_conn, origin=self.relay_id)
            async with self._lease_conn.transaction():
                await self._lease_conn.execute("SET LOCAL synchronous_commit = off")
                return await _op_renew_lease(self._lease_conn, self.relay_id, self._instance, now, self._lease_s)
        except psycopg.Error as exc:
            if self._lease_conn is not None:
                await self._lease_conn.close()
            self._lease_conn = None
            # not the store's own failure (its operations say that): this relay's claims lapse, as they should
            raise StoreUnavailable(f"cannot renew the lease: {type(exc).__name__}: {exc}") from exc

    async def take_over(self, now: float, limit: int) -> list[AlertRecord]:
        """Open alerts and unfinished sends of relays whose lease lapsed, claimed for this one; an alert with a
        delivery never sent is made due now (the dead relay may have stored it and died before the publish)."""
        dead = await self._read(lambda conn: _all(
            conn, "SELECT relay_id, lease_until FROM relays WHERE lease_until <= %s AND relay_id <> %s",
            (now, self.relay_id)), snapshot=False)
        fresh = [(r, until) for r, until in dead if self._taken_over.get(r) != until]
        if not fresh:
            return []
        ids = [r for r, _ in fresh]
        found = await self._write(lambda conn: _op_take_over(conn, ids, self.relay_id, now, limit))
        if len(found) < limit:  # all of theirs are someone's now: not looked for again until they die again
            self._taken_over.update(fresh)
        return found

    async def last_change(self) -> int:
        row = await self._read(lambda conn: _one(conn, "SELECT coalesce(max(seq), 0) FROM alert_changes"),
                               snapshot=False)
        return 0 if row is None else int(row[0])

    async def changes_after(self, seq: int, missing: Sequence[int], limit: int) -> list[AlertChange]:
        """Changes after `seq`, and those of `missing` (sequence numbers of transactions not committed when `seq`
        was read) that are committed now, in order."""
        rows = await self._read(lambda conn: _all(
            conn,
            "SELECT seq, alert_id, origin, extract(epoch FROM clock_timestamp()) - at FROM alert_changes "
            "WHERE seq > %s OR seq = ANY(%s) ORDER BY seq LIMIT %s",
            (seq, list(missing), limit)), snapshot=False)
        return [AlertChange(int(r[0]), r[1], r[2], max(0.0, float(r[3]))) for r in rows]

    async def wait_for_change(self, within_s: float) -> None:
        """Until another relay's NOTIFY says it committed a change, or `within_s`. Without a listening connection
        (the server away) it waits the timeout: the reader polls."""
        try:
            if self._listener is None or self._listener.closed:
                self._listener = await psycopg.AsyncConnection.connect(self._url, **connect_kwargs(self._url))
                await self._listener.execute(f"LISTEN {CHANGES_CHANNEL}")
            # closed on leaving (a generator left open would hold the connection's lock until collected)
            async with contextlib.aclosing(self._listener.notifies(timeout=within_s)) as notes:
                async for note in notes:
                    if note.payload != self.relay_id:  # its own changes: this relay told its listeners itself
                        break
        except psycopg.Error as exc:
            log.info("change feed listener lost; polling", extra={"event": "change_listen_lost", "error": str(exc)})
            if self._listener is not None:
                await self._listener.close()
            self._listener = None
            await asyncio.sleep(within_s)

    async def get_alerts(self, alert_ids: Sequence[str]) -> list[AlertRecord]:
        ids = list(alert_ids)
        return await self._read_alerts(
            f"SELECT {ALERT_COLS} FROM alerts WHERE alert_id = ANY(%s) ORDER BY alert_id", (ids,))  # noqa: S608

    async def count_open(self) -> int:
        row = await self._read(
            lambda conn: _one(conn, f"SELECT count(*) FROM alerts WHERE state IN {OPEN_SQL}"),  # noqa: S608
            snapshot=False,
        )
        assert row is not None
        return int(row[0])

    async def save_schedule(self, alert_id: str, schedule: Schedule) -> None:
        await self._write(lambda conn: _op_save_schedule(conn, alert_id, schedule))

    async def give_up(self, alert_id: str, at: float) -> AlertRecord | None:
        return await self._write(lambda conn: _op_give_up(conn, alert_id, at))

    # ---- deliveries and acks -------------------------------------------------------------------------

    async def start_attempt(self, delivery_id: str, at: float) -> DeliveryRecord | None:
        return await self._write(lambda conn: _op_start_attempt(conn, delivery_id, at))

    async def finish_attempt(
        self, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None = None,
        refs: Sequence[str] = (), channel: str = "",
    ) -> DeliveryRecord | None:
        return await self._write(
            lambda conn: _op_finish_attempt(conn, delivery_id, outcome, at, error, tuple(refs), channel),
            durable=outcome is not AttemptOutcome.SENT,
        )

    async def mark_delivered(self, alert_id: str, desk_id: str, channel: str, at: float) -> ReceiptResult | None:
        return await self._write(lambda conn: _op_mark_delivered(conn, alert_id, desk_id, channel, at),
                                 durable=False)

    async def mark_shown(self, alert_id: str, desk_id: str, at: float) -> ReceiptResult | None:
        return await self._write(lambda conn: _op_mark_shown(conn, alert_id, desk_id, at), durable=False)

    async def record_ack(self, ack: AckRecord) -> AckResult | None:
        return await self._write(lambda conn: _op_record_ack(conn, ack))

    async def start_backup_round(
        self, alert_id: str, schedule: Schedule, deliveries: Sequence[DeliveryRecord], at: float
    ) -> list[DeliveryRecord] | None:
        wanted = list(deliveries)
        return await self._write(lambda conn: _op_start_backup_round(conn, alert_id, schedule, wanted, at))

    async def delivery_report(
        self, delivery_id: str, at: float, *, delivered: bool, error: str | None = None
    ) -> ReceiptResult | None:
        return await self._write(lambda conn: _op_delivery_report(conn, delivery_id, at, delivered, error),
                                 durable=False)

    async def alerts_with_sending(self, limit: int, now: float | None = None) -> list[AlertRecord]:
        # closed ones too: the dispatcher sends what is still worth sending and cancels the rest (a restart must
        # not leave a delivery "sending" for ever); of another relay's, only those it can no longer finish
        return await self._claim(
            f"SELECT alert_id FROM alerts a WHERE {CLAIMABLE} AND alert_id IN "  # noqa: S608
            "(SELECT alert_id FROM deliveries WHERE state = 'sending') ORDER BY alert_id LIMIT %(limit)s",
            now, limit,
        )

    async def deliveries_by_ref(self, channel: str, refs: Sequence[str]) -> list[str]:
        async def fetch(conn: Conn) -> list[str]:
            rows = await _all(conn, "SELECT ref, delivery_id, at FROM receipt_refs "
                                    "WHERE channel = %s AND ref = ANY(%s)", (channel, list(refs)))
            for ref in refs:
                mine = [(r[1], r[2]) for r in rows if r[0] == ref]
                if mine:
                    return latest_send(mine)
            return []

        return await self._read(fetch)

    async def find_by_code(self, code: str, now: float) -> AlertRecord | None:
        async def fetch(conn: Conn) -> AlertRecord | None:
            row = await _one(
                conn, f"SELECT alert_id FROM alerts WHERE short_code = %s AND state IN {OPEN_SQL}", (code,)  # noqa: S608
            ) or await _one(
                conn,
                "SELECT alert_id FROM alerts WHERE short_code = %s AND state = 'unacknowledged' AND closed_at > %s "
                "ORDER BY alert_id DESC LIMIT 1",
                (code, now - 86400),
            )
            return None if row is None else await _read_alert(conn, row[0])

        return await self._read(fetch)

    # ---- tracks ----------------------------------------------------------------------------------------

    async def get_track(self, track_id: str) -> TrackRecord | None:
        async def fetch(conn: Conn) -> tuple[list[Row], list[Row]]:
            rows = await _all(conn, f"SELECT {_TRACK_COLS} FROM tracks WHERE track_id = %s", (track_id,))  # noqa: S608
            return rows, await _track_members(conn, [r[0] for r in rows])

        rows, members = await self._read(fetch)
        built = await self._build(lambda: _tracks(rows, members))
        return built[0] if built else None

    async def list_tracks(
        self, *, since: float | None, limit: int, operator_id: str | None = None, desk_id: str | None = None
    ) -> list[TrackRecord]:
        where = ["merged_into IS NULL"]
        args: list[object] = []
        if since is not None:
            where.append("updated_at >= %s")
            args.append(since)
        if operator_id is not None:
            where.append("EXISTS (SELECT 1 FROM alerts a WHERE a.track_id = t.track_id AND a.operator_id = %s)")
            args.append(operator_id)
        if desk_id is not None:
            where.append("EXISTS (SELECT 1 FROM alerts a JOIN alert_desks d ON d.alert_id = a.alert_id "
                         "WHERE a.track_id = t.track_id AND d.desk_id = %s)")
            args.append(desk_id)
        sql = (f"SELECT {_TRACK_COLS} FROM tracks t WHERE {' AND '.join(where)} "  # noqa: S608 - fixed fragments
               "ORDER BY updated_at DESC LIMIT %s")
        args.append(limit)

        async def fetch(conn: Conn) -> tuple[list[Row], list[Row]]:
            rows = await _all(conn, sql, args)
            return rows, await _track_members(conn, [r[0] for r in rows])

        rows, members = await self._read(fetch)
        return await self._build(lambda: _tracks(rows, members))

    async def recent_tracks(self, since: float) -> list[TrackRecord]:
        async def fetch(conn: Conn) -> list[TrackRecord]:
            rows = await _all(
                conn, f"SELECT {_TRACK_COLS} FROM tracks WHERE last_seen >= %s AND merged_into IS NULL",  # noqa: S608
                (since,),
            )
            return _tracks(rows, await _track_members(conn, [r[0] for r in rows]))

        return await self._read(fetch)

    async def merged_tracks(self, since: float) -> list[TrackRecord]:
        async def fetch(conn: Conn) -> list[TrackRecord]:
            rows = await _all(
                conn, f"SELECT {_TRACK_COLS} FROM tracks WHERE updated_at >= %s AND merged_into IS NOT NULL",  # noqa: S608
                (since,),
            )
            return _tracks(rows, await _track_members(conn, [r[0] for r in rows]))

        return await self._read(fetch)

    async def open_in_track(self, track_id: str) -> OpenInTrack:
        async def fetch(conn: Conn) -> OpenInTrack:
            opened = await conn.execute("SELECT opened_at FROM tracks WHERE track_id = %s", (track_id,))
            members = await conn.execute(
                "SELECT alert_id, short_code, priority, created_at FROM alerts "  # noqa: S608 - a fixed fragment
                f"WHERE track_id = %s AND state IN {OPEN_SQL} ORDER BY alert_id",
                (track_id,),
            )
            row = await opened.fetchone()
            return OpenInTrack(row[0] if row is not None else math.inf,
                               tuple(OpenAlert(r[0], r[1], Priority(r[2]), r[3]) for r in await members.fetchall()))

        return await self._read(fetch)

    async def ack_track(self, track_id: str, ack: AckRecord) -> list[AckResult]:
        return await self._write(lambda conn: _op_ack_track(conn, track_id, ack))

    async def merge_tracks(
        self, track_id: str, into: str, estimate: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        await self._write(lambda conn: _op_merge_tracks(conn, track_id, into, estimate, desk_id, by, at))

    async def split_alert(
        self, alert_id: str, old: TrackState, new: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        await self._write(lambda conn: _op_split_alert(conn, alert_id, old, new, desk_id, by, at))

    async def set_sms_opt_out(self, phone: str, opted_out: bool, at: float) -> None:
        await self._write(lambda conn: _op_set_opt_out(conn, phone, opted_out, at))

    # ---- history and health --------------------------------------------------------------------------

    async def add_event(self, event: EventRecord) -> None:
        await self._write(lambda conn: _insert_event(conn, event))

    async def events(self, alert_id: str) -> list[EventRecord]:
        async def fetch(conn: Conn) -> tuple[Row | None, list[Row]]:
            accepted = await conn.execute("SELECT created_at, source FROM alerts WHERE alert_id = %s", (alert_id,))
            rows = await conn.execute(
                "SELECT alert_id, at, kind, detail_json FROM events WHERE alert_id = %s ORDER BY id", (alert_id,)
            )
            return await accepted.fetchone(), await rows.fetchall()

        accepted, rows = await self._read(fetch)
        if accepted is None:
            return []
        return await self._build(lambda: [EventRecord(alert_id, accepted[0], "accepted", {"source": accepted[1]})]
                                 + [EventRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows])

    async def audit_log(self, limit: int) -> list[EventRecord]:
        async def fetch(conn: Conn) -> tuple[list[Row], list[Row]]:
            events = await conn.execute(
                "SELECT alert_id, at, kind, detail_json FROM events WHERE kind = ANY(%s) ORDER BY id DESC LIMIT %s",
                (list(AUDIT_KINDS), limit),
            )
            tallies = await conn.execute(
                "SELECT kind, endpoint, source, count, first_at, last_at, reason FROM auth_failures "
                "ORDER BY last_at DESC LIMIT %s", (limit,),
            )
            return await events.fetchall(), await tallies.fetchall()

        events, tallies = await self._read(fetch)

        def build() -> list[EventRecord]:
            records = [EventRecord(r[0], r[1], r[2], json.loads(r[3])) for r in events]
            records += [tally_event(AuthFailureTally(*t)) for t in tallies]
            return sorted(records, key=lambda e: e.at, reverse=True)[:limit]

        return await self._build(build)

    async def add_auth_failures(self, tallies: Sequence[AuthFailureTally]) -> None:
        # Losing these in a power cut loses a count, never a report: no flush of their own.
        counted = list(tallies)
        await self._write(lambda conn: _op_add_auth_failures(conn, counted), durable=False)

    async def first_inbound(self, channel: str, message_id: str, at: float) -> bool:
        return await self._write(lambda conn: _op_first_inbound(conn, channel, message_id, at))

    async def prune(self, before: float, batch: int) -> int:
        return await self._write(lambda conn: _op_prune(conn, before, batch), durable=False)

    async def check_writable(self) -> None:
        await self._write(_op_heartbeat)


async def _configure(conn: Conn, *, origin: str) -> None:
    for statement in SESSION_SQL:
        await conn.execute(statement)
    # what the change feed's trigger writes as the change's origin (a relay skips its own changes)
    await conn.execute("SELECT set_config(%s, %s, false)", (ORIGIN_SETTING, origin))


# ---- small helpers --------------------------------------------------------------------------------------


async def _one(conn: Conn, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> Row | None:
    cur = await conn.execute(sql, args)  # SQL built from fixed fragments only
    return await cur.fetchone()


async def _all(conn: Conn, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
    cur = await conn.execute(sql, args)  # SQL built from fixed fragments only
    return await cur.fetchall()


async def _op_probe(conn: Conn) -> None:
    await conn.execute("SELECT 1")


async def _op_heartbeat(conn: Conn) -> None:
    await conn.execute("UPDATE heartbeat SET at = %s WHERE id = 1", (time.time(),))


# ---- operations, each inside its own transaction -------------------------------------------------------


async def _op_accept(conn: Conn, new: NewAlert, relay_id: str) -> Accepted:
    a = new.alert
    found = await conn.execute(
        "SELECT content_sha256, alert_id FROM alerts WHERE operator_id = %s AND report_id = %s",
        (a.operator_id, a.report_id),
    )
    taken = await conn.execute(
        f"SELECT 1 FROM alerts WHERE short_code = %s AND state IN {OPEN_SQL}", (a.short_code,)  # noqa: S608
    )
    row = await found.fetchone()
    if row is not None:
        existing = await _read_alert(conn, row[1])
        assert existing is not None
        outcome = AcceptOutcome.REPLAY if row[0] == new.content_sha256 else AcceptOutcome.CONFLICT
        return Accepted(outcome, existing)
    code = a.short_code
    if await taken.fetchone() is not None:  # rare: the codes open now, read once, to pick another
        open_codes = {r[0] for r in await _all(conn, f"SELECT short_code FROM alerts WHERE state IN {OPEN_SQL}")}  # noqa: S608
        code = transitions.free_short_code(a.short_code, open_codes.__contains__)
    # A report stored by another connection since the look above: the unique key says so, and the accept runs
    # again (then it is a replay or a conflict). So does a short code taken meanwhile.
    await conn.execute(
        "INSERT INTO alerts (alert_id, operator_id, report_id, content_sha256, report_json, desks_json, "
        "short_code, priority, stale, state, source, created_at, next_action_at, backup_rounds, last_backup_at, "
        "track_id, closed_at, claimed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
        "%s)",
        (
            a.alert_id, a.operator_id, a.report_id, new.content_sha256,
            json.dumps(a.report.as_submitted(), ensure_ascii=False, separators=(",", ":")), json.dumps(a.desks),
            code, a.priority, a.stale, a.state.value, new.source, a.created_at, a.next_action_at,
            a.backup_rounds, a.last_backup_at, a.track_id or a.alert_id, None if a.ack is None else a.created_at,
            relay_id,  # the accepting relay sends it, and holds its timers while it lives
        ),
    )
    await _save_track(conn, new.track_estimate(), a.created_at)
    if a.ack is not None:  # it joined a track its desk has acknowledged
        await _insert_ack(conn, a.ack, first=True)
        await _insert_event(conn, EventRecord(a.alert_id, a.created_at, "acknowledged", {**ack_detail(a.ack),
                                                                                        "via_track": True}))
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO alert_desks (desk_id, alert_id) VALUES (%s, %s)", [(desk, a.alert_id) for desk in a.desks]
        )
    await _add_deliveries(conn, a.deliveries, a.created_at)
    # No "accepted" row in events: the alert row itself records it (see `events`), one index write fewer.
    return Accepted(AcceptOutcome.CREATED, a if code == a.short_code else replace(a, short_code=code))


async def _add_deliveries(conn: Conn, deliveries: Iterable[DeliveryRecord], at: float) -> None:
    rows = [
        (d.delivery_id, d.alert_id, d.desk_id, d.channel, d.target, d.state.value, d.attempts,
         d.sent_at, d.delivered_at, d.error, d.permanent, d.attempted_at, at)
        for d in deliveries
    ]
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            f"INSERT INTO deliveries ({DELIVERY_COLS}, updated_at) "  # noqa: S608
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


async def _lock_alert_of(conn: Conn, delivery_id: str) -> tuple[DeliveryRecord, AlertState] | None:
    """The delivery, read after its alert's row is locked (the lock every change to an alert's deliveries takes
    first), and the alert's state."""
    locked = await _one(
        conn,
        "SELECT state FROM alerts WHERE alert_id = (SELECT alert_id FROM deliveries WHERE delivery_id = %s) "
        "FOR UPDATE",
        (delivery_id,),
    )
    if locked is None:
        return None
    row = await _one(conn, f"SELECT {DELIVERY_COLS} FROM deliveries WHERE delivery_id = %s", (delivery_id,))  # noqa: S608
    assert row is not None
    return delivery_row(row), AlertState(locked[0])


async def _update_delivery(conn: Conn, d: DeliveryRecord, at: float) -> DeliveryRecord:
    await conn.execute(
        "UPDATE deliveries SET state = %s, attempts = %s, sent_at = %s, delivered_at = %s, error = %s, "
        "permanent = %s, attempted_at = %s, updated_at = %s WHERE delivery_id = %s",
        (d.state.value, d.attempts, d.sent_at, d.delivered_at, d.error, d.permanent, d.attempted_at, at,
         d.delivery_id),
    )
    return d


async def _op_start_attempt(conn: Conn, delivery_id: str, at: float) -> DeliveryRecord | None:
    found = await _lock_alert_of(conn, delivery_id)
    if found is None:
        return None
    changed = transitions.attempt_started(*found)
    if changed is None:
        return None
    await _update_delivery(conn, changed, at)
    return changed if changed.state is DeliveryState.SENDING else None


async def _op_finish_attempt(
    conn: Conn, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None,
    refs: tuple[str, ...] = (), channel: str = "",
) -> DeliveryRecord | None:
    found = await _lock_alert_of(conn, delivery_id)
    if found is None:
        return None
    changed = transitions.attempt_finished(*found, outcome, at, error)
    if changed is None:
        return None
    if refs and outcome is AttemptOutcome.SENT:
        await conn.execute(
            "INSERT INTO receipt_refs (channel, ref, delivery_id, at) SELECT %s, unnest(%s::text[]), %s, %s "
            "ON CONFLICT (channel, ref, delivery_id) DO UPDATE SET at = excluded.at",
            (channel, list(refs), delivery_id, at),
        )
    if transitions.replan_now(changed):  # in the same commit: a crash cannot lose the failover
        await conn.execute(
            f"UPDATE alerts SET next_action_at = %s WHERE alert_id = %s AND state IN {OPEN_SQL} "  # noqa: S608
            "AND (next_action_at IS NULL OR next_action_at > %s)",
            (at, changed.alert_id, at),
        )
    return await _update_delivery(conn, changed, at)


async def _op_mark_delivered(
    conn: Conn, alert_id: str, desk_id: str, channel: str, at: float, target: str | None = None
) -> ReceiptResult | None:
    alert = await _read_alert(conn, alert_id, full=False, lock=True)
    rows = [
        delivery_row(r) for r in await _all(
            conn,
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = %s AND desk_id = %s AND channel = %s",  # noqa: S608
            (alert_id, desk_id, channel),
        )
        if target is None or r[4] == target
    ]
    if not rows:
        return None
    assert alert is not None
    for d in rows:
        changed = transitions.receipt(d, at)
        if changed is not None:
            await _update_delivery(conn, changed, at)
    now_delivered = transitions.delivered(alert)
    if now_delivered is None:
        return ReceiptResult(alert, newly_delivered=False)
    await _save_alert_state(conn, now_delivered, closed_at=None)
    await _insert_event(conn, EventRecord(alert_id, at, "delivered", {"desk_id": desk_id, "channel": channel}))
    return ReceiptResult(now_delivered, newly_delivered=True)


async def _op_mark_shown(conn: Conn, alert_id: str, desk_id: str, at: float) -> ReceiptResult | None:
    alert = await _read_alert(conn, alert_id, full=False, lock=True)
    if alert is None:
        return None
    delivery_id = f"{alert_id}.{desk_id}.{WEB_CHANNEL}"
    if await _one(conn, "SELECT 1 FROM deliveries WHERE delivery_id = %s", (delivery_id,)) is not None:
        return ReceiptResult(alert, newly_delivered=False, newly_shown=False)
    await _add_deliveries(conn, [transitions.shown_on_web(delivery_id, alert_id, desk_id, at)], at)
    now_delivered = transitions.delivered(alert)
    if now_delivered is None:
        return ReceiptResult(alert, newly_delivered=False)
    await _save_alert_state(conn, now_delivered, closed_at=None)
    await _insert_event(conn, EventRecord(alert_id, at, "delivered", {"desk_id": desk_id, "channel": WEB_CHANNEL}))
    return ReceiptResult(now_delivered, newly_delivered=True)


async def _op_record_ack(conn: Conn, ack: AckRecord) -> AckResult | None:
    alert = await _read_alert(conn, ack.alert_id, full=False, lock=True)
    if alert is None:
        return None
    closed = transitions.acknowledged(alert, ack)
    await _insert_ack(conn, ack, first=closed is not None)
    if closed is None:
        await _insert_event(conn, EventRecord(ack.alert_id, ack.at, "duplicate_ack", ack_detail(ack)))
        return AckResult(first=False, alert=alert)
    first = await _close_acked(conn, alert, closed)
    others = await _op_ack_track(conn, alert.track_id, ack)
    return replace(first, track=tuple(others))



async def _insert_ack(conn: Conn, ack: AckRecord, *, first: bool) -> None:
    await conn.execute(
        "INSERT INTO acks (alert_id, desk_id, channel, by, at, latency_s, first, source, via_track) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (ack.alert_id, ack.desk_id, ack.channel, ack.by, ack.at, ack.latency_s, first, ack.source, ack.via_track),
    )


async def _close_acked(conn: Conn, alert: AlertRecord, closed: AlertRecord) -> AckResult:
    ack = closed.ack
    assert ack is not None
    await _save_alert_state(conn, closed, closed_at=ack.at)
    cancelled = await _cancel_queued(conn, ack.alert_id, ack.at)
    detail = {**ack_detail(ack), "cancelled": cancelled, **({"via_track": True} if ack.via_track else {})}
    await _insert_event(conn, EventRecord(ack.alert_id, ack.at, "acknowledged", detail))
    return AckResult(first=True, alert=closed, was_open=alert.state in OPEN_ALERT_STATES, cancelled=cancelled)


async def _op_ack_track(conn: Conn, track_id: str, ack: AckRecord) -> list[AckResult]:
    """The rest of the track acknowledged with `ack` (see transitions.track_acks), and the ack kept on the track
    for its later alerts; the results of the alerts it closed. Its alerts are locked in alert_id order."""
    rows = await _all(
        conn,
        f"SELECT {ALERT_COLS} FROM alerts WHERE track_id = %s AND state != 'acknowledged' "  # noqa: S608
        "ORDER BY alert_id FOR UPDATE",
        (track_id,),
    )
    alerts = [alert_row(r, (), None) for r in rows]
    results = []
    for closed in transitions.track_acks(ack, alerts):
        assert closed.ack is not None
        await _insert_ack(conn, closed.ack, first=True)
        before = next(a for a in alerts if a.alert_id == closed.alert_id)
        results.append(await _close_acked(conn, before, closed))
    # the desk's first ack of the track is kept for its later alerts
    await conn.execute(
        "UPDATE tracks SET acks = CASE WHEN acks ? %s THEN acks ELSE acks || jsonb_build_object(%s::text, %s::jsonb) "
        "END, updated_at = greatest(updated_at, %s) WHERE track_id = %s",
        (ack.desk_id, ack.desk_id, json.dumps(ack_json(ack), ensure_ascii=False), ack.at, track_id),
    )
    return results


async def _cancel_queued(conn: Conn, alert_id: str, at: float) -> int:
    """Under the alert's lock (its deliveries change only under it)."""
    queued = [
        delivery_row(r) for r in await _all(
            conn, f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = %s AND state = 'queued'", (alert_id,)  # noqa: S608
        )
    ]
    cancelled = transitions.cancel_queued(queued)
    for d in cancelled:
        await _update_delivery(conn, d, at)
    return len(cancelled)


async def _save_alert_state(conn: Conn, alert: AlertRecord, *, closed_at: float | None) -> None:
    await conn.execute(
        "UPDATE alerts SET state = %s, next_action_at = %s, closed_at = coalesce(%s, closed_at) WHERE alert_id = %s",
        (alert.state.value, alert.next_action_at, closed_at, alert.alert_id),
    )


async def _op_start_backup_round(
    conn: Conn, alert_id: str, schedule: Schedule, deliveries: list[DeliveryRecord], at: float
) -> list[DeliveryRecord] | None:
    state = await _one(conn, "SELECT state FROM alerts WHERE alert_id = %s FOR UPDATE", (alert_id,))
    if state is None or AlertState(state[0]) not in OPEN_ALERT_STATES:
        return None
    await _op_save_schedule(conn, alert_id, schedule)
    existing_rows = await conn.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = %s", (alert_id,)  # noqa: S608
    )
    opted_rows = await conn.execute("SELECT phone FROM sms_opt_outs")
    existing = {r[0]: delivery_row(r) for r in await existing_rows.fetchall()}
    opted_out = {("sms", r[0]) for r in await opted_rows.fetchall()}
    round_ = transitions.backup_round(existing, deliveries, opted_out, at)
    await _add_deliveries(conn, round_.created, at)
    for d in round_.changed:
        await _update_delivery(conn, d, at)
    # A delivery's sent_at is its first send; every round is here, in the alert's history.
    await _insert_event(conn, EventRecord(alert_id, at, "backup_round", {
        "round": schedule.backup_rounds, "targets": [f"{d.channel}:{d.target}" for d in round_.to_send]}))
    return round_.to_send


async def _op_delivery_report(
    conn: Conn, delivery_id: str, at: float, delivered: bool, error: str | None
) -> ReceiptResult | None:
    found = await _lock_alert_of(conn, delivery_id)
    if found is None:
        return None
    d = found[0]
    if delivered:
        return await _op_mark_delivered(conn, d.alert_id, d.desk_id, d.channel, at, target=d.target)
    changed = transitions.undelivered(d, error)
    if changed is not None:
        await _update_delivery(conn, changed, at)
    alert = await _read_alert(conn, d.alert_id, full=False)
    return None if alert is None else ReceiptResult(alert, newly_delivered=False)


async def _op_set_opt_out(conn: Conn, phone: str, opted_out: bool, at: float) -> None:
    if opted_out:
        await conn.execute(
            "INSERT INTO sms_opt_outs (phone, at) VALUES (%s, %s) ON CONFLICT (phone) DO UPDATE SET at = excluded.at",
            (phone, at),
        )
    else:
        await conn.execute("DELETE FROM sms_opt_outs WHERE phone = %s", (phone,))


async def _op_save_schedule(conn: Conn, alert_id: str, schedule: Schedule) -> None:
    await conn.execute(
        "UPDATE alerts SET next_action_at = %s, backup_rounds = %s, last_backup_at = %s "  # noqa: S608
        f"WHERE alert_id = %s AND state IN {OPEN_SQL}",
        (schedule.next_action_at, schedule.backup_rounds, schedule.last_backup_at, alert_id),
    )


async def _op_give_up(conn: Conn, alert_id: str, at: float) -> AlertRecord | None:
    alert = await _read_alert(conn, alert_id, full=False, lock=True)
    closed = None if alert is None else transitions.given_up(alert)
    if closed is None:
        return None
    await _save_alert_state(conn, closed, closed_at=at)
    cancelled = await _cancel_queued(conn, alert_id, at)
    await _insert_event(conn, EventRecord(alert_id, at, "unacknowledged", {"cancelled": cancelled}))
    # if it carried its track's backup chain, another open alert of the track carries it now: the planner decides
    # which, at once rather than at their next due time
    await conn.execute(
        f"UPDATE alerts SET next_action_at = %s WHERE track_id = %s AND state IN {OPEN_SQL} "  # noqa: S608
        "AND next_action_at > %s",
        (at, closed.track_id, at),
    )
    return closed


async def _insert_event(conn: Conn, event: EventRecord) -> None:
    await conn.execute(
        "INSERT INTO events (alert_id, at, kind, detail_json) VALUES (%s, %s, %s, %s)",
        (event.alert_id, event.at, event.kind, json.dumps(event.detail, ensure_ascii=False)),
    )


async def _op_add_auth_failures(conn: Conn, tallies: list[AuthFailureTally]) -> None:
    if not tallies:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO auth_failures (kind, endpoint, source, bucket, count, first_at, last_at, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (kind, endpoint, source, bucket) DO UPDATE SET "
            "count = auth_failures.count + excluded.count, "
            "first_at = least(auth_failures.first_at, excluded.first_at), "
            "last_at = greatest(auth_failures.last_at, excluded.last_at), reason = excluded.reason",
            [(t.kind, t.endpoint, t.source, t.last_at // AUTH_FAILURE_BUCKET_S * AUTH_FAILURE_BUCKET_S, t.count,
              t.first_at, t.last_at, t.reason) for t in tallies],
        )



async def _op_first_inbound(conn: Conn, channel: str, message_id: str, at: float) -> bool:
    row = await _one(
        conn,
        "INSERT INTO inbound_messages (channel, message_id, at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING "
        "RETURNING 1",
        (channel, message_id, at),
    )
    return row is not None


async def _op_renew_lease(
    conn: Conn, relay_id: str, instance: str, now: float, lease_s: float
) -> tuple[int, str | None, float | None]:
    """The relay's lease renewed; how many relays are alive, and the lease as it was (instance, until)."""
    was = await conn.execute("SELECT instance, lease_until FROM relays WHERE relay_id = %s FOR UPDATE", (relay_id,))
    old = await was.fetchone()
    await conn.execute(
        "INSERT INTO relays (relay_id, instance, started_at, lease_until) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (relay_id) DO UPDATE SET lease_until = excluded.lease_until, instance = excluded.instance, "
        "started_at = CASE WHEN relays.instance = excluded.instance THEN relays.started_at "
        "ELSE excluded.started_at END",
        (relay_id, instance, now, now + lease_s),
    )
    alive = await _one(conn, "SELECT count(*) FROM relays WHERE lease_until > %s", (now,))
    return (int(alive[0]) if alive else 1, *(old if old is not None else (None, None)))


async def _op_take_over(conn: Conn, dead: list[str], relay_id: str, now: float, limit: int) -> list[AlertRecord]:
    # open alerts through the due-time index (every open alert has a due time: its give-up at least), and closed
    # ones with a send marked sending through that partial index: no scan of the whole table
    rows = await _all(
        conn,
        "UPDATE alerts SET claimed_by = %(me)s, next_action_at = CASE WHEN next_action_at IS NOT NULL AND EXISTS "  # noqa: S608
        "(SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.alert_id AND d.state = 'queued' AND d.attempts = 0) "
        "THEN least(next_action_at, %(now)s) ELSE next_action_at END "
        "WHERE alert_id IN (SELECT alert_id FROM ("
        "SELECT alert_id FROM alerts WHERE next_action_at IS NOT NULL AND claimed_by = ANY(%(dead)s) "
        "UNION SELECT d.alert_id FROM deliveries d JOIN alerts a USING (alert_id) "
        "WHERE d.state = 'sending' AND a.claimed_by = ANY(%(dead)s)) t "
        # checked again on the row as it is once its lock is had: another relay's takeover that came first wins
        f"ORDER BY alert_id LIMIT %(limit)s) AND claimed_by = ANY(%(dead)s) RETURNING {ALERT_COLS}",
        {"me": relay_id, "now": now, "dead": dead, "limit": limit},
    )
    # locked in the UPDATE: a relay taking over beside this one waits for these rows, then finds them claimed
    # by a live relay and leaves them
    return await _hydrate(conn, rows)


async def _op_prune(conn: Conn, before: float, batch: int) -> int:
    # Every `at`-like column here is indexed: a batch finds its rows without a scan, and stays small so a big
    # prune never holds locks (and the reports waiting on them) for long.
    counts = [await conn.execute(f"WITH gone AS ({sql} RETURNING 1) SELECT count(*) FROM gone", (before, batch))  # noqa: S608
              for sql in (
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < %s LIMIT %s)",
        "DELETE FROM auth_failures WHERE (kind, endpoint, source, bucket) IN "
        "(SELECT kind, endpoint, source, bucket FROM auth_failures WHERE last_at < %s LIMIT %s)",
        "DELETE FROM inbound_messages WHERE (channel, message_id) IN "
        "(SELECT channel, message_id FROM inbound_messages WHERE at < %s LIMIT %s)",
        "DELETE FROM receipt_refs WHERE (channel, ref, delivery_id) IN "
        "(SELECT channel, ref, delivery_id FROM receipt_refs WHERE at < %s LIMIT %s)",
        # oldest first along the key (the old rows are its first ones): no index on `at` to write at every change
        "DELETE FROM alert_changes WHERE seq IN (SELECT seq FROM alert_changes WHERE at < %s ORDER BY seq LIMIT %s)",
        # a relay gone that long: its claims were taken over long ago (a claim by an id with no row is claimable)
        "DELETE FROM relays WHERE relay_id IN (SELECT relay_id FROM relays WHERE lease_until < %s LIMIT %s)",
    )]
    total = 0
    for cur in counts:
        row = await cur.fetchone()
        total += int(row[0]) if row is not None else 0
    return total


# ---- tracks ---------------------------------------------------------------------------------------------


async def _save_track(conn: Conn, estimate: TrackState, at: float) -> None:
    await conn.execute(
        "INSERT INTO tracks (track_id, estimate_json, opened_at, last_seen, updated_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (track_id) DO UPDATE SET estimate_json = excluded.estimate_json, "
        "last_seen = excluded.last_seen, updated_at = greatest(tracks.updated_at, excluded.updated_at)",
        (estimate.track_id, json.dumps(estimate.to_json(), separators=(",", ":")), at, estimate.last_seen, at),
    )




async def _track_members(conn: Conn, track_ids: list[str]) -> list[Row]:
    if not track_ids:
        return []
    return await _all(
        conn,
        "SELECT track_id, alert_id, operator_id, short_code, state, priority, created_at, desks_json, report_json "
        "FROM alerts WHERE track_id = ANY(%s) ORDER BY track_id, alert_id",
        (track_ids,),
    )


def _tracks(rows: list[Row], member_rows: list[Row]) -> list[TrackRecord]:
    members: dict[str, list[TrackAlert]] = {}
    for r in member_rows:
        members.setdefault(r[0], []).append(
            TrackAlert(r[1], r[2], r[3], AlertState(r[4]), Priority(r[5]), r[6], tuple(json.loads(r[7])),
                       Sighting.of(stored_report(r[8]))))
    out = []
    for row in rows:
        alerts = tuple(members.get(row[0], ()))
        if row[1]:
            estimate = TrackState.from_json(json.loads(row[1]))
        else:  # no estimate stored (an import of alerts from before tracks): its estimate is its reports
            estimate = tracks.rebuild(row[0], [m.sighting for m in alerts]) if alerts else tracks.start(
                Sighting(observed_at=row[2], lat=0.0, lon=0.0), row[0])
        out.append(TrackRecord(row[0], estimate, row[2], row[3], acks_from_json(row[4]), row[5], alerts))
    return out


async def _op_merge_tracks(
    conn: Conn, track_id: str, into: str, estimate: TrackState, desk_id: str, by: str, at: float
) -> None:
    moved = sorted(r[0] for r in await _all(
        conn, "UPDATE alerts SET track_id = %s WHERE track_id = %s RETURNING alert_id", (into, track_id)))
    await conn.execute("UPDATE tracks SET merged_into = %s, updated_at = %s WHERE track_id = %s", (into, at, track_id))
    await _save_track(conn, estimate, at)
    for alert_id in moved:
        await _insert_event(conn, EventRecord(alert_id, at, "track_merged",
                                              {"from": track_id, "into": into, "desk_id": desk_id, "by": by}))


async def _op_split_alert(
    conn: Conn, alert_id: str, old: TrackState, new: TrackState, desk_id: str, by: str, at: float
) -> None:
    await conn.execute("UPDATE alerts SET track_id = %s WHERE alert_id = %s", (new.track_id, alert_id))
    await _save_track(conn, old, at)
    await _save_track(conn, new, at)
    await _insert_event(conn, EventRecord(alert_id, at, "track_split",
                                          {"from": old.track_id, "into": new.track_id, "desk_id": desk_id, "by": by}))


# ---- reading rows into records ------------------------------------------------------------------------



async def _read_alert(conn: Conn, alert_id: str, *, full: bool = True, lock: bool = False) -> AlertRecord | None:
    """`lock`: the row stays locked to the end of the transaction (an operation about to decide on it)."""
    found = await conn.execute(
        f"SELECT {ALERT_COLS} FROM alerts WHERE alert_id = %s" + (" FOR UPDATE" if lock else ""),  # noqa: S608
        (alert_id,),
    )
    if not full:
        ack = await conn.execute(f"SELECT {ACK_COLS} FROM acks WHERE alert_id = %s AND first", (alert_id,))  # noqa: S608
        row, first = await found.fetchone(), await ack.fetchone()
        return None if row is None else alert_row(row, (), ack_row(first) if first else None)
    row = await found.fetchone()
    if row is None:
        return None
    return (await _hydrate(conn, [row]))[0]


async def _hydration(conn: Conn, ids: list[str]) -> tuple[list[Row], list[Row]]:
    """The deliveries and first acks of these alerts (both asked in one round trip)."""
    if not ids:
        return [], []
    deliveries = await conn.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = ANY(%s) ORDER BY desk_id, channel, target",  # noqa: S608
        (ids,),
    )
    acks = await conn.execute(f"SELECT {ACK_COLS} FROM acks WHERE alert_id = ANY(%s) AND first", (ids,))  # noqa: S608
    return await deliveries.fetchall(), await acks.fetchall()


async def _hydrate(conn: Conn, rows: list[Row]) -> list[AlertRecord]:
    return _alerts(rows, *await _hydration(conn, [r[0] for r in rows]))


def _alerts(rows: list[Row], delivery_rows: list[Row], ack_rows: list[Row]) -> list[AlertRecord]:
    deliveries: dict[str, list[DeliveryRecord]] = {r[0]: [] for r in rows}
    for d in delivery_rows:
        deliveries[d[1]].append(delivery_row(d))
    acks = {a[0]: ack_row(a) for a in ack_rows}
    return [alert_row(r, tuple(deliveries[r[0]]), acks.get(r[0])) for r in rows]

