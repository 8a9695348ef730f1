"""No statement the relay runs while it works reads a whole table: each one finds its rows by an index.

The deliveries of one alert were read with `WHERE alert_id = ?` on a table keyed by delivery_id: a scan of every
delivery ever kept, on every backup round, ack, give-up and alert read. The relay grew slower with each alert it
kept (the ten-minute hostile soak found its core full of it). This runs the engine's real work (escalation,
failover, acks, give-up, a restart, the API's reads, the retention prune) on the real store with every SQL
statement traced, asks SQLite for the plan of each, and fails on a full scan.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from relay.domain.states import AlertState
from relay.domain.tracks import TrackParams
from relay.store.sqlite_schema import migrate
from tests.support.engine_harness import EngineHarness, store_file

BIG_TABLES = {"alerts", "deliveries", "acks", "events", "alert_desks", "auth_failures", "inbound_messages", "tracks"}

# Statements allowed to scan, and why they may.
ALLOWED = {
    # `SELECT count(*)` of open alerts: once at start (the open-alerts gauge is kept in memory afterwards)
    "count_open": re.compile(r"SELECT count\(\*\) FROM alerts WHERE state IN"),
    # deliveries a previous run left "sending": once at start, before anything else is sent
    "alerts_with_sending": re.compile(r"WHERE alert_id IN \(SELECT alert_id FROM deliveries WHERE state = 'sending'\)"),
    # the newest failed authentications: walks the index on last_at from the end and stops at the LIMIT
    "audit_auth_failures": re.compile(r"FROM auth_failures ORDER BY last_at DESC LIMIT"),
    # migration 6: every alert stored before tracks becomes a track of its own, once
    "migration_6": re.compile(r"UPDATE alerts SET track_id = alert_id$|SELECT alert_id, '', created_at, created_at"),
}


async def test_no_statement_on_the_relay_s_paths_scans_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: set[str] = set()
    real_connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(statements.add)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    with store_file(tmp_path) as path:
        async with EngineHarness(path) as h:
            acked = [await h.accept(h.report(f"acked-{n}")) for n in range(3)]
            open_ = [await h.accept(h.report(f"open-{n}")) for n in range(3)]
            await h.run_until(75)  # backup rounds at 10 s and 70 s
            await h.ack(acked[0])
            await h.ack(acked[1], channel="sms")
            h.channels["mqtt"].down()
            await h.accept(h.report("failover"))
            await h.engine.receipt(open_[0], "airfield-1", "mqtt")
            await h.restart(down_for=5)
            h.channels["mqtt"].up()
            await h.run_until(1000)  # every open one given up
            assert (await h.alert(open_[1])).state is AlertState.UNACKNOWLEDGED
            store = h.store
            await store.list_alerts(states=[AlertState.PENDING, AlertState.DELIVERED], limit=100)
            await store.list_alerts(states=None, limit=100, operator_id="op-1")
            await store.list_alerts(states=None, limit=100, desk_id="airfield-1")
            await store.find_by_code("K7QX", h.clock.now())
            await store.audit_log(limit=100)
            await store.prune(h.clock.now() - 10, batch=100)
    (tmp_path / "tracks").mkdir()
    with store_file(tmp_path / "tracks") as path:
        async with EngineHarness(path, tracks=TrackParams()) as h:  # seven calls, one drone: one track
            ids = [await h.accept(h.report(f"call-{n}")) for n in range(7)]
            await h.run_until(75)
            track_id = (await h.alert(ids[0])).track_id
            store = h.store
            await store.list_tracks(since=h.clock.now() - 1000, limit=100, desk_id="airfield-1")
            await store.list_tracks(since=None, limit=100, operator_id="op-1")
            await store.get_track(track_id)
            await h.ack(ids[3])
            await h.accept(h.report("call-after-ack"))
            await h.restart(down_for=5)
            await h.engine.ack_track(track_id, "airfield-1", "Иванов", "test")

    monkeypatch.setattr(sqlite3, "connect", real_connect)
    scans = _scans(statements, tmp_path)
    assert scans == [], "\n".join(scans)


def _scans(statements: set[str], tmp_path: Path) -> list[str]:
    """EXPLAIN each statement on a copy of the schema: which of them read a big table whole."""
    db = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    migrate(db)
    found = []
    for sql in sorted(statements):
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head not in {"SELECT", "UPDATE", "DELETE", "INSERT", "WITH"}:
            continue
        if any(p.search(sql) for p in ALLOWED.values()):
            continue
        try:
            plan = db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        except sqlite3.Error:
            continue  # a statement of the test's own, or one of the schema's
        for row in plan:
            detail = row[-1]
            m = re.match(r"SCAN (\w+)", detail)
            if m and m.group(1) in BIG_TABLES:
                found.append(f"{detail}: {sql[:300]}")
    return found
