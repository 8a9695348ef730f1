"""The SQLite store: WAL, fsync on every commit, one writer task that batches whatever is queued into one commit.

A burst of reports costs a few fsyncs, not one each. Everything runs on the event loop's thread, the commit's
fsync included (about 0.3 ms here): handing each batch to a thread and back cost more than that on this
2-core machine (measured: a report's commit 0.82 ms through a thread, 0.49 ms inline), and in a burst the
loop has the next batch ready the moment the fsync returns. If the disk stalls, the relay stalls with it;
readiness (`/readyz`) and the watchdog see that.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

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
from relay.store.sqlite_schema import migrate

log = logging.getLogger("relay.store")

T = TypeVar("T")
P = ParamSpec("P")
Op = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True, slots=True)
class _Write:
    op: Op
    done: asyncio.Future[Any]
    # False for outcomes whose loss in a power cut costs at most a repeated send (a delivery marked sent,
    # a receipt): a batch of only those is committed without its own fsync; the next durable commit
    # fsyncs the WAL with them in it.
    durable: bool = True

MAX_BATCH = 2000
_OPEN_SQL = "('pending', 'delivered')"
_TRACK_COLS = "track_id, estimate_json, opened_at, updated_at, acks_json, merged_into"
# The API's heavy reads run in this many threads, each on its own read-only connection (see `_read_off`).
READ_THREADS = 1
# Building records holds the GIL, which the loop needs back at once whenever it wakes: a reader thread rests after
# each read as long as it worked (at most half the GIL for reads, however many clients ask), and the interpreter
# hands the GIL over after 0.5 ms instead of 5 (measured in bench/readers.py: both matter).
READ_REST_RATIO = 1.0
LOOP_SWITCH_INTERVAL_S = 0.0005
READ_BUSY_TIMEOUT_MS = 2000  # a WAL reader waits for a lock only in rare moments (recovery, a WAL restart)
READ_DEADLINE_S = 5.0  # a read running longer is interrupted: StoreUnavailable, not a thread held for ever
HYDRATE_CHUNK = 500  # ids per `IN (...)` when deliveries and acks are read for many alerts



def _read_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """An inline read: any SQLite error surfaces as StoreUnavailable (the scheduler and the callers handle that)."""

    @functools.wraps(fn)
    async def read(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read the store: {exc}") from exc

    return read


class SQLiteStore:
    shared = False  # one relay per file: no claims, leases or change feed (they answer as for a lone relay)
    relay_id = ""

    def __init__(self, path: Path) -> None:
        self._path = path
        # Writes wait here until the writer's next flush: one plain loop callback (not a task woken through a
        # queue) takes everything queued by then into one commit.
        self._pending: list[_Write] = []
        self._flush_scheduled = False
        self._running = False
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._synchronous = ""
        self.commits = 0  # how many fsync'd commits so far (batching shows as commits << writes)
        self._readers: ThreadPoolExecutor | None = None  # started on the first heavy read
        self._reader_conns: list[sqlite3.Connection] = []  # every reader thread's connection, to close at the end
        self._reader_lock = threading.Lock()
        self._reader_local = threading.local()  # .conn: this reader thread's connection; .deadline
        self.last_error: str | None = None

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        store = cls(path)
        store._open()
        return store

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit: accepted means on disk
        conn.execute("PRAGMA temp_store=MEMORY")  # statement journals in memory, not a temp file per write
        self._synchronous = "FULL"
        migrate(conn)
        self._conn = conn

    # ---- the writer ----------------------------------------------------------------------------------

    async def run(self) -> None:
        self._running = True
        self._loop = asyncio.get_running_loop()
        # The flushes run as loop callbacks (see `_write`); one that raised ends the writer here, as it would have
        # ended a writer task.
        self._broken = self._loop.create_future()
        try:
            self._flush()  # what was queued before the writer started
            await self._broken
        finally:
            self._closed = True
            self._running = False
            while self._pending:  # what was queued before the stop is still committed
                self._flush()
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._close_readers()

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                self._commit(batch)
            except BaseException as exc:
                if self._broken is None or self._broken.done() or not self._running:
                    raise
                self._broken.set_exception(exc)
                return

    def _commit(self, batch: list[_Write]) -> None:
        results = self._run_batch([w.op for w in batch], any(w.durable for w in batch))
        for w, result in zip(batch, results, strict=True):
            if w.done.done():
                continue
            if isinstance(result, BaseException):
                w.done.set_exception(result)
            else:
                w.done.set_result(result)

    def _run_batch(self, ops: list[Op], durable: bool) -> list[Any]:
        conn = self._conn
        if conn is None:
            return [StoreUnavailable("store is closed")] * len(ops)
        results: list[Any] = []
        try:
            synchronous = "FULL" if durable else "NORMAL"
            if synchronous != self._synchronous:
                conn.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            conn.execute("BEGIN IMMEDIATE")
            if len(ops) == 1:  # alone in its batch: a failed op rolls back the transaction, no savepoint needed
                try:
                    results.append(ops[0](conn))
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bad op spoils only itself
                    conn.execute("ROLLBACK")
                    results.append(exc)
                self.commits += 1
                self.last_error = None
                return results
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    results.append(op(conn))
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bad op spoils only itself, not the batch
                    conn.execute("ROLLBACK TO op")
                    results.append(exc)
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("rollback failed after a failed commit")
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store commit failed", extra={"event": "store_failed", "error": self.last_error})
            return [StoreUnavailable(f"cannot write to the store: {exc}")] * len(ops)
        self.commits += 1
        self.last_error = None
        return results

    async def _write(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        if self._closed:
            raise StoreUnavailable("store is closed")
        loop = self._loop if self._running and self._loop is not None else asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(op, fut, durable))
        if self._running and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    # ---- reads -------------------------------------------------------------------------------------------
    # Two kinds. What the engine, the dispatcher and the ack paths read (get_alert, due_alerts, next_due_at,
    # find_by_code, ...) runs inline on the writer's connection: small indexed reads that must see the latest
    # commit at once (no write transaction is open between batches), where a hop to a thread and back would cost
    # the report's path more than the read itself. The API's heavy reads (a list of up to 1,000 alerts with their
    # deliveries and acks and decoded reports, an alert's history, the audit log) run in READ_THREADS threads,
    # each with its own read-only connection: WAL lets them read beside the writer, they never hold up the loop,
    # and a read started after a write's `await` returned sees that write (every committed transaction is
    # visible to a read transaction that begins after it). Every read error surfaces as StoreUnavailable.

    def _read(self) -> sqlite3.Connection:
        """The writer's connection, for the inline reads: no write transaction is open between batches."""
        if self._conn is None:
            raise StoreUnavailable("store is closed")
        return self._conn

    async def _read_off(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a reader thread on that thread's read-only connection, in one read transaction."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._readers is None:
            self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="relay-store-read")
            if sys.getswitchinterval() > LOOP_SWITCH_INTERVAL_S:
                sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, self._in_reader, fn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read the store: {exc}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():  # dropped by `_close_readers`
                raise StoreUnavailable("store is closed") from None
            raise

    def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """In a reader thread: one snapshot for the whole of `fn`, interrupted after READ_DEADLINE_S; the rest
        the previous read earned is taken first (so a lone read is answered at once)."""
        local = self._reader_local
        time.sleep(max(0.0, getattr(local, "rest_until", 0.0) - time.monotonic()))
        started = time.monotonic()
        local.deadline = started + READ_DEADLINE_S
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        try:
            if conn is None:
                conn = local.conn = self._open_reader()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # it only read: ending it is all that is left to do
        except sqlite3.Error:
            if conn is not None:
                self._drop_reader(conn)  # whatever went wrong, the next read starts on a fresh connection
            raise
        finally:
            done = time.monotonic()
            local.rest_until = done + (done - started) * READ_REST_RATIO

    def _open_reader(self) -> sqlite3.Connection:
        uri = self._path.resolve().as_uri() + "?mode=ro"
        # check_same_thread=False only so that `_close_readers` may close it once its thread is gone
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {READ_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
            conn.set_progress_handler(lambda: int(time.monotonic() > self._reader_local.deadline), 10_000)
        except sqlite3.Error:
            conn.close()
            raise
        with self._reader_lock:
            self._reader_conns.append(conn)
        return conn

    def _drop_reader(self, conn: sqlite3.Connection) -> None:
        self._reader_local.conn = None
        with self._reader_lock:
            if conn in self._reader_conns:
                self._reader_conns.remove(conn)
        try:
            conn.close()
        except sqlite3.Error:
            log.warning("closing a failed read connection failed")

    def _close_readers(self) -> None:
        """At the end: reads not started are dropped (StoreUnavailable), the one under way finishes (it is bounded),
        then every reader connection is closed."""
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True, cancel_futures=True)
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()

    # ---- alerts --------------------------------------------------------------------------------------

    async def accept(self, new: NewAlert) -> Accepted:
        return await self._write(functools.partial(_op_accept, new=new))

    @_read_errors
    async def get_alert(self, alert_id: str) -> AlertRecord | None:
        return _read_alert(self._read(), alert_id)

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
                where.append(f"a.alert_id {op} ?")
                args.append(bound)
        src = "alerts a"
        if desk_id is not None:
            src = "alert_desks d JOIN alerts a ON a.alert_id = d.alert_id"
            where.append("d.desk_id = ?")
            args.append(desk_id)
        if operator_id is not None:
            where.append("a.operator_id = ?")
            args.append(operator_id)
        if states is not None:
            where.append(f"a.state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        cols = ", ".join(f"a.{c.strip()}" for c in ALERT_COLS.split(","))
        sql = f"SELECT {cols} FROM {src}"  # noqa: S608 - only fixed fragments, values are bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY a.alert_id {'DESC' if after_id is None else 'ASC'} LIMIT ?"
        args.append(limit)
        return await self._read_off(lambda conn: _hydrate(conn, conn.execute(sql, args).fetchall()))

    @_read_errors
    async def due_alerts(self, now: float, limit: int) -> list[AlertRecord]:
        conn = self._read()
        rows = conn.execute(
            f"SELECT {ALERT_COLS} FROM alerts WHERE next_action_at <= ? AND state IN {_OPEN_SQL} "  # noqa: S608
            "ORDER BY next_action_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return _hydrate(conn, rows)

    @_read_errors
    async def next_due_at(self, now: float | None = None) -> float | None:
        row = self._read().execute(
            "SELECT min(next_action_at) FROM alerts WHERE next_action_at IS NOT NULL"
        ).fetchone()
        return None if row is None else row[0]

    @_read_errors
    async def alerts_with_queued(self, channel: str, limit: int, now: float | None = None) -> list[AlertRecord]:
        conn = self._read()
        rows = conn.execute(
            f"SELECT {ALERT_COLS} FROM alerts WHERE state IN {_OPEN_SQL} AND alert_id IN "  # noqa: S608
            "(SELECT alert_id FROM deliveries WHERE state = 'queued' AND channel = ?) ORDER BY alert_id LIMIT ?",
            (channel, limit),
        ).fetchall()
        return _hydrate(conn, rows)

    @_read_errors
    async def get_alerts(self, alert_ids: Sequence[str]) -> list[AlertRecord]:
        conn = self._read()
        ids = list(alert_ids)
        rows = conn.execute(
            f"SELECT {ALERT_COLS} FROM alerts WHERE alert_id IN (SELECT value FROM json_each(?)) "  # noqa: S608
            "ORDER BY alert_id", (json.dumps(ids),),
        ).fetchall()
        return _hydrate(conn, rows)

    # ---- several relays: one relay per SQLite file, so each answers as for a lone relay ----------------------

    async def renew_lease(self, now: float) -> Lease:
        return Lease(alive=1, lapsed=False, other_instance=False)

    async def take_over(self, now: float, limit: int) -> list[AlertRecord]:
        return []

    async def last_change(self) -> int:
        return 0

    async def changes_after(self, seq: int, missing: Sequence[int], limit: int) -> list[AlertChange]:
        return []

    async def wait_for_change(self, within_s: float) -> None:
        await asyncio.sleep(within_s)

    @_read_errors
    async def count_open(self) -> int:
        row = self._read().execute(f"SELECT count(*) FROM alerts WHERE state IN {_OPEN_SQL}").fetchone()  # noqa: S608
        return int(row[0])

    async def save_schedule(self, alert_id: str, schedule: Schedule) -> None:
        await self._write(functools.partial(_op_save_schedule, alert_id=alert_id, schedule=schedule))

    async def give_up(self, alert_id: str, at: float) -> AlertRecord | None:
        return await self._write(functools.partial(_op_give_up, alert_id=alert_id, at=at))

    # ---- deliveries and acks -------------------------------------------------------------------------

    async def start_attempt(self, delivery_id: str, at: float) -> DeliveryRecord | None:
        return await self._write(functools.partial(_op_start_attempt, delivery_id=delivery_id, at=at))

    async def finish_attempt(
        self, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None = None,
        refs: Sequence[str] = (), channel: str = "",
    ) -> DeliveryRecord | None:
        return await self._write(
            functools.partial(_op_finish_attempt, delivery_id=delivery_id, outcome=outcome, at=at, error=error,
                              refs=tuple(refs), channel=channel),
            durable=outcome is not AttemptOutcome.SENT,
        )

    async def mark_delivered(self, alert_id: str, desk_id: str, channel: str, at: float) -> ReceiptResult | None:
        return await self._write(
            functools.partial(_op_mark_delivered, alert_id=alert_id, desk_id=desk_id, channel=channel, at=at),
            durable=False,
        )

    async def mark_shown(self, alert_id: str, desk_id: str, at: float) -> ReceiptResult | None:
        return await self._write(functools.partial(_op_mark_shown, alert_id=alert_id, desk_id=desk_id, at=at),
                                 durable=False)

    async def record_ack(self, ack: AckRecord) -> AckResult | None:
        return await self._write(functools.partial(_op_record_ack, ack=ack))

    async def start_backup_round(
        self, alert_id: str, schedule: Schedule, deliveries: Sequence[DeliveryRecord], at: float
    ) -> list[DeliveryRecord] | None:
        return await self._write(functools.partial(
            _op_start_backup_round, alert_id=alert_id, schedule=schedule, deliveries=list(deliveries), at=at
        ))

    async def delivery_report(
        self, delivery_id: str, at: float, *, delivered: bool, error: str | None = None
    ) -> ReceiptResult | None:
        return await self._write(
            functools.partial(_op_delivery_report, delivery_id=delivery_id, at=at, delivered=delivered, error=error),
            durable=False,
        )

    @_read_errors
    async def alerts_with_sending(self, limit: int, now: float | None = None) -> list[AlertRecord]:
        conn = self._read()
        # closed ones too: the dispatcher sends what is still worth sending and cancels the rest (a restart must
        # not leave a delivery "sending" for ever)
        rows = conn.execute(
            f"SELECT {ALERT_COLS} FROM alerts WHERE alert_id IN "  # noqa: S608
            "(SELECT alert_id FROM deliveries WHERE state = 'sending') ORDER BY alert_id LIMIT ?",
            (limit,),
        ).fetchall()
        return _hydrate(conn, rows)

    @_read_errors
    async def deliveries_by_ref(self, channel: str, refs: Sequence[str]) -> list[str]:
        conn = self._read()
        for ref in refs:
            rows = conn.execute(
                "SELECT delivery_id, at FROM receipt_refs WHERE channel = ? AND ref = ?", (channel, ref)
            ).fetchall()
            if rows:
                return latest_send(rows)
        return []

    async def find_by_code(self, code: str, now: float) -> AlertRecord | None:
        conn = self._read()
        row = conn.execute(
            f"SELECT alert_id FROM alerts WHERE short_code = ? AND state IN {_OPEN_SQL}", (code,)  # noqa: S608
        ).fetchone() or conn.execute(
            "SELECT alert_id FROM alerts WHERE short_code = ? AND state = 'unacknowledged' AND closed_at > ? "
            "ORDER BY alert_id DESC LIMIT 1",
            (code, now - 86400),
        ).fetchone()
        return None if row is None else _read_alert(conn, row[0])

    # ---- tracks ----------------------------------------------------------------------------------------

    async def get_track(self, track_id: str) -> TrackRecord | None:
        return await self._read_off(lambda conn: _read_track(conn, track_id))

    async def list_tracks(
        self, *, since: float | None, limit: int, operator_id: str | None = None, desk_id: str | None = None
    ) -> list[TrackRecord]:
        where = ["merged_into IS NULL"]
        args: list[object] = []
        if since is not None:
            where.append("updated_at >= ?")
            args.append(since)
        if operator_id is not None:
            where.append("EXISTS (SELECT 1 FROM alerts a WHERE a.track_id = t.track_id AND a.operator_id = ?)")
            args.append(operator_id)
        if desk_id is not None:
            where.append("EXISTS (SELECT 1 FROM alerts a JOIN alert_desks d ON d.alert_id = a.alert_id "
                         "WHERE a.track_id = t.track_id AND d.desk_id = ?)")
            args.append(desk_id)
        sql = (f"SELECT {_TRACK_COLS} FROM tracks t WHERE {' AND '.join(where)} "  # noqa: S608 - fixed fragments
               "ORDER BY updated_at DESC LIMIT ?")
        args.append(limit)
        return await self._read_off(lambda conn: [_track(conn, r) for r in conn.execute(sql, args).fetchall()])

    @_read_errors
    async def recent_tracks(self, since: float) -> list[TrackRecord]:
        conn = self._read()
        rows = conn.execute(
            f"SELECT {_TRACK_COLS} FROM tracks WHERE last_seen >= ? AND merged_into IS NULL",  # noqa: S608
            (since,),
        ).fetchall()
        return [_track(conn, r) for r in rows]

    @_read_errors
    async def merged_tracks(self, since: float) -> list[TrackRecord]:
        conn = self._read()
        rows = conn.execute(
            f"SELECT {_TRACK_COLS} FROM tracks WHERE updated_at >= ? AND merged_into IS NOT NULL",  # noqa: S608
            (since,),
        ).fetchall()
        return [_track(conn, r) for r in rows]

    @_read_errors
    async def open_in_track(self, track_id: str) -> OpenInTrack:
        conn = self._read()
        row = conn.execute("SELECT opened_at FROM tracks WHERE track_id = ?", (track_id,)).fetchone()
        rows = conn.execute(
            _OPEN_IN_TRACK_SQL, (track_id,),
        ).fetchall()
        opened_at = row[0] if row is not None else math.inf
        return OpenInTrack(opened_at, tuple(OpenAlert(r[0], r[1], Priority(r[2]), r[3]) for r in rows))

    async def ack_track(self, track_id: str, ack: AckRecord) -> list[AckResult]:
        return await self._write(functools.partial(_op_ack_track, track_id=track_id, ack=ack))

    async def merge_tracks(
        self, track_id: str, into: str, estimate: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        await self._write(functools.partial(_op_merge_tracks, track_id=track_id, into=into, estimate=estimate,
                                            desk_id=desk_id, by=by, at=at))

    async def split_alert(
        self, alert_id: str, old: TrackState, new: TrackState, desk_id: str, by: str, at: float
    ) -> None:
        await self._write(functools.partial(_op_split_alert, alert_id=alert_id, old=old, new=new, desk_id=desk_id,
                                            by=by, at=at))

    async def set_sms_opt_out(self, phone: str, opted_out: bool, at: float) -> None:
        await self._write(functools.partial(_op_set_opt_out, phone=phone, opted_out=opted_out, at=at))

    # ---- history and health --------------------------------------------------------------------------

    async def add_event(self, event: EventRecord) -> None:
        await self._write(functools.partial(_insert_event, event=event))

    async def events(self, alert_id: str) -> list[EventRecord]:
        return await self._read_off(functools.partial(_events, alert_id=alert_id))

    async def audit_log(self, limit: int) -> list[EventRecord]:
        def read(conn: sqlite3.Connection) -> list[EventRecord]:  # in a reader thread (see _read_off)
            marks = ",".join("?" * len(AUDIT_KINDS))
            rows = conn.execute(
                f"SELECT alert_id, at, kind, detail_json FROM events WHERE kind IN ({marks}) "  # noqa: S608
                "ORDER BY id DESC LIMIT ?",
                (*AUDIT_KINDS, limit),
            ).fetchall()
            records = [EventRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]
            tallies = conn.execute(
                "SELECT kind, endpoint, source, count, first_at, last_at, reason FROM auth_failures "
                "ORDER BY last_at DESC LIMIT ?", (limit,),
            ).fetchall()
            records += [tally_event(AuthFailureTally(*t)) for t in tallies]
            return sorted(records, key=lambda e: e.at, reverse=True)[:limit]

        return await self._read_off(read)

    async def add_auth_failures(self, tallies: Sequence[AuthFailureTally]) -> None:
        # Losing these in a power cut loses a count, never a report: no fsync of their own.
        await self._write(functools.partial(_op_add_auth_failures, tallies=list(tallies)), durable=False)

    async def first_inbound(self, channel: str, message_id: str, at: float) -> bool:
        return await self._write(functools.partial(_op_first_inbound, channel=channel, message_id=message_id, at=at))

    async def prune(self, before: float, batch: int) -> int:
        return await self._write(functools.partial(_op_prune, before=before, batch=batch), durable=False)

    async def check_writable(self) -> None:
        await self._write(_op_heartbeat)


# ---- operations run inside the writer's transaction ---------------------------------------------------


def _op_accept(conn: sqlite3.Connection, new: NewAlert) -> Accepted:
    a = new.alert
    row = conn.execute(
        "SELECT content_sha256, alert_id FROM alerts WHERE operator_id = ? AND report_id = ?",
        (a.operator_id, a.report_id),
    ).fetchone()
    if row is not None:
        existing = _read_alert(conn, row[1])
        assert existing is not None
        outcome = AcceptOutcome.REPLAY if row[0] == new.content_sha256 else AcceptOutcome.CONFLICT
        return Accepted(outcome, existing)
    code = transitions.free_short_code(a.short_code, functools.partial(_code_taken, conn))
    conn.execute(
        "INSERT INTO alerts (alert_id, operator_id, report_id, content_sha256, report_json, desks_json, "
        "short_code, priority, stale, state, source, created_at, next_action_at, backup_rounds, last_backup_at, "
        "track_id, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            a.alert_id, a.operator_id, a.report_id, new.content_sha256,
            json.dumps(a.report.as_submitted(), ensure_ascii=False, separators=(",", ":")), json.dumps(a.desks),
            code, a.priority, int(a.stale), a.state.value, new.source, a.created_at, a.next_action_at,
            a.backup_rounds, a.last_backup_at, a.track_id or a.alert_id, None if a.ack is None else a.created_at,
        ),
    )
    _save_track(conn, new.track_estimate(), a.created_at)
    if a.ack is not None:  # it joined a track its desk has acknowledged
        _insert_ack(conn, a.ack, first=True)
        _insert_event(conn, EventRecord(a.alert_id, a.created_at, "acknowledged", {**ack_detail(a.ack),
                                                                                  "via_track": True}))
    conn.executemany(
        "INSERT INTO alert_desks (desk_id, alert_id) VALUES (?, ?)", [(desk, a.alert_id) for desk in a.desks]
    )
    _op_add_deliveries(conn, a.deliveries, a.created_at)
    # No "accepted" row in events: the alert row itself records it (see `events`), one index write fewer.
    return Accepted(AcceptOutcome.CREATED, a if code == a.short_code else replace(a, short_code=code))


def _code_taken(conn: sqlite3.Connection, code: str) -> bool:
    return conn.execute(
        f"SELECT 1 FROM alerts WHERE short_code = ? AND state IN {_OPEN_SQL}", (code,)  # noqa: S608
    ).fetchone() is not None


def _op_add_deliveries(conn: sqlite3.Connection, deliveries: Iterable[DeliveryRecord], at: float) -> None:
    conn.executemany(
        f"INSERT INTO deliveries ({DELIVERY_COLS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
        [
            (d.delivery_id, d.alert_id, d.desk_id, d.channel, d.target, d.state.value, d.attempts,
             d.sent_at, d.delivered_at, d.error, int(d.permanent), d.attempted_at, at)
            for d in deliveries
        ],
    )


_DELIVERY_AND_ALERT_STATE_SQL = (
    f"SELECT {', '.join('d.' + c.strip() for c in DELIVERY_COLS.split(','))}, a.state "  # noqa: S608
    "FROM deliveries d JOIN alerts a ON a.alert_id = d.alert_id WHERE d.delivery_id = ?"
)


def _delivery_and_alert_state(
    conn: sqlite3.Connection, delivery_id: str
) -> tuple[DeliveryRecord, AlertState] | None:
    row = conn.execute(_DELIVERY_AND_ALERT_STATE_SQL, (delivery_id,)).fetchone()
    if row is None:
        return None
    return delivery_row(row[:-1]), AlertState(row[-1])


def _update_delivery(conn: sqlite3.Connection, d: DeliveryRecord, at: float) -> DeliveryRecord:
    conn.execute(
        "UPDATE deliveries SET state = ?, attempts = ?, sent_at = ?, delivered_at = ?, error = ?, permanent = ?, "
        "attempted_at = ?, updated_at = ? WHERE delivery_id = ?",
        (d.state.value, d.attempts, d.sent_at, d.delivered_at, d.error, int(d.permanent), d.attempted_at, at,
         d.delivery_id),
    )
    return d


def _op_start_attempt(conn: sqlite3.Connection, delivery_id: str, at: float) -> DeliveryRecord | None:
    found = _delivery_and_alert_state(conn, delivery_id)
    if found is None:
        return None
    changed = transitions.attempt_started(*found)
    if changed is None:
        return None
    _update_delivery(conn, changed, at)
    return changed if changed.state is DeliveryState.SENDING else None


def _op_finish_attempt(
    conn: sqlite3.Connection, delivery_id: str, outcome: AttemptOutcome, at: float, error: str | None,
    refs: tuple[str, ...] = (), channel: str = "",
) -> DeliveryRecord | None:
    found = _delivery_and_alert_state(conn, delivery_id)
    if found is None:
        return None
    changed = transitions.attempt_finished(*found, outcome, at, error)
    if changed is None:
        return None
    if refs and outcome is AttemptOutcome.SENT:
        conn.executemany("INSERT OR REPLACE INTO receipt_refs (channel, ref, delivery_id, at) VALUES (?, ?, ?, ?)",
                         [(channel, ref, delivery_id, at) for ref in refs])
    if transitions.replan_now(changed):  # in the same commit: a crash cannot lose the failover
        conn.execute(
            f"UPDATE alerts SET next_action_at = ? WHERE alert_id = ? AND state IN {_OPEN_SQL} "  # noqa: S608
            "AND (next_action_at IS NULL OR next_action_at > ?)",
            (at, changed.alert_id, at),
        )
    return _update_delivery(conn, changed, at)


def _op_mark_delivered(
    conn: sqlite3.Connection, alert_id: str, desk_id: str, channel: str, at: float, target: str | None = None
) -> ReceiptResult | None:
    rows = [
        delivery_row(r) for r in conn.execute(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = ? AND desk_id = ? AND channel = ?",  # noqa: S608
            (alert_id, desk_id, channel),
        )
        if target is None or r[4] == target
    ]
    if not rows:
        return None
    for d in rows:
        changed = transitions.receipt(d, at)
        if changed is not None:
            _update_delivery(conn, changed, at)
    alert = _read_alert(conn, alert_id, full=False)
    assert alert is not None
    now_delivered = transitions.delivered(alert)
    if now_delivered is None:
        return ReceiptResult(alert, newly_delivered=False)
    _save_alert_state(conn, now_delivered, closed_at=None)
    _insert_event(conn, EventRecord(alert_id, at, "delivered", {"desk_id": desk_id, "channel": channel}))
    return ReceiptResult(now_delivered, newly_delivered=True)


def _op_mark_shown(conn: sqlite3.Connection, alert_id: str, desk_id: str, at: float) -> ReceiptResult | None:
    alert = _read_alert(conn, alert_id, full=False)
    if alert is None:
        return None
    delivery_id = f"{alert_id}.{desk_id}.{WEB_CHANNEL}"
    if conn.execute("SELECT 1 FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone() is not None:
        return ReceiptResult(alert, newly_delivered=False, newly_shown=False)
    _op_add_deliveries(conn, [transitions.shown_on_web(delivery_id, alert_id, desk_id, at)], at)
    now_delivered = transitions.delivered(alert)
    if now_delivered is None:
        return ReceiptResult(alert, newly_delivered=False)
    _save_alert_state(conn, now_delivered, closed_at=None)
    _insert_event(conn, EventRecord(alert_id, at, "delivered", {"desk_id": desk_id, "channel": WEB_CHANNEL}))
    return ReceiptResult(now_delivered, newly_delivered=True)


def _op_record_ack(conn: sqlite3.Connection, ack: AckRecord) -> AckResult | None:
    alert = _read_alert(conn, ack.alert_id, full=False)
    if alert is None:
        return None
    closed = transitions.acknowledged(alert, ack)
    _insert_ack(conn, ack, first=closed is not None)
    if closed is None:
        _insert_event(conn, EventRecord(ack.alert_id, ack.at, "duplicate_ack", ack_detail(ack)))
        return AckResult(first=False, alert=alert)
    first = _close_acked(conn, alert, closed)
    others = _op_ack_track(conn, alert.track_id, ack)
    return replace(first, track=tuple(others))


def _insert_ack(conn: sqlite3.Connection, ack: AckRecord, *, first: bool) -> None:
    conn.execute(
        "INSERT INTO acks (alert_id, desk_id, channel, by, at, latency_s, first, source, via_track) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ack.alert_id, ack.desk_id, ack.channel, ack.by, ack.at, ack.latency_s, int(first), ack.source,
         int(ack.via_track)),
    )


def _close_acked(conn: sqlite3.Connection, alert: AlertRecord, closed: AlertRecord) -> AckResult:
    ack = closed.ack
    assert ack is not None
    _save_alert_state(conn, closed, closed_at=ack.at)
    cancelled = _cancel_queued(conn, ack.alert_id, ack.at)
    detail = {**ack_detail(ack), "cancelled": cancelled, **({"via_track": True} if ack.via_track else {})}
    _insert_event(conn, EventRecord(ack.alert_id, ack.at, "acknowledged", detail))
    return AckResult(first=True, alert=closed, was_open=alert.state in OPEN_ALERT_STATES, cancelled=cancelled)


def _op_ack_track(conn: sqlite3.Connection, track_id: str, ack: AckRecord) -> list[AckResult]:
    """The rest of the track acknowledged with `ack` (see transitions.track_acks), and the ack kept on the track
    for its later alerts; the results of the alerts it closed."""
    rows = conn.execute(
        f"SELECT {ALERT_COLS} FROM alerts WHERE track_id = ? AND state != 'acknowledged' ORDER BY alert_id",  # noqa: S608
        (track_id,),
    ).fetchall()
    alerts = [alert_row(r, (), None) for r in rows]
    results = []
    for closed in transitions.track_acks(ack, alerts):
        assert closed.ack is not None
        _insert_ack(conn, closed.ack, first=True)
        before = next(a for a in alerts if a.alert_id == closed.alert_id)
        results.append(_close_acked(conn, before, closed))
    # the desk's first ack of the track is kept for its later alerts (json_set's "$." path: the key is quoted)
    conn.execute(
        "UPDATE tracks SET acks_json = CASE WHEN json_type(acks_json, ?) IS NULL THEN json_set(acks_json, ?, json(?)) "
        "ELSE acks_json END, updated_at = max(updated_at, ?) WHERE track_id = ?",
        (_desk_path(ack.desk_id), _desk_path(ack.desk_id), json.dumps(ack_json(ack), ensure_ascii=False), ack.at,
         track_id),
    )
    return results


def _cancel_queued(conn: sqlite3.Connection, alert_id: str, at: float) -> int:
    queued = [
        delivery_row(r) for r in conn.execute(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = ? AND state = 'queued'", (alert_id,)  # noqa: S608
        )
    ]
    cancelled = transitions.cancel_queued(queued)
    for d in cancelled:
        _update_delivery(conn, d, at)
    return len(cancelled)


def _save_alert_state(conn: sqlite3.Connection, alert: AlertRecord, *, closed_at: float | None) -> None:
    conn.execute(
        "UPDATE alerts SET state = ?, next_action_at = ?, closed_at = coalesce(?, closed_at) WHERE alert_id = ?",
        (alert.state.value, alert.next_action_at, closed_at, alert.alert_id),
    )


def _op_start_backup_round(
    conn: sqlite3.Connection, alert_id: str, schedule: Schedule, deliveries: list[DeliveryRecord], at: float
) -> list[DeliveryRecord] | None:
    state = conn.execute("SELECT state FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
    if state is None or AlertState(state[0]) not in OPEN_ALERT_STATES:
        return None
    _op_save_schedule(conn, alert_id, schedule)
    existing = {
        r[0]: delivery_row(r)
        for r in conn.execute(f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id = ?", (alert_id,))  # noqa: S608
    }
    opted_out = {("sms", r[0]) for r in conn.execute("SELECT phone FROM sms_opt_outs")}
    round_ = transitions.backup_round(existing, deliveries, opted_out, at)
    _op_add_deliveries(conn, round_.created, at)
    for d in round_.changed:
        _update_delivery(conn, d, at)
    # A delivery's sent_at is its first send; every round is here, in the alert's history.
    _insert_event(conn, EventRecord(alert_id, at, "backup_round", {
        "round": schedule.backup_rounds, "targets": [f"{d.channel}:{d.target}" for d in round_.to_send]}))
    return round_.to_send


def _op_delivery_report(
    conn: sqlite3.Connection, delivery_id: str, at: float, delivered: bool, error: str | None
) -> ReceiptResult | None:
    row = conn.execute(f"SELECT {DELIVERY_COLS} FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    d = delivery_row(row)
    if delivered:
        return _op_mark_delivered(conn, d.alert_id, d.desk_id, d.channel, at, target=d.target)
    changed = transitions.undelivered(d, error)
    if changed is not None:
        _update_delivery(conn, changed, at)
    alert = _read_alert(conn, d.alert_id, full=False)
    return None if alert is None else ReceiptResult(alert, newly_delivered=False)


def _op_set_opt_out(conn: sqlite3.Connection, phone: str, opted_out: bool, at: float) -> None:
    if opted_out:
        conn.execute("INSERT OR REPLACE INTO sms_opt_outs (phone, at) VALUES (?, ?)", (phone, at))
    else:
        conn.execute("DELETE FROM sms_opt_outs WHERE phone = ?", (phone,))


def _op_save_schedule(conn: sqlite3.Connection, alert_id: str, schedule: Schedule) -> None:
    conn.execute(
        f"UPDATE alerts SET next_action_at = ?, backup_rounds = ?, last_backup_at = ? "  # noqa: S608
        f"WHERE alert_id = ? AND state IN {_OPEN_SQL}",
        (schedule.next_action_at, schedule.backup_rounds, schedule.last_backup_at, alert_id),
    )


def _op_give_up(conn: sqlite3.Connection, alert_id: str, at: float) -> AlertRecord | None:
    alert = _read_alert(conn, alert_id, full=False)
    closed = None if alert is None else transitions.given_up(alert)
    if closed is None:
        return None
    _save_alert_state(conn, closed, closed_at=at)
    cancelled = _cancel_queued(conn, alert_id, at)
    _insert_event(conn, EventRecord(alert_id, at, "unacknowledged", {"cancelled": cancelled}))
    # if it carried its track's backup chain, another open alert of the track carries it now: the planner decides
    # which, at once rather than at their next due time
    conn.execute(
        f"UPDATE alerts SET next_action_at = ? WHERE track_id = ? AND state IN {_OPEN_SQL} "  # noqa: S608
        "AND next_action_at > ?",
        (at, closed.track_id, at),
    )
    return closed


def _insert_event(conn: sqlite3.Connection, event: EventRecord) -> None:
    conn.execute(
        "INSERT INTO events (alert_id, at, kind, detail_json) VALUES (?, ?, ?, ?)",
        (event.alert_id, event.at, event.kind, json.dumps(event.detail, ensure_ascii=False)),
    )


def _op_add_auth_failures(conn: sqlite3.Connection, tallies: list[AuthFailureTally]) -> None:
    conn.executemany(
        "INSERT INTO auth_failures (kind, endpoint, source, bucket, count, first_at, last_at, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, endpoint, source, bucket) DO UPDATE SET "
        "count = count + excluded.count, first_at = min(first_at, excluded.first_at), "
        "last_at = max(last_at, excluded.last_at), reason = excluded.reason",
        [(t.kind, t.endpoint, t.source, t.last_at // AUTH_FAILURE_BUCKET_S * AUTH_FAILURE_BUCKET_S, t.count,
          t.first_at, t.last_at, t.reason) for t in tallies],
    )


def _op_first_inbound(conn: sqlite3.Connection, channel: str, message_id: str, at: float) -> bool:
    cur = conn.execute(
        "INSERT INTO inbound_messages (channel, message_id, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (channel, message_id, at),
    )
    return cur.rowcount == 1


def _op_prune(conn: sqlite3.Connection, before: float, batch: int) -> int:
    # Every `at`-like column here is indexed: a batch finds its rows without a scan, and stays small so a big
    # prune never holds the writer (and the reports queued behind it) for long.
    return sum(conn.execute(sql, (before, batch)).rowcount for sql in (
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? LIMIT ?)",
        "DELETE FROM auth_failures WHERE (kind, endpoint, source, bucket) IN "
        "(SELECT kind, endpoint, source, bucket FROM auth_failures WHERE last_at < ? LIMIT ?)",
        "DELETE FROM inbound_messages WHERE (channel, message_id) IN "
        "(SELECT channel, message_id FROM inbound_messages WHERE at < ? LIMIT ?)",
        "DELETE FROM receipt_refs WHERE (channel, ref, delivery_id) IN "
        "(SELECT channel, ref, delivery_id FROM receipt_refs WHERE at < ? LIMIT ?)",
    ))


def _op_heartbeat(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE heartbeat SET at = ? WHERE id = 1", (time.time(),))


# ---- tracks ---------------------------------------------------------------------------------------------


def _save_track(conn: sqlite3.Connection, estimate: TrackState, at: float) -> None:
    conn.execute(
        "INSERT INTO tracks (track_id, estimate_json, opened_at, last_seen, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (track_id) DO UPDATE SET estimate_json = excluded.estimate_json, "
        "last_seen = excluded.last_seen, updated_at = max(updated_at, excluded.updated_at)",
        (estimate.track_id, json.dumps(estimate.to_json(), separators=(",", ":")), at, estimate.last_seen, at),
    )


def _desk_path(desk_id: str) -> str:
    return "$." + json.dumps(desk_id)  # a desk id is 1-64 of A-Za-z0-9._- (config): quoted, a dot stays in the key


_OPEN_IN_TRACK_SQL = (
    "SELECT alert_id, short_code, priority, created_at FROM alerts "  # noqa: S608 - a fixed fragment
    f"WHERE track_id = ? AND state IN {_OPEN_SQL} ORDER BY alert_id"
)
_TRACK_ALERT_SQL = (
    "SELECT alert_id, operator_id, short_code, state, priority, created_at, desks_json, report_json "
    "FROM alerts WHERE track_id = ? ORDER BY alert_id"
)


def _track_alerts(conn: sqlite3.Connection, track_id: str) -> tuple[TrackAlert, ...]:
    return tuple(
        TrackAlert(r[0], r[1], r[2], AlertState(r[3]), Priority(r[4]), r[5], tuple(json.loads(r[6])),
                   Sighting.of(stored_report(r[7])))
        for r in conn.execute(_TRACK_ALERT_SQL, (track_id,))
    )


def _track(conn: sqlite3.Connection, row: Sequence[Any]) -> TrackRecord:
    members = _track_alerts(conn, row[0])
    if row[1]:
        estimate = TrackState.from_json(json.loads(row[1]))
    else:  # an alert from before tracks were stored: its estimate is its report
        estimate = tracks.rebuild(row[0], [m.sighting for m in members]) if members else tracks.start(
            Sighting(observed_at=row[2], lat=0.0, lon=0.0), row[0])
    return TrackRecord(row[0], estimate, row[2], row[3], acks_from_json(row[4]), row[5], members)


def _read_track(conn: sqlite3.Connection, track_id: str) -> TrackRecord | None:
    row = conn.execute(f"SELECT {_TRACK_COLS} FROM tracks WHERE track_id = ?", (track_id,)).fetchone()  # noqa: S608
    return None if row is None else _track(conn, row)


def _op_merge_tracks(
    conn: sqlite3.Connection, track_id: str, into: str, estimate: TrackState, desk_id: str, by: str, at: float
) -> None:
    moved = [r[0] for r in conn.execute("SELECT alert_id FROM alerts WHERE track_id = ?", (track_id,))]
    conn.execute("UPDATE alerts SET track_id = ? WHERE track_id = ?", (into, track_id))
    conn.execute("UPDATE tracks SET merged_into = ?, updated_at = ? WHERE track_id = ?", (into, at, track_id))
    _save_track(conn, estimate, at)
    for alert_id in moved:
        _insert_event(conn, EventRecord(alert_id, at, "track_merged",
                                        {"from": track_id, "into": into, "desk_id": desk_id, "by": by}))


def _op_split_alert(
    conn: sqlite3.Connection, alert_id: str, old: TrackState, new: TrackState, desk_id: str, by: str, at: float
) -> None:
    conn.execute("UPDATE alerts SET track_id = ? WHERE alert_id = ?", (new.track_id, alert_id))
    _save_track(conn, old, at)
    _save_track(conn, new, at)
    _insert_event(conn, EventRecord(alert_id, at, "track_split",
                                    {"from": old.track_id, "into": new.track_id, "desk_id": desk_id, "by": by}))


# ---- reading rows into records ------------------------------------------------------------------------


def _events(conn: sqlite3.Connection, alert_id: str) -> list[EventRecord]:
    accepted = conn.execute("SELECT created_at, source FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
    if accepted is None:
        return []
    rows = conn.execute(
        "SELECT alert_id, at, kind, detail_json FROM events WHERE alert_id = ? ORDER BY id", (alert_id,)
    ).fetchall()
    return [EventRecord(alert_id, accepted[0], "accepted", {"source": accepted[1]})] + [
        EventRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows
    ]


def _read_alert(conn: sqlite3.Connection, alert_id: str, *, full: bool = True) -> AlertRecord | None:
    row = conn.execute(f"SELECT {ALERT_COLS} FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    if not full:
        ack = conn.execute(
            f"SELECT {ACK_COLS} FROM acks WHERE alert_id = ? AND first = 1", (alert_id,)  # noqa: S608
        ).fetchone()
        return alert_row(row, (), ack_row(ack) if ack else None)
    return _hydrate(conn, [row])[0]


def _hydrate(conn: sqlite3.Connection, rows: list[Any]) -> list[AlertRecord]:
    if not rows:
        return []
    ids = [r[0] for r in rows]
    deliveries: dict[str, list[DeliveryRecord]] = {i: [] for i in ids}
    acks: dict[str, AckRecord] = {}
    for at in range(0, len(ids), HYDRATE_CHUNK):
        chunk = ids[at:at + HYDRATE_CHUNK]
        marks = ",".join("?" * len(chunk))
        for d in conn.execute(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE alert_id IN ({marks}) "  # noqa: S608
            "ORDER BY desk_id, channel, target",
            chunk,
        ):
            deliveries[d[1]].append(delivery_row(d))
        for a in conn.execute(
            f"SELECT {ACK_COLS} FROM acks WHERE alert_id IN ({marks}) AND first = 1", chunk  # noqa: S608
        ):
            acks[a[0]] = ack_row(a)
    return [alert_row(r, tuple(deliveries[r[0]]), acks.get(r[0])) for r in rows]
