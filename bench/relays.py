"""`python -m bench.relays`: the relay on PostgreSQL, one and two of them: sequential latency against SQLite, a burst
over one relay and over two, the takeover after a SIGKILL, and what was lost or came twice. See bench/README.md,
"Several relays"."""

from __future__ import annotations

import argparse
import asyncio
import collections
import getpass
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench import scenarios
from bench.cli import relay_version
from bench.console import Receiver
from bench.env import ALERT_TOPIC, REPO, fs_type, mosquitto_version
from bench.meters import HostMeter, cpu_probe_ms
from bench.relays_world import CpuMeter, Infra, Relay, Run, postgres_version
from bench.soak_world import codes_in
from bench.stats import summarize
from bench.table import header, latency_row, rule, value_row
from tests.support.smtp import SmtpServer

LEASE_S = 5.0  # store.lease_s's default, which these runs keep
TAKEOVER_WAIT_S = 30.0  # after the kill: for the takeover, every alert on the console, every first backup round
LINGER_S = 0.5  # after a run's last alert, for late copies (duplicates), before the console goes
STORES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Plan:
    blocks: int  # sequential blocks per store, alternating SQLite, PostgreSQL, SQLite, ...
    warmup: int  # per sequential block and per relay before a burst, not measured
    sequential: int  # per block
    bursts: int  # burst runs per setup, alternating one relay, two relays, ...
    burst: int
    takeovers: int
    open: int  # alerts open on relay A when it is killed
    seed: int
    quick: bool = False
    only: str = ""  # one phase: sequential, burst or takeover
    keep: bool = False


def parse(argv: Sequence[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m bench.relays", description=__doc__)
    p.add_argument("--blocks", type=int, default=5, help="sequential blocks per store, alternating (5)")
    p.add_argument("--sequential", type=int, default=200, help="reports measured per sequential block (200)")
    p.add_argument("--bursts", type=int, default=3, help="burst runs over one relay, and as many over two (3)")
    p.add_argument("--burst", type=int, default=1000, help="reports in each burst (1000)")
    p.add_argument("--takeovers", type=int, default=3, help="SIGKILL-and-takeover runs (3)")
    p.add_argument("--open", type=int, default=50, help="alerts open on the relay that is killed (50)")
    p.add_argument("--seed", type=int, default=1, help="seed for splitting each burst between two relays (1)")
    p.add_argument("--only", choices=("sequential", "burst", "takeover"), default="", help="run that phase alone")
    p.add_argument("--keep", action="store_true", help="keep var/relays-<pid>/ (configs, relay logs) afterwards")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 blocks of 50 per store, one burst of 200 each way, one takeover of 20 alerts")
    a = p.parse_args(argv)
    if a.quick:
        return Plan(blocks=2, warmup=10, sequential=50, bursts=1, burst=200, takeovers=1, open=20, seed=a.seed,
                    quick=True, only=a.only, keep=a.keep)
    if min(a.blocks, a.sequential, a.bursts, a.burst, a.takeovers, a.open) < 1:
        p.error("counts must be positive")
    return Plan(a.blocks, 50, a.sequential, a.bursts, a.burst, a.takeovers, a.open, a.seed, only=a.only, keep=a.keep)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))


def check_alive(run: Run, phase: str, relays: Sequence[Relay] | None = None) -> None:
    for relay in run.relays if relays is None else relays:
        code = relay.proc.proc.poll()
        if code is not None:
            raise RuntimeError(f"{relay.name} exited with code {code} during {phase}")


class Console(Receiver):
    """bench/console.py's receiver (subscribed at QoS 1 to the desk's topic, keyed by report_id, which is one
    alert_id here), keeping the time of every copy."""

    def __init__(self, port: int, name: str = "bench-console-airfield-1") -> None:
        super().__init__(port, name, ALERT_TOPIC)
        self.copies: dict[str, list[float]] = collections.defaultdict(list)

    async def __aenter__(self) -> Console:
        await super().__aenter__()
        return self

    def arrived(self, key: str, t: float) -> bool:
        self.copies[key].append(t)
        return super().arrived(key, t)

    def extra_copies(self, after: float | None = None) -> tuple[int, int]:
        """(copies beyond each alert's first, alerts with such a copy); with `after`, only copies later than it."""
        extra = alerts = 0
        for times in self.copies.values():
            late = [t for t in times[1:] if after is None or t > after]
            extra += len(late)
            alerts += bool(late)
        return extra, alerts


