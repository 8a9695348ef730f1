"""`python -m bench`: start a private broker, the relay and an HTTP floor server; measure; print; clean up."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench import floors, scenarios, table
from bench.console import Receiver
from bench.env import ALERT_TOPIC, REPO, World, cpu_s, fs_type, mosquitto_version, rss_mb
from bench.stats import Summary


@dataclass(frozen=True)
class Plan:
    warmup: int
    sequential: int
    burst: int
    open: int
    floor: int
    profile: str | None = None


def parse(argv: Sequence[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sequential", type=int, default=1000, help="reports posted one after another (1000)")
    p.add_argument("--burst", type=int, default=1000, help="reports posted all at once (1000)")
    p.add_argument("--open", type=int, default=10000, help="open alerts when the relay's RSS is read (10000)")
    p.add_argument("--floor", type=int, default=1000, help="samples per floor measurement (1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 sequential, 100 burst, 1000 open")
    p.add_argument("--profile", metavar="FILE", help="also sample the relay with py-spy into FILE (collapsed stacks)")
    a = p.parse_args(argv)
    if a.quick:
        return Plan(warmup=10, sequential=100, burst=100, open=1000, floor=100, profile=a.profile)
    return Plan(warmup=50, sequential=a.sequential, burst=a.burst, open=a.open, floor=a.floor, profile=a.profile)


def machine(world: World) -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "mosquitto": mosquitto_version(),
            "kernel": platform.release(), "store_fs": fs_type(world.workdir)}


async def relay_metric(session: aiohttp.ClientSession, port: int, name: str) -> float | None:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            series, _, value = line.rpartition(" ")
            if series == name:
                return float(value)
    return None


class CpuMeter:
    """CPU seconds used by the relay, the broker and the bench itself between `start()` and `stop()`."""

    def __init__(self, world: World) -> None:
        self.pids = {"relay": world.relay.pid, "mosquitto": world.procs[0].pid, "bench": os.getpid()}
        self.t0: dict[str, float] = {}
        self.wall0 = 0.0

    def start(self) -> None:
        self.t0 = {k: cpu_s(p) for k, p in self.pids.items()}
        self.wall0 = time.perf_counter()

    def per_report_ms(self, n: int) -> dict[str, float]:
        used = {k: (cpu_s(p) - self.t0[k]) * 1000 / max(1, n) for k, p in self.pids.items()}
        used["wall"] = (time.perf_counter() - self.wall0) * 1000 / max(1, n)
        return {k: round(v, 3) for k, v in used.items()}


def check_alive(world: World, phase: str) -> None:
    code = world.relay.proc.poll()
    if code is not None:
        raise RuntimeError(f"the relay exited with code {code} during {phase}")


async def measure(world: World, plan: Plan) -> dict[str, Any]:
    relay_url = f"http://127.0.0.1:{world.relay_port}/api/v1/reports"
    floor_url = f"http://127.0.0.1:{world.floor_port}/api/v1/reports"
    out: dict[str, Any] = {}
    async with Receiver(world.broker_port, "bench-console-airfield-1", ALERT_TOPIC) as console:
        print("floors ...", file=sys.stderr)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            out["floor_http"] = await floors.http_floor(s, floor_url, plan.floor)
        out["floor_fsync"] = floors.fsync_floor(world.workdir / "floor.db", plan.floor)
        out["floor_mqtt"] = await floors.mqtt_floor(world.broker_port, plan.floor, str(os.getpid()))

        print(f"sequential: {plan.warmup} warm-up + {plan.sequential} ...", file=sys.stderr)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            warm = await scenarios.sequential(s, relay_url, console, "w", plan.warmup)
            check_alive(world, "warm-up")
            cpu = CpuMeter(world)
            cpu.start()
            seq = await scenarios.sequential(s, relay_url, console, "s", plan.sequential)
            out["cpu_sequential_ms_per_report"] = cpu.per_report_ms(plan.sequential)
            check_alive(world, "sequential")
        out["sequential"] = seq

        print(f"burst: {plan.burst} at once ...", file=sys.stderr)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            cpu.start()
            burst = await scenarios.burst(s, relay_url, console, "b", plan.burst)
            out["cpu_burst_ms_per_report"] = cpu.per_report_ms(plan.burst)
            check_alive(world, "burst")
            out["burst"] = burst
            remaining = max(0, plan.open - plan.warmup - plan.sequential - plan.burst)
            print(f"filling to {plan.open} open alerts ({remaining} more) ...", file=sys.stderr)
            fill = await scenarios.fill(s, relay_url, console, "o", remaining)
            check_alive(world, "fill")
            out["fill"] = fill
            out["open_alerts"] = await relay_metric(s, world.relay_port, "relay_alerts_open")
        out["rss_open_mb"] = rss_mb(world.relay.pid)
        out["hwm_mb"] = rss_mb(world.relay.pid, "VmHWM")
        out["lost"] = warm.lost + seq.lost + burst.lost + fill.lost
        out["non_201"] = warm.non_201 + seq.non_201 + burst.non_201 + fill.non_201
        out["duplicates"] = console.duplicates
        out["alerts_received"] = len(console.received)
    return out


def render(m: dict[str, Any], r: dict[str, Any], plan: Plan) -> list[str]:
    seq: scenarios.Sequential = r["sequential"]
    burst: scenarios.Burst = r["burst"]
    f_http: Summary = r["floor_http"]
    f_fsync: Summary = r["floor_fsync"]
    f_mqtt: Summary = r["floor_mqtt"]
    n, fl = plan.sequential, plan.floor
    e2e = seq.end_to_end
    lines = [
        f"uav-relay benchmark — {m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"mosquitto {m['mosquitto']}, store on {m['store_fs']}",
        table.header(),
        table.rule(),
        table.latency_row(f"HTTP POST -> console (sequential, n={n})", e2e, "p50<1.5ms p99<5ms",
                          e2e.p50_ms < 1.5 and e2e.p99_ms < 5),
        table.latency_row(f"HTTP POST -> 201 answer (same {n} posts)", seq.post_201),
        table.latency_row(f"floor: bare HTTP POST round trip (n={fl})", f_http),
        table.latency_row(f"floor: fsync'd SQLite commit (n={fl})", f_fsync),
        table.latency_row(f"floor: bare MQTT QoS 1 round trip (n={fl})", f_mqtt),
        table.value_row("floor sum: HTTP + fsync + MQTT (p50)",
                        table.ms(f_http.p50_ms + f_fsync.p50_ms + f_mqtt.p50_ms)),
        table.rule(),
    ]
    if burst.complete_s is not None:
        value = f"{burst.complete_s:.3f} s, {burst.per_s:.0f} reports/s"
    else:
        value = f"incomplete ({burst.lost} lost)"
    target_applies = plan.burst == 1000
    lines += [
        table.value_row(f"burst: {burst.n} at once -> console has all", value,
                        "<0.5 s" if target_applies else "(<0.5 s for 1000)",
                        (burst.complete_s is not None and burst.complete_s < 0.5) if target_applies else None),
        table.value_row("burst: start -> last 201 answer", f"{burst.all_answered_s:.3f} s"),
        table.latency_row(f"burst: POST -> 201 answer (n={burst.n - burst.non_201})", burst.post_201),
        table.value_row("lost alerts / non-201 answers (all phases)", f"{r['lost']} / {r['non_201']}",
                        "0 / 0", r["lost"] == 0 and r["non_201"] == 0),
        table.rule(),
        cpu_row("CPU per report, sequential", r["cpu_sequential_ms_per_report"]),
        cpu_row("CPU per report, burst", r["cpu_burst_ms_per_report"]),
        table.rule(),
        table.value_row("relay RSS right after startup", f"{r['rss_start_mb']:.1f} MB"),
    ]
    open_now = r["open_alerts"]
    open_txt = "?" if open_now is None else f"{open_now:.0f}"
    mem_applies = open_now is not None and open_now >= 10000
    lines.append(table.value_row(f"relay RSS with {open_txt} open alerts", f"{r['rss_open_mb']:.1f} MB",
                                 "<100 MB" if mem_applies else "(<100 MB at 10000)",
                                 r["rss_open_mb"] < 100 if mem_applies else None))
    lines.append(table.value_row("relay peak RSS (VmHWM)", f"{r['hwm_mb']:.1f} MB"))
    return lines


def cpu_row(name: str, c: dict[str, float]) -> str:
    return f"{name:<{table.NAME_W}}relay {c['relay']:.2f}ms, mosquitto {c['mosquitto']:.2f}ms, " \
           f"bench {c['bench']:.2f}ms (wall {c['wall']:.2f}ms)"


def to_json(m: dict[str, Any], r: dict[str, Any], plan: Plan, relay: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": m, "plan": asdict(plan), "relay": relay}
    for key, value in r.items():
        if isinstance(value, Summary | scenarios.Sequential | scenarios.Burst):
            out[key] = value.as_dict()
        elif isinstance(value, scenarios.Fill):
            out[key] = asdict(value)
        else:
            out[key] = value
    f = r["floor_http"].p50_ms + r["floor_fsync"].p50_ms + r["floor_mqtt"].p50_ms
    out["floor_sum_p50_ms"] = None if math.isnan(f) else round(f, 4)
    return out


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same cleanup as a Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    world = World.create()
    results: dict[str, Any] | None = None
    failure: str | None = None
    t0 = time.monotonic()
    try:
        info = machine(world)
        world.start_broker()
        world.start_relay()
        world.start_floor_server()
        rss_start = rss_mb(world.relay.pid)
        if plan.profile:
            world.start_profiler(Path(plan.profile).resolve())
        results = asyncio.run(measure(world, plan))
        results["rss_start_mb"] = rss_start
        results["relay_log_lines_before_stop"] = len(world.relay_log())
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        world.stop()
        relay_log = world.relay_log()
        world.remove()
    relay = {"exit_code": world.relay_exit, "stderr_lines": len(relay_log), "stderr_tail": relay_log[-20:]}

    if failure is not None or results is None:
        print(f"benchmark failed: {failure}", file=sys.stderr)
        if relay_log:
            print(f"relay stderr (last {len(relay_log[-30:])} of {len(relay_log)} lines):", file=sys.stderr)
            for line in relay_log[-30:]:
                print(f"  {line}", file=sys.stderr)
        return 130 if failure == "interrupted" else 1

    print("\n".join(render(info, results, plan)))
    print(f"\nrun took {time.monotonic() - t0:.0f} s; relay exit code {world.relay_exit}; "
          f"relay stderr (log_level=warning): {results['relay_log_lines_before_stop']} lines while measuring, "
          f"{len(relay_log)} in all; duplicate alerts received: {results['duplicates']}")
    for line in relay_log[:10]:
        print(f"  relay: {line}")
    out = REPO / "var" / "bench-last.json"
    out.write_text(json.dumps(to_json(info, results, plan, relay), indent=2, default=str) + "\n")
    print(f"results: {out.relative_to(REPO)}")
    return 0
