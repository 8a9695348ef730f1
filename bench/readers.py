"""`python -m bench.readers`: heavy API readers beside the relay's real work (issue 12, "reads never starve").

A private Mosquitto, a Twilio-shaped server and an SMTP server (so a failover has somewhere to go and is counted),
and the relay as a subprocess (bench/soak_world.py). The relay is filled with `--fill` alerts (each received and
acknowledged by the console), then, for each reader count in `--readers` (0 first, as the baseline), for
`--duration` seconds:

* N readers, in a separate process (their own CPU is not the bench's), each `GET /api/v1/alerts?state=all&limit=1000`
  in a loop on its own connection, reading the whole body;
* a steady report stream (`--rate` per second), each timed from the POST to the console's receipt;
* the console answering every alert `received` and `ack` over MQTT;
* a `/healthz` probe every 20 ms on its own connection.

Printed: `/healthz` latency, POST -> console latency, `relay_failovers_total` added during the phase (the broker is
healthy all along, so every one is spurious), and the list requests served per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from bench.console import client as mqtt_client
from bench.env import REPO, python
from bench.stats import Summary, summarize
from bench.table import header, latency_row, rule, value_row
from tests.support.relay import OPERATOR_TOKEN, report

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
LIST_PATH = "/api/v1/alerts?state=all&limit=1000"
DESK = "airfield-1"
HEALTHZ_EVERY_S = 0.02


@dataclass(frozen=True)
class Options:
    readers: tuple[int, ...]
    duration: float
    rate: float
    fill: int
    keep: bool


@dataclass
class Phase:
    readers: int
    healthz: Summary
    post_console: Summary
    failovers: float
    reads: int
    read_errors: int
    read_s: float
    posted: int
    refused: int
    lost: int
    read_latency: Summary


def parse(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.readers", description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", default="8,12", help="reader counts, comma-separated; 0 (baseline) always runs first")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    p.add_argument("--rate", type=float, default=10.0, help="reports per second during a phase (10)")
    p.add_argument("--fill", type=int, default=1000, help="alerts stored before the phases (1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 readers, 5 s, 300 alerts")
    p.add_argument("--keep", action="store_true", help="keep var/readers-<pid>/ afterwards")
    a = p.parse_args(argv)
    counts = sorted({0, *(int(x) for x in a.readers.split(",") if x.strip())})
    if a.quick:
        return Options((0, 8), 5.0, a.rate, 300, a.keep)
    return Options(tuple(counts), a.duration, a.rate, a.fill, a.keep)


# ---- the readers (a separate process: `--as-readers`) ---------------------------------------------------


async def _readers(url: str, n: int, duration: float) -> dict[str, Any]:
    reads, errors, latencies = 0, 0, []
    stop_at = time.monotonic() + duration

    async def one() -> None:
        nonlocal reads, errors
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with http.get(url + LIST_PATH, headers=AUTH) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    reads += 1
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                    await asyncio.sleep(0.05)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    return {"reads": reads, "errors": errors, "seconds": time.monotonic() - t0, "latencies": latencies}


def as_readers(argv: list[str]) -> int:
    url, n, duration = argv[0], int(argv[1]), float(argv[2])
    print(json.dumps(asyncio.run(_readers(url, n, duration))), flush=True)
    return 0


# ---- the console, the stream and the probe --------------------------------------------------------------


@dataclass
class Console:
    """Stamps each alert's arrival by report_id and answers `received` and `ack` for it."""

    port: int
    arrived: dict[str, float] = field(default_factory=dict)
    _answers: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, subscribed: asyncio.Event) -> None:
        async with mqtt_client(self.port, f"readers-console-{os.getpid()}") as c:
            await c.subscribe(f"uav/alerts/{DESK}", qos=1)
            subscribed.set()
            async for msg in c.messages:
                t = time.perf_counter()
                body = json.loads(msg.payload if isinstance(msg.payload, bytes) else str(msg.payload))
                if body["report_id"] in self.arrived:
                    continue
                self.arrived[body["report_id"]] = t
                task = asyncio.create_task(self._answer(c, body["alert_id"]))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)

    async def _answer(self, c: aiomqtt.Client, alert_id: str) -> None:
        for kind in ("received", "ack"):
            await c.publish(f"uav/acks/{DESK}", json.dumps({"alert_id": alert_id, "kind": kind, "by": "bench"}), qos=1)

    async def wait_for(self, keys: list[str], within_s: float) -> list[str]:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            missing = [k for k in keys if k not in self.arrived]
            if not missing:
                return []
            await asyncio.sleep(0.05)
        return [k for k in keys if k not in self.arrived]


async def post(http: aiohttp.ClientSession, url: str, report_id: str) -> bool:
    try:
        async with http.post(f"{url}/api/v1/reports", json=report(report_id), headers=AUTH) as r:
            await r.read()
            return r.status == 201
    except aiohttp.ClientError:
        return False