@dataclass
class Tally:
    """Across every run."""

    accepted: int = 0  # 201 answers
    lost: int = 0  # of those, never on the console
    non_201: int = 0
    on_console: int = 0  # distinct alerts
    extra: int = 0  # copies beyond an alert's first, outside a kill
    extra_alerts: int = 0
    after_kill_extra: int = 0  # copies beyond an alert's first, arriving after a SIGKILL
    after_kill_alerts: int = 0
    kill_run_alerts: int = 0  # distinct alerts on the console in the takeover runs

    def add(self, console: Console, accepted: int, lost: int, non_201: int, killed_at: float | None = None) -> None:
        self.accepted += accepted
        self.lost += lost
        self.non_201 += non_201
        self.on_console += len(console.received)
        extra, alerts = console.extra_copies()
        if killed_at is not None:
            late_extra, late_alerts = console.extra_copies(after=killed_at)
            extra, alerts = extra - late_extra, alerts - late_alerts
            self.after_kill_extra += late_extra
            self.after_kill_alerts += late_alerts
            self.kill_run_alerts += len(console.received)
        self.extra += extra
        self.extra_alerts += alerts


@dataclass
class Results:
    # per store: every measured report's POST -> console and POST -> 201 (seconds), and each block's p50 (ms)
    e2e: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STORES})
    answered: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STORES})
    block_p50: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STORES})
    cpu_seq: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {s: [] for s in STORES})
    bursts: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: {1: [], 2: []})
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    exit_codes: list[tuple[str, str, int | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # relay log lines at error or worse
    events: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)  # run, relay, its log's events
    lease_after_ready_s: list[float] = field(default_factory=list)


def finish(run: Run, results: Results, label: str) -> None:
    run.stop()
    results.lease_after_ready_s += run.lease_after_ready_s
    for relay in run.relays:
        results.exit_codes.append((label, relay.name, run.exit_codes.get(relay.name)))
        results.events.append((label, relay.name, dict(run.events.get(relay.name, {}))))
    for name, lines in run.log_tail.items():
        results.errors += [f"{label}, {name}: {ln[:240]}" for ln in lines
                           if '"level": "error"' in ln or '"level": "critical"' in ln or "Traceback" in ln]


# ---- 1. sequential: SQLite against PostgreSQL, alternating blocks -------------------------------------------------

async def sequential_block(infra: Infra, plan: Plan, results: Results, store: str, block: int) -> None:
    """A fresh broker, relay and store; `warmup` reports, then `sequential` measured, each by bench/scenarios.py's
    sequential() for one report (so every sample is kept for the percentiles over all blocks)."""
    label = f"sequential {store} #{block + 1}"
    run = infra.run(store, f"seq-{store}-{block + 1}")
    try:
        run.start_broker()
        (relay,) = run.start_relays(["bench-relay"])
        lost = non_201 = 0
        e2e: list[float] = []
        async with Console(run.broker_port) as console, session(1) as s:
            warm = await scenarios.sequential(s, relay.reports_url, console, f"w{block}", plan.warmup)
            lost, non_201 = warm.lost, warm.non_201
            cpu = CpuMeter(run.relays, infra.pg if store == "postgresql" else None).start()
            for i in range(plan.sequential):
                one = await scenarios.sequential(s, relay.reports_url, console, f"s{block}-{i}", 1)
                lost, non_201 = lost + one.lost, non_201 + one.non_201
                if one.end_to_end.n:
                    e2e.append(one.end_to_end.p50_ms / 1000)
                if one.post_201.n:
                    results.answered[store].append(one.post_201.p50_ms / 1000)
            results.cpu_seq[store].append(cpu.per_item_ms(plan.sequential))
            check_alive(run, label)
            await asyncio.sleep(LINGER_S)
        results.tally.add(console, plan.warmup + plan.sequential - non_201, lost, non_201)
        results.e2e[store] += e2e
        p50 = summarize(e2e)
        results.block_p50[store].append(p50.p50_ms)
        say(f"  {label}: POST -> console p50 {p50.p50_ms:.2f} ms, p99 {p50.p99_ms:.2f} ms")
    finally:
        finish(run, results, label)


async def measure_sequential(infra: Infra, plan: Plan, results: Results) -> None:
    say(f"1. sequential: {plan.blocks} blocks per store, alternating SQLite and PostgreSQL, "
        f"{plan.warmup} warm-up + {plan.sequential} measured each ...")
    for block in range(plan.blocks):
        for store in STORES:
            await sequential_block(infra, plan, results, store, block)


# ---- 2. a burst over one relay and over two, both on PostgreSQL ---------------------------------------------------

async def split_burst(s: aiohttp.ClientSession, urls: list[str], console: Console, prefix: str, n: int,
                      rng: random.Random) -> dict[str, Any]:
    """bench/scenarios.py's burst(), each report to one of `urls` (as many to each, shuffled by the seed)."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    targets = [i % len(urls) for i in range(n)]
    rng.shuffle(targets)
    bodies = [scenarios.report_body(rid) for rid in ids]
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(scenarios._timed_post(s, urls[k], b, t0)
                                     for k, b in zip(targets, bodies, strict=True)))
    all_answered = time.perf_counter() - t0
    expected = [rid for rid, (status, _) in zip(ids, answers, strict=True) if status == 201]
    errors = [str(status) for status, _ in answers if status != 201]
    missing = await console.wait_all(expected, max(0.0, t0 + scenarios.RECEIVE_TIMEOUT_S - time.perf_counter()))
    complete = None if missing else max((console.received[k] for k in expected), default=t0) - t0
    return {"n": n, "relays": len(urls), "complete_s": complete, "all_answered_s": all_answered,
            "accepted": len(expected), "non_201": n - len(expected), "lost": len(missing), "errors": errors[:5]}


async def burst_run(infra: Infra, plan: Plan, results: Results, relays: int, rep: int, rng: random.Random) -> None:
    label = f"burst over {relays} relay{'s' if relays > 1 else ''} #{rep + 1}"
    run = infra.run("postgresql", f"burst{relays}-{rep + 1}")
    try:
        run.start_broker()
        started = run.start_relays([f"bench-relay-{c}" for c in "ab"[:relays]])
        async with Console(run.broker_port) as console:
            lost = non_201 = 0
            async with session(1) as s:  # warm-up, one relay after the other, as the bench's burst follows its
                for relay in started:    # sequential phases
                    warm = await scenarios.sequential(s, relay.reports_url, console, f"w-{relay.name}", plan.warmup)
                    lost, non_201 = lost + warm.lost, non_201 + warm.non_201
            async with session(0) as s:  # fresh connections, as the bench's cold burst
                cpu = CpuMeter(started, infra.pg).start()
                out = await split_burst(s, [r.reports_url for r in started], console, f"b{relays}-{rep}",
                                        plan.burst, rng)
                out["cpu_ms"] = cpu.per_item_ms(plan.burst)
            check_alive(run, label)
            await asyncio.sleep(LINGER_S)
        results.tally.add(console, out["accepted"] + len(started) * plan.warmup - non_201, lost + out["lost"],
                          non_201 + out["non_201"])
        results.bursts[relays].append(out)
        shown = "not all on the console" if out["complete_s"] is None else f"{out['complete_s']:.3f} s"
        say(f"  {label}: {shown} (last 201 at {out['all_answered_s']:.3f} s, {out['non_201']} non-201, "
            f"{out['lost']} lost)")
    finally:
        finish(run, results, label)


async def measure_bursts(infra: Infra, plan: Plan, results: Results) -> None:
    say(f"2. bursts of {plan.burst}: over one relay and over two (1, 2, 2, 1, ...), {plan.bursts} each, on "
        "PostgreSQL ...")
    rng = random.Random(plan.seed)
    for rep in range(plan.bursts):
        for relays in (1, 2) if rep % 2 == 0 else (2, 1):  # one, two, two, one, ...: drift hits both alike
            await burst_run(infra, plan, results, relays, rep, rng)


# ---- 3. takeover after a SIGKILL ------------------------------------------------------------------------------

async def post_one(s: aiohttp.ClientSession, url: str, report_id: str) -> tuple[str, int | str, str]:
    try:
        async with s.post(url, data=scenarios.report_body(report_id), headers=scenarios.HEADERS) as r:
            body = await r.read()
            code = json.loads(body).get("short_code", "") if r.status == 201 else ""
            return report_id, r.status, code
    except (aiohttp.ClientError, TimeoutError) as exc:
        return report_id, type(exc).__name__, ""


async def takeover_run(infra: Infra, plan: Plan, results: Results, rep: int) -> None:
    """Relays A and B on one database, e-mail backups with ack_timeout_s = 1; `open` reports posted to A at once;
    A SIGKILLed right after the last answer. Then: when B logs `takeover`, when every accepted alert was on the
    console, when every one's first backup round reached the SMTP server (due 1 s after acceptance: while A was
    dead, so B's to send)."""
    label = f"takeover #{rep + 1}"
    run = infra.run("postgresql", f"takeover-{rep + 1}")
    smtp = SmtpServer()
    try:
        smtp.start()
        run.start_broker()
        a, b = run.start_relays(["bench-relay-a", "bench-relay-b"], email_port=smtp.port)
        async with Console(run.broker_port) as console:
            async with session(0) as s:
                answers = await asyncio.gather(*(post_one(s, a.reports_url, f"k{rep}-{i}") for i in range(plan.open)))
            killed_wall, killed = time.time(), time.perf_counter()
            a.sigkill()
            accepted = {rid: code for rid, status, code in answers if status == 201}
            non_201 = plan.open - len(accepted)
            mailed_before = {c for m in smtp.mails if m.at <= killed_wall for c in codes_in(str(m.message["Subject"]))}
            deadline = killed + TAKEOVER_WAIT_S
            while time.perf_counter() < deadline:
                check_alive(run, label, [b])
                mailed = {c for m in smtp.mails if m.at > killed_wall for c in codes_in(str(m.message["Subject"]))}
                if set(accepted) <= set(console.received) and set(accepted.values()) <= mailed:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # late copies, a round sent twice
            takeover = b.events("takeover")
        first_mail: dict[str, float] = {}
        mails_after = collections.Counter[str]()
        for m in smtp.mails:
            for c in codes_in(str(m.message["Subject"])):
                if m.at > killed_wall and c in set(accepted.values()):
                    mails_after[c] += 1
                    first_mail.setdefault(c, m.at)
        on_console = [rid for rid in accepted if rid in console.received]
        lost = len(accepted) - len(on_console)
        late = [console.received[rid] - killed for rid in on_console if console.received[rid] > killed]
        out = {
            "accepted": len(accepted), "non_201": non_201, "lost": lost,
            "takeover_s": takeover[0]["at"] - killed_wall if takeover and "at" in takeover[0] else None,
            "taken_over": sum(int(e.get("alerts", 0)) for e in takeover),
            "on_console_before_kill": len(on_console) - len(late),
            "on_console_after_kill": len(late),
            "all_on_console_s": max(late) if late and not lost else (0.0 if not lost else None),
            "mailed_by_a_before_kill": len(mailed_before & set(accepted.values())),
            "first_round_first_s": min(first_mail.values()) - killed_wall if first_mail else None,
            "first_round_all_s": (max(first_mail.values()) - killed_wall
                                  if len(first_mail) == len(set(accepted.values())) else None),
            "first_round_missing": len(set(accepted.values())) - len(first_mail),
            "rounds_twice": sum(1 for n in mails_after.values() if n > 1),
            "extra_after_kill": console.extra_copies(after=killed)[0],
            # the dead relay's publishes it had not recorded as done, sent again by B (the same alert_id)
            "resent_last_s": max((t - killed for times in console.copies.values() for t in times[1:] if t > killed),
                                 default=None),
        }
        results.tally.add(console, len(accepted), lost, non_201, killed_at=killed)
        results.takeovers.append(out)
        say(f"  {label}: takeover logged {_s(out['takeover_s'])} after the kill ({out['taken_over']} alerts), first "
            f"backup round {_s(out['first_round_first_s'])}, "
            f"all on the console {_s(out['all_on_console_s'])} ({len(late)} after the kill), every first backup "
            f"round {_s(out['first_round_all_s'])}, {out['extra_after_kill']} copies twice")
    finally:
        try:
            finish(run, results, label)
        finally:
            smtp.stop()


async def measure_takeovers(infra: Infra, plan: Plan, results: Results) -> None:
    say(f"3. takeover: {plan.takeovers} runs, {plan.open} alerts open on relay A when it is SIGKILLed ...")
    for rep in range(plan.takeovers):
        await takeover_run(infra, plan, results, rep)


async def measure(infra: Infra, plan: Plan) -> Results:
    results = Results()
    if plan.only in ("", "sequential"):
        await measure_sequential(infra, plan, results)
    if plan.only in ("", "burst"):
        await measure_bursts(infra, plan, results)
    if plan.only in ("", "takeover"):
        await measure_takeovers(infra, plan, results)
    return results


# ---- the table ------------------------------------------------------------------------------------------------

def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals and len(vals) == len(xs) else None


def render(info: dict[str, Any], plan: Plan, r: Results) -> list[str]:
    out = [f"uav-relay, several relays — {info['date']}, {info['cpu']}, {info['cores']} cores, Python "
           f"{info['python']}, PostgreSQL {info['postgres']} (fsync on), mosquitto {info['mosquitto']}; "
           f"SQLite on {info['sqlite_fs']}, PostgreSQL data on {info['pg_fs']}; relay at {info['relay_commit']}",
           header(), rule()]
    if r.e2e["sqlite"] or r.e2e["postgresql"]:
        out += [*_render_sequential(r), rule()]
    if r.bursts[1] or r.bursts[2]:
        out += [*_render_bursts(info, plan, r), rule()]
    if r.takeovers:
        out += [*_render_takeovers(plan, r), rule()]
    y = r.tally
    out.append(value_row("accepted (201), all runs", str(y.accepted)))
    out.append(value_row("lost: accepted, never on the console", str(y.lost), "0", y.lost == 0))
    out.append(value_row("answers other than 201", str(y.non_201), "0", y.non_201 == 0))
    share = 100 * y.extra / max(1, y.on_console)
    out.append(value_row("duplicates on the console, outside a kill",
                         f"{y.extra} of {y.on_console} ({share:.3f} %)", "<=0.1 %", share <= 0.1))
    late = 100 * y.after_kill_extra / max(1, y.kill_run_alerts)
    out.append(value_row("  repeated by the survivor after a SIGKILL",
                         f"{y.after_kill_extra} of {y.kill_run_alerts} ({late:.1f} %)", "(same alert_id)"))
    return out


def _render_sequential(r: Results) -> list[str]:
    out = []
    sq, pg = summarize(r.e2e["sqlite"]), summarize(r.e2e["postgresql"])
    out.append(latency_row(f"sequential POST -> console, SQLite (n={sq.n})", sq))
    out.append(latency_row(f"sequential POST -> console, PostgreSQL (n={pg.n})", pg))
    sq201, pg201 = summarize(r.answered["sqlite"]), summarize(r.answered["postgresql"])
    out.append(latency_row("  POST -> 201 answer, SQLite", sq201))
    out.append(latency_row("  POST -> 201 answer, PostgreSQL", pg201))
    for name, a, b in (("p50", pg.p50_ms, sq.p50_ms), ("p99", pg.p99_ms, sq.p99_ms)):
        x = _ratio(a, b)
        out.append(value_row(f"PostgreSQL / SQLite, POST -> console {name}", _x(x), "<=1.5x",
                             None if x is None else x <= 1.5))
    out.append(value_row("  PostgreSQL / SQLite, POST -> 201 p50", _x(_ratio(pg201.p50_ms, sq201.p50_ms))))
    for store, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        out.append(f"  block p50s, {name:<10} (ms, in run order): "
                   + " ".join(f"{v:.2f}" for v in r.block_p50[store]))
    for store, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        c = _mean_cpu(r.cpu_seq[store])
        if c:
            pg_part = f", postgres {c['postgres']:.2f}" if store == "postgresql" else ""
            out.append(f"  CPU ms per sequential report, {name:<10}: relay {c['relays']:.2f}{pg_part}, bench "
                       f"{c['bench']:.2f}; wall {c['wall']:.2f} (/proc, 10 ms ticks)")
    return out


def _render_bursts(info: dict[str, Any], plan: Plan, r: Results) -> list[str]:
    out = []
    m1 = _median([b["complete_s"] for b in r.bursts[1]])
    m2 = _median([b["complete_s"] for b in r.bursts[2]])
    n = plan.burst
    out.append(value_row(f"burst: {n} at once, one relay -> console has all", _burst(m1, n)))
    out.append(value_row(f"burst: {n} at once, two relays ({n // 2} each)", _burst(m2, n)))
    x = _ratio(m2, m1)
    out.append(value_row("two relays / one relay, time to all on console", _x(x), "<=1.00x",
                         None if x is None else x <= 1.0))
    for k, runs in ((1, r.bursts[1]), (2, r.bursts[2])):
        out.append(f"  {'one relay' if k == 1 else 'two relays'}, each run: all on the console "
                   + ", ".join(_s(b["complete_s"]) for b in runs) + "; last 201 "
                   + ", ".join(_s(b["all_answered_s"]) for b in runs))
        c = _mean_cpu([b["cpu_ms"] for b in runs if "cpu_ms" in b])
        if c:
            out.append(f"    CPU ms per report: relay{'s' if k == 2 else ''} {c['relays']:.2f}, postgres "
                       f"{c['postgres']:.2f}, bench {c['bench']:.2f}; wall {c['wall']:.2f} ({info['cores']} cores)")
    return out


def _render_takeovers(plan: Plan, r: Results) -> list[str]:
    out = []
    target = f"<={LEASE_S + 1:.0f} s (lease_s + 1)"
    t = r.takeovers
    for key, name, tgt in (("takeover_s", "SIGKILL of A -> B logs takeover", True),
                           ("first_round_first_s", "SIGKILL of A -> B's first backup round", True),
                           ("first_round_all_s", "SIGKILL of A -> every alert's first round", False),
                           ("all_on_console_s", "SIGKILL of A -> every alert on the console", True),
                           ("resent_last_s", "SIGKILL of A -> B's last re-send on console", True)):
        vals = [x[key] for x in t]
        present = [v for v in vals if v is not None]
        worst = max(present) if present else None
        shown = ", ".join(f"{v:.2f}" if v is not None else "-" for v in vals) + (
            f"; max {worst:.2f} s" if worst is not None else "; max -")
        ok = None if worst is None or not tgt else worst <= LEASE_S + 1
        if key not in ("takeover_s", "resent_last_s") and len(present) < len(vals):
            ok = False  # an alert never got there within the wait
        out.append(value_row(name, shown, target if tgt else f"(all {plan.open} sent)", ok))
    logged = sum(x["takeover_s"] is not None for x in t)
    out.append(f"  per run: alerts open on A {', '.join(str(x['accepted']) for x in t)}; taken over by B per its "
               f"`takeover` log {', '.join(str(x['taken_over']) for x in t)}"
               + (f" (in {len(t) - logged} of {len(t)} runs B's scheduler claimed A's lapsed alerts first: "
                  "no `takeover` line)" if logged < len(t) else "")
               + f"; on the console only after the kill {', '.join(str(x['on_console_after_kill']) for x in t)}; "
               f"first rounds sent before the kill {', '.join(str(x['mailed_by_a_before_kill']) for x in t)}; "
               f"a round sent twice {', '.join(str(x['rounds_twice']) for x in t)}")
    return out


def _mean_cpu(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.mean(x[k] for x in samples) for k in samples[0]} if samples else {}


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _burst(v: float | None, n: int) -> str:
    return "not all arrived" if v is None else f"median {v:.3f} s, {n / v:.0f} reports/s"


# ---- main -----------------------------------------------------------------------------------------------------

def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine(infra: Infra) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    pg = infra.postgres()
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "postgres": postgres_version(), "mosquitto": mosquitto_version(),
            "kernel": platform.release(), "sqlite_fs": fs_type(infra.root), "pg_fs": fs_type(pg.data),
            "relay_commit": relay_version(), "cpu_probe_ms": cpu_probe_ms()}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same cleanup as a Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    load_before = loadavg()
    host = HostMeter()
    infra = Infra.create(os.getpid(), getpass.getuser())
    infra.keep = plan.keep
    results: Results | None = None
    failure: str | None = None
    info: dict[str, Any] = {}
    try:
        say("starting the private PostgreSQL server (fsync on) ...")
        infra.start_postgres()
        info = machine(infra)
        results = asyncio.run(measure(infra, plan))
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        for p in infra.procs:  # what is still running belongs to the run that failed
            if p.name != "mosquitto":
                lines = p.log.read_text(errors="replace").splitlines() if p.log.exists() else []
                say(f"{p.name} (pid {p.pid}) log, last {min(15, len(lines))} of {len(lines)} lines:")
                for line in lines[-15:]:
                    say(f"  {line[:300]}")
    finally:
        infra.close()
    info |= host.stop()
    info["load_before"], info["load_after"] = load_before, loadavg()
    if failure is not None or results is None:
        say(f"benchmark failed: {failure}")
        return 130 if failure == "interrupted" else 1
    print("\n".join(render(info, plan, results)))
    bad_exits = [f"{label} {name}: {code}" for label, name, code in results.exit_codes
                 if code != 0 and not (label.startswith("takeover") and name.endswith("-a") and code == -9)]
    print(f"run took {time.monotonic() - t0:.0f} s; load average before {info['load_before']}, after "
          f"{info['load_after']} ({info['cores']} cores); steal {info['steal_pct']} %, iowait {info['iowait_pct']} %; "
          f"CPU probe {info['cpu_probe_ms']} ms")
    print(f"relay exit codes: {'all 0 (relay A of each takeover: -9, the SIGKILL)' if not bad_exits else ''}"
          + "; ".join(bad_exits))
    if results.lease_after_ready_s:
        print(f"lease in the database after /readyz (and MQTT up): max {max(results.lease_after_ready_s):.2f} s "
              f"over {len(results.lease_after_ready_s)} starts; each run waited for it before posting")
    unexpected = []
    for label, name, events in results.events:
        expected = {"plain_token_in_config"} | ({"backup_round", "takeover"} if label.startswith("takeover") else set())
        odd = {e: n for e, n in events.items() if e not in expected}
        if odd:
            unexpected.append(f"{label}, {name}: " + ", ".join(f"{e} x{n}" for e, n in sorted(odd.items())))
    print("relay log events beyond the expected ones: " + ("none" if not unexpected else ""))
    for line in unexpected:
        print(f"  {line}")
    for line in results.errors[:10]:
        print(f"  relay log: {line}")
    out = REPO / "var" / "bench-relays-last.json"
    out.write_text(json.dumps({"info": info, "plan": asdict(plan), "bursts": results.bursts,
                               "takeovers": results.takeovers, "tally": asdict(results.tally),
                               "block_p50_ms": results.block_p50, "cpu_sequential_ms": results.cpu_seq,
                               "sequential_ms": {s: summarize(v).as_dict() for s, v in results.e2e.items()},
                               "post_201_ms": {s: summarize(v).as_dict() for s, v in results.answered.items()},
                               "exit_codes": results.exit_codes, "relay_errors": results.errors,
                               "relay_events": results.events, "lease_after_ready_s": results.lease_after_ready_s},
                              indent=2, default=str) + "\n")
    print(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
