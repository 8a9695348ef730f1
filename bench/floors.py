"""Floors, measured in the same run: what one HTTP round trip, one fsync'd commit, one QoS 1 hop cost alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp

from bench.console import Receiver, client, raw_key
from bench.scenarios import post, report_body
from bench.stats import Summary, summarize

WARMUP = 50


async def http_floor(session: aiohttp.ClientSession, url: str, n: int) -> Summary:
    """Sequential POSTs of the same body and headers as a report, to the trivial server in its own process."""
    body = report_body("floor-1")
    samples: list[float] = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        status = await post(session, url, body)
        dt = time.perf_counter() - t0
        if status != 201:
            raise RuntimeError(f"floor HTTP server answered {status}")
        if i >= WARMUP:
            samples.append(dt)
    return summarize(samples)


async def http_burst_floor(session: aiohttp.ClientSession, url: str, n: int) -> float:
    """`n` POSTs at once to the trivial server, as in the burst: start -> last 201, in seconds."""
    body = report_body("floor-1")
    t0 = time.perf_counter()
    statuses = await asyncio.gather(*(post(session, url, body) for _ in range(n)))
    dt = time.perf_counter() - t0
    bad = [s for s in statuses if s != 201]
    if bad:
        raise RuntimeError(f"floor HTTP server answered {bad[0]} ({len(bad)} times)")
    return dt


def fsync_floor(path: Path, n: int) -> Summary:
    """One small INSERT per transaction, WAL, synchronous=FULL: each COMMIT fsyncs the WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        body = report_body("floor-1").decode()
        samples: list[float] = []
        for i in range(WARMUP + n):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            dt = time.perf_counter() - t0
            if i >= WARMUP:
                samples.append(dt)
        return summarize(samples)
    finally:
        conn.close()


async def mqtt_floor(port: int, n: int, tag: str) -> Summary:
    """One client publishes at QoS 1, another (subscribed at QoS 1) receives: publish call start -> receipt."""
    topic = f"bench/floor/{tag}"
    samples: list[float] = []
    async with Receiver(port, f"bench-floor-sub-{tag}", topic, parse=raw_key) as sub, \
            client(port, f"bench-floor-pub-{tag}") as pub:
        for i in range(WARMUP + n):
            key = str(i)
            t0 = time.perf_counter()
            publish = asyncio.ensure_future(pub.publish(topic, key.encode(), qos=1, timeout=10))
            t1 = await sub.wait(key, 10)
            await publish  # the PUBACK too, before the next one
            if i >= WARMUP:
                samples.append(t1 - t0)
    return summarize(samples)