async def fill(url: str, console: Console, n: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
        ids = [f"fill-{i}" for i in range(n)]
        for i in range(0, n, 50):
            ok = await asyncio.gather(*(post(http, url, k) for k in ids[i:i + 50]))
            if not all(ok):
                raise RuntimeError("the relay refused a report while filling")
        missing = await console.wait_for(ids, 60)
        if missing:
            raise RuntimeError(f"{len(missing)} filled alerts never reached the console")


async def stream(url: str, prefix: str, rate: float, duration: float) -> tuple[dict[str, float], int]:
    """A report every 1/rate s; returns {report_id: perf_counter() at POST} of the accepted ones, and the refused."""
    started: dict[str, float] = {}
    refused = 0
    tasks = []
    async with aiohttp.ClientSession() as http:

        async def one(report_id: str) -> None:
            nonlocal refused
            t0 = time.perf_counter()
            if await post(http, url, report_id):
                started[report_id] = t0
            else:
                refused += 1

        t_start = time.monotonic()
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, t_start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(f"{prefix}-{i}")))
        await asyncio.gather(*tasks)
    return started, refused


async def probe(url: str, until: asyncio.Event) -> list[float]:
    samples = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        while not until.is_set():
            t0 = time.perf_counter()
            async with http.get(f"{url}/healthz") as r:
                await r.read()
            samples.append(time.perf_counter() - t0)
            await asyncio.sleep(HEALTHZ_EVERY_S)
    return samples


async def failovers(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("relay_failovers_total{"))


async def phase(url: str, console: Console, readers: int, o: Options) -> Phase:
    before = await failovers(url)
    proc = None
    if readers:
        proc = await asyncio.create_subprocess_exec(
            python(), "-m", "bench.readers", "--as-readers", url, str(readers), str(o.duration),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, start_new_session=True,
        )
    done = asyncio.Event()
    prober = asyncio.create_task(probe(url, done))
    try:
        started, refused = await stream(url, f"p{readers}", o.rate, o.duration)
        missing = await console.wait_for(list(started), 30)
        done.set()
        health = await prober
        got: dict[str, Any] = {"reads": 0, "errors": 0, "seconds": o.duration, "latencies": []}
        if proc is not None:
            out, _ = await proc.communicate()
            got = json.loads(out)
            proc = None
    finally:
        prober.cancel()
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    after = await failovers(url)
    latencies = [console.arrived[k] - t0 for k, t0 in started.items() if k in console.arrived]
    return Phase(readers, summarize(health), summarize(latencies), after - before, got["reads"], got["errors"],
                 got["seconds"], len(started) + refused, refused, len(missing), summarize(got["latencies"]))


def render(phases: list[Phase], o: Options, info: str) -> list[str]:
    lines = [info, header(), rule()]
    for p in phases:
        who = f"{p.readers} readers" if p.readers else "no readers"
        lines += [
            latency_row(f"{who}: GET /healthz", p.healthz),
            latency_row(f"{who}: POST -> console (n={p.post_console.n})", p.post_console),
        ]
        if p.readers:
            lines.append(latency_row(f"{who}: one list of 1000 alerts", p.read_latency))
            lines.append(value_row(f"{who}: lists served", f"{p.reads / p.read_s:.1f}/s ({p.read_errors} failed)"))
        lines.append(value_row(f"{who}: failovers (broker healthy)", f"{p.failovers:.0f}", "0", p.failovers == 0))
        lines.append(value_row(f"{who}: reports lost / refused", f"{p.lost} / {p.refused}", "0 / 0",
                               p.lost == 0 and p.refused == 0))
        lines.append(rule())
    return lines


async def run(o: Options, root: Path) -> list[str]:
    from bench.cli import relay_version
    from bench.soak_world import world

    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    # no ack timeout in the way: a backup round here can only be a failover
    async with world(root, ack_timeout_s=600, repeat_s=600, give_up_s=3600) as w:
        console = Console(w.broker.port)
        subscribed = asyncio.Event()
        listener = asyncio.create_task(console.run(subscribed))
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            print(f"filling the relay with {o.fill} alerts ...", file=sys.stderr, flush=True)
            await fill(w.url, console, o.fill)
            phases = []
            for n in o.readers:
                print(f"{n} readers for {o.duration:.0f} s, {o.rate:g} reports/s ...", file=sys.stderr, flush=True)
                phases.append(await phase(w.url, console, n, o))
                if w.relay.proc is None or w.relay.proc.poll() is not None:
                    raise RuntimeError("the relay exited")
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    info = (f"uav-relay heavy readers — {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {os.cpu_count()} cores, "
            f"relay at {relay_version()}; {o.fill} alerts filled, {o.rate:g} reports/s, {o.duration:.0f} s a phase, "
            f"each reader: GET {LIST_PATH} in a loop")
    return render(phases, o, info)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--as-readers"]:
        return as_readers(args[1:])
    o = parse(args)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = REPO / "var" / f"readers-{os.getpid()}"
    root.mkdir(parents=True)
    try:
        print("\n".join(asyncio.run(run(o, root))), flush=True)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if o.keep:
            print(f"kept {root.relative_to(REPO)}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
