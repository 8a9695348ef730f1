"""asyncpg against psycopg 3 (with its pool) for the PostgreSQL store, and the stores themselves, on this machine.

    python -m bench.pg_drivers [--n 2000] [--rounds 10]

Starts a private PostgreSQL (fsync on, as in production) on a free loopback port, and measures sequential
`accept`s: the store's one hot transaction (the replay check, the short code check, the alert, its track, its
desks, its deliveries, commit). Each driver written as it would be in the store, statement by statement: asyncpg
(statement cache), psycopg (prepared after a few uses), psycopg in pipeline mode (the checks in one round trip,
the writes and the COMMIT in another); and asyncpg with the accept hand-folded into the fewest statements (one
query for both checks, one data-modifying CTE for every insert). Then the real stores' `accept`, SQLite's and
PostgreSQL's. The contenders take turns, `--rounds` times, so that whatever else the shared machine runs meanwhile
slows each alike. Per accept: wall-clock latency (p50, p95, p99), this process's CPU, and the server backend's CPU
(from /proc). asyncpg is not a dependency of the relay: without it, psycopg and the stores alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg_pool

from relay.store.postgres import PostgresStore
from relay.store.postgres_schema import MIGRATIONS
from relay.store.sqlite import SQLiteStore
from tests.support.postgres import PostgresServer
from tests.test_store_contract import new_alert

WARMUP = 200
CLK_TCK = os.sysconf("SC_CLK_TCK")

SELECT_EXISTING = "SELECT content_sha256, alert_id FROM alerts WHERE operator_id = $1 AND report_id = $2"
SELECT_CODE = "SELECT 1 FROM alerts WHERE short_code = $1 AND state IN ('pending', 'delivered')"
INSERT_ALERT = (
    "INSERT INTO alerts (alert_id, operator_id, report_id, content_sha256, report_json, desks_json, short_code, "
    "priority, stale, state, source, created_at, next_action_at, backup_rounds, last_backup_at, track_id, closed_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
)
INSERT_TRACK = (
    "INSERT INTO tracks (track_id, estimate_json, opened_at, last_seen, updated_at) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (track_id) DO UPDATE SET estimate_json = excluded.estimate_json, last_seen = excluded.last_seen, "
    "updated_at = greatest(tracks.updated_at, excluded.updated_at)"
)
INSERT_DESK = "INSERT INTO alert_desks (desk_id, alert_id) VALUES ($1, $2)"
INSERT_DELIVERY = (
    "INSERT INTO deliveries (delivery_id, alert_id, desk_id, channel, target, state, attempts, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6)"
)
REPORT = json.dumps({"report_id": "r", "observed_at": "2026-11-20T10:00:00+00:00",
                     "location": {"lat": 52.6, "lon": 39.6}, "caller": {"phone": "+79001234567"}})
ESTIMATE = json.dumps({"x": [0.0] * 4, "p": [[0.0] * 4] * 4})


def rows(n: int) -> dict[str, Any]:
    now = time.time()
    alert_id = f"A{n:012d}"
    return {
        "alert": (alert_id, "op-1", f"r-{n}", "sha", REPORT, '["d-1", "d-2"]', f"C{n % 100000:05d}", "immediate",
                  False, "pending", "http", now, now + 900, 0, None, alert_id, None),
        "track": (alert_id, ESTIMATE, now, now, now),
        "desks": [("d-1", alert_id), ("d-2", alert_id)],
        "deliveries": [(f"{alert_id}.{d}.mqtt", alert_id, d, "mqtt", f"uav/alerts/{d}", now) for d in ("d-1", "d-2")],
        "key": ("op-1", f"r-{n}"), "code": f"C{n % 100000:05d}",
    }


def pyformat(sql: str) -> str:
    """$1 placeholders as psycopg's %s (the statements above have no literal %)."""
    for i in range(20, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


# ---- one accept, per driver ----------------------------------------------------------------------------


async def accept_asyncpg(pool: Any, r: dict[str, Any]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(SELECT_EXISTING, *r["key"])
        await conn.fetchval(SELECT_CODE, r["code"])
        await conn.execute(INSERT_ALERT, *r["alert"])
        await conn.execute(INSERT_TRACK, *r["track"])
        await conn.executemany(INSERT_DESK, r["desks"])
        await conn.executemany(INSERT_DELIVERY, r["deliveries"])


# The fewest round trips asyncpg can make of it without pipelining: both checks in one query, every insert in one
# statement (data-modifying CTEs, the rows as arrays): BEGIN, check, insert, COMMIT.
CHECKS = (
    "SELECT (SELECT content_sha256 || ' ' || alert_id FROM alerts WHERE operator_id = $1 AND report_id = $2), "
    "EXISTS (SELECT 1 FROM alerts WHERE short_code = $3 AND state IN ('pending', 'delivered'))"
)
INSERT_ALL = (
    f"WITH a AS ({INSERT_ALERT}), "
    "t AS (INSERT INTO tracks (track_id, estimate_json, opened_at, last_seen, updated_at) "
    "VALUES ($16, $18, $12, $12, $12) ON CONFLICT (track_id) DO UPDATE SET estimate_json = excluded.estimate_json, "
    "last_seen = excluded.last_seen, updated_at = greatest(tracks.updated_at, excluded.updated_at)), "
    "d AS (INSERT INTO alert_desks (desk_id, alert_id) SELECT unnest($19::text[]), $1) "
    "INSERT INTO deliveries (delivery_id, alert_id, desk_id, channel, target, state, attempts, updated_at) "
    "SELECT $1 || '.' || desk || '.mqtt', $1, desk, 'mqtt', 'uav/alerts/' || desk, 'queued', 0, $12 "
    "FROM unnest($19::text[]) AS desk"
)


async def accept_asyncpg_fewest(pool: Any, r: dict[str, Any]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.fetchrow(CHECKS, *r["key"], r["code"])
        await conn.execute(INSERT_ALL, *r["alert"], ESTIMATE, [d for d, _ in r["desks"]])


async def accept_psycopg(pool: psycopg_pool.AsyncConnectionPool[Any], r: dict[str, Any]) -> None:
    async with pool.connection() as conn, conn.transaction():
        await (await conn.execute(pyformat(SELECT_EXISTING), r["key"])).fetchone()
        await (await conn.execute(pyformat(SELECT_CODE), (r["code"],))).fetchone()
        await conn.execute(pyformat(INSERT_ALERT), r["alert"])
        await conn.execute(pyformat(INSERT_TRACK), r["track"])
        async with conn.cursor() as cur:
            await cur.executemany(pyformat(INSERT_DESK), r["desks"])
            await cur.executemany(pyformat(INSERT_DELIVERY), r["deliveries"])


async def accept_psycopg_pipelined(pool: psycopg_pool.AsyncConnectionPool[Any], r: dict[str, Any]) -> None:
    """The two checks in one round trip, then every insert and the commit in one more."""
    async with pool.connection() as conn:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            c1 = await conn.execute(pyformat(SELECT_EXISTING), r["key"])
            c2 = await conn.execute(pyformat(SELECT_CODE), (r["code"],))
        await c1.fetchone()
        await c2.fetchone()
        async with conn.pipeline(), conn.cursor() as cur:
            await cur.execute(pyformat(INSERT_ALERT), r["alert"])
            await cur.execute(pyformat(INSERT_TRACK), r["track"])
            await cur.executemany(pyformat(INSERT_DESK), r["desks"])
            await cur.executemany(pyformat(INSERT_DELIVERY), r["deliveries"])
            await cur.execute("COMMIT")


# ---- measuring -----------------------------------------------------------------------------------------


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backend_pid(server: PostgresServer, database: str) -> int:
    """The one backend serving the bench's database (every pool here has exactly one connection; the admin
    connections of tests.support.postgres name themselves)."""
    rows = server.sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}' "
                      "AND application_name <> 'tests-admin'")
    return int(rows[0][0])


@dataclass
class Contender:
    """One way to accept, measured in rounds interleaved with the others (the machine is shared: whatever else
    runs on it then slows each of them alike)."""

    name: str
    one: Callable[[int], Awaitable[object]]
    pid: int | None = None  # its server backend
    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    server_s: float = 0.0
    done: int = 0

    async def round(self, n: int) -> None:
        server0 = backend_cpu_s(self.pid) if self.pid else 0.0
        cpu0 = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await self.one(WARMUP + self.done)
            self.samples.append(time.perf_counter() - t0)
            self.done += 1
        self.cpu_s += time.process_time() - cpu0
        self.server_s += backend_cpu_s(self.pid) - server0 if self.pid else 0.0

    def result(self) -> dict[str, Any]:
        q = statistics.quantiles(self.samples, n=100)
        return {"name": self.name, "p50": q[49], "p95": q[94], "p99": q[98], "cpu": self.cpu_s / self.done,
                "server": self.server_s / self.done if self.pid else None}


async def run(n: int, rounds: int) -> list[dict[str, Any]]:
    server = PostgresServer(fsync=True)
    server.start()
    contenders: list[Contender] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            names = ["psycopg", "psycopg pipelined"]
            if asyncpg is not None:
                names[:0] = ["asyncpg", "asyncpg fewest trips"]
            else:
                print("asyncpg is not installed (pip install asyncpg): psycopg alone")
            for name in names:
                db = server.create_database()
                for statement in (s for migration in MIGRATIONS for s in migration):
                    server.sql(statement, db)
                url = server.url(db)
                if name.startswith("asyncpg"):
                    apool = await asyncpg.create_pool(url, min_size=1, max_size=1)
                    stack.push_async_callback(apool.close)
                    how = accept_asyncpg if name == "asyncpg" else accept_asyncpg_fewest
                    contenders.append(Contender(name, lambda i, how=how, pool=apool: how(pool, rows(i))))
                else:
                    ppool = psycopg_pool.AsyncConnectionPool(url, min_size=1, max_size=1, open=False,
                                                             kwargs={"autocommit": True})
                    await ppool.open(wait=True)
                    stack.push_async_callback(ppool.close)
                    accept = accept_psycopg if name == "psycopg" else accept_psycopg_pipelined
                    contenders.append(Contender(name, lambda i, how=accept, pool=ppool: how(pool, rows(i))))
                for i in range(WARMUP):
                    await contenders[-1].one(i)
                contenders[-1].pid = backend_pid(server, db)
            tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=Path.cwd() / "var"))
            sqlite = await SQLiteStore.open(Path(tmp) / "relay.db")
            writer = asyncio.create_task(sqlite.run())
            stack.push_async_callback(stop, writer)
            contenders.append(Contender("SQLiteStore.accept", lambda i: sqlite.accept(new_alert(f"s-{i}"))))
            db = server.create_database()
            pg = await PostgresStore.open(server.url(db), pool_size=1)
            stack.push_async_callback(stop, asyncio.create_task(pg.run()))
            contenders.append(Contender("PostgresStore.accept", lambda i: pg.accept(new_alert(f"p-{i}"))))
            for c in contenders[-2:]:
                for i in range(WARMUP):
                    await c.one(i)
            contenders[-1].pid = backend_pid(server, db)
            for _ in range(rounds):
                for c in contenders:
                    await c.round(n // rounds)
    finally:
        server.close()
    return [c.result() for c in contenders]


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


def table(results: list[dict[str, Any]], n: int) -> str:
    lines = [f"sequential accepts, n={n} each after {WARMUP} warm-up, in interleaved rounds, fsync on; per accept:",
             f"{'':24} {'p50':>8} {'p95':>8} {'p99':>8} {'client CPU':>11} {'server CPU':>11}"]
    for r in results:
        server = f"{r['server'] * 1e3:9.3f}ms" if r["server"] is not None else f"{'-':>11}"
        lines.append(f"{r['name']:24} {r['p50'] * 1e3:6.3f}ms {r['p95'] * 1e3:6.3f}ms {r['p99'] * 1e3:6.3f}ms "
                     f"{r['cpu'] * 1e3:9.3f}ms {server}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="accepts per contender")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the contenders take turns in")
    args = parser.parse_args()
    print(table(asyncio.run(run(args.n, args.rounds)), args.n))


if __name__ == "__main__":
    main()
