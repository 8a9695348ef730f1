"""What only the SQLite store has: batched fsyncs, its schema versions, the flush at stop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from relay.domain.records import AcceptOutcome
from relay.store.sqlite_schema import MIGRATIONS
from tests.test_store_contract import _sqlite, new_alert


async def test_a_burst_of_writes_costs_few_commits(tmp_path: Path) -> None:
    store = await _sqlite(tmp_path)
    writer = asyncio.create_task(store.run())
    before = store.commits
    results = await asyncio.gather(*(store.accept(new_alert(f"burst-{n}")) for n in range(500)))
    assert all(r.outcome is AcceptOutcome.CREATED for r in results)
    assert store.commits - before < 50  # batched: one fsync carries many reports
    assert await store.count_open() == 500
    writer.cancel()
    await asyncio.wait([writer])



async def test_sqlite_schema_is_versioned_and_migrated_once(tmp_path: Path) -> None:
    s = await _sqlite(tmp_path)
    writer = asyncio.create_task(s.run())
    await s.accept(new_alert())
    writer.cancel()
    await asyncio.wait([writer])
    reopened = await _sqlite(tmp_path)  # migrating again must keep the data
    writer = asyncio.create_task(reopened.run())
    try:
        assert await reopened.count_open() == 1
    finally:
        writer.cancel()
        await asyncio.wait([writer])
    conn = sqlite3.connect(tmp_path / "store" / "relay.db")
    assert conn.execute("SELECT max(version) FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this relay knows"):
        await _sqlite(tmp_path)


async def test_what_was_queued_before_a_stop_is_still_committed(tmp_path: Path) -> None:
    s = await _sqlite(tmp_path)
    writer = asyncio.create_task(s.run())
    pending = [asyncio.create_task(s.accept(new_alert(f"late-{n}"))) for n in range(20)]
    await asyncio.sleep(0)  # the accepts are queued, none committed yet
    writer.cancel()
    await asyncio.wait([writer])
    assert all(p.result().outcome is AcceptOutcome.CREATED for p in pending)
    conn = sqlite3.connect(tmp_path / "store" / "relay.db")
    assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (20,)
    conn.close()
