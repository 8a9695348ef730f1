"""The printed table and the JSON record of one run."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench import scenarios, table
from bench.run import ISOLATION_GAP_S, Plan
from bench.stats import Summary


def _burst_value(b: scenarios.Burst) -> str:
    if b.complete_s is None:
        return f"incomplete ({b.lost} lost)"
    return f"{b.complete_s:.3f} s, {b.per_s:.0f} reports/s"


def _relay_cpu(name: str, c: dict[str, float]) -> str:
    return (f"{name:<{table.NAME_W}}relay {c['relay']:.2f} (main thread {c['relay_main_thread']:.2f}, "
            f"kernel {c['relay_kernel']:.2f}), mosquitto {c['mosquitto']:.2f}, bench {c['bench']:.2f}, "
            f"wall {c['wall']:.2f}")


def _server_cpu(name: str, c: dict[str, float]) -> str:
    return f"{name:<{table.NAME_W}}server {c['floor_server']:.2f}, bench {c['bench']:.2f}, wall {c['wall']:.2f}"


def floor_sum_ms(r: dict[str, Any]) -> float:
    return float(r["floor_http"].p50_ms + r["floor_fsync"].p50_ms + r["floor_mqtt"].p50_ms)


def targets(r: dict[str, Any], plan: Plan) -> dict[str, bool | None]:
    e2e: Summary = r["sequential"].end_to_end
    cold: scenarios.Burst = r["burst_cold"]
    open_now = r["open_alerts"] or 0
    return {
        "sequential_p50_lt_1_5ms_p99_lt_5ms": e2e.p50_ms < 1.5 and e2e.p99_ms < 5,
        "burst_1000_lt_0_5s": None if plan.burst != 1000 else (cold.complete_s or math.inf) < 0.5,
        "nothing_lost": r["lost"] == 0 and r["non_201"] == 0,
        "rss_lt_100mb_at_10000_open": None if open_now < 10000 else r["rss_open_mb"] < 100,
    }


def render(m: dict[str, Any], r: dict[str, Any], plan: Plan) -> list[str]:
    seq: scenarios.Sequential = r["sequential"]
    iso: scenarios.Sequential = r["isolated"]
    cold: scenarios.Burst = r["burst_cold"]
    warm: scenarios.Burst = r["burst_warm"]
    ok = targets(r, plan)
    n, fl, nb = plan.sequential, plan.floor, plan.burst
    open_now = r["open_alerts"]
    open_txt = "?" if open_now is None else f"{open_now:.0f}"
    lat, val = table.latency_row, table.value_row
    return [
        f"uav-relay benchmark — {m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"mosquitto {m['mosquitto']}, store on {m['store_fs']}; relay at {m['relay_commit']}",
        table.header(),
        table.rule(),
        lat(f"HTTP POST -> console (sequential, n={n})", seq.end_to_end, "p50<1.5ms p99<5ms",
            ok["sequential_p50_lt_1_5ms_p99_lt_5ms"]),
        lat(f"HTTP POST -> 201 answer (same {n} posts)", seq.post_201),
        lat("  split: POST sent -> relay accepts", seq.to_accept),
        lat("  split: relay accepts -> 201 at client", seq.accept_to_201),
        lat("  split: relay accepts -> console has alert", seq.accept_to_console),
        lat(f"HTTP POST -> console (isolated, n={plan.isolated})", iso.end_to_end),
        lat(f"HTTP POST -> 201 answer (isolated, n={plan.isolated})", iso.post_201),
        table.rule(),
        lat(f"floor: bare HTTP POST round trip (n={fl})", r["floor_http"]),
        lat(f"floor: fsync'd SQLite commit (n={fl})", r["floor_fsync"]),
        lat(f"floor: bare MQTT QoS 1 round trip (n={fl})", r["floor_mqtt"]),
        val("floor sum: HTTP + fsync + MQTT (p50)", table.ms(floor_sum_ms(r))),
        table.rule(),
        val(f"burst: {nb} at once -> console has all", _burst_value(cold),
            "<0.5 s" if nb == 1000 else "(<0.5 s for 1000)", ok["burst_1000_lt_0_5s"]),
        val("  same burst: start -> last 201 answer", f"{cold.all_answered_s:.3f} s"),
        lat("  same burst: POST -> 201 answer, each", cold.post_201),
        val(f"burst, {nb} warm connections -> console has all", _burst_value(warm)),
        val("  same burst: start -> last 201 answer", f"{warm.all_answered_s:.3f} s"),
        val(f"floor: {nb} POSTs at once, trivial server",
            f"cold {r['floor_http_burst_cold_s']:.3f} s, warm {r['floor_http_burst_warm_s']:.3f} s"),
        val("lost alerts / non-201 answers (all phases)", f"{r['lost']} / {r['non_201']}", "0 / 0",
            ok["nothing_lost"]),
        table.rule(),
        "CPU ms per report (per request for the trivial server), from /proc; 10 ms ticks",
        _relay_cpu("  relay, sequential", r["cpu_sequential_ms"]),
        _relay_cpu("  relay, burst (cold connections)", r["cpu_burst_cold_ms"]),
        _relay_cpu("  relay, burst (warm connections)", r["cpu_burst_warm_ms"]),
        _server_cpu("  trivial server, sequential", r["cpu_floor_http_ms"]),
        _server_cpu("  trivial server, burst (cold connections)", r["cpu_floor_http_burst_cold_ms"]),
        _server_cpu("  trivial server, burst (warm connections)", r["cpu_floor_http_burst_warm_ms"]),
        table.rule(),
        val("relay RSS right after startup", f"{r['rss_start_mb']:.1f} MB"),
        val(f"relay RSS with {open_txt} open alerts", f"{r['rss_open_mb']:.1f} MB",
            "<100 MB" if ok["rss_lt_100mb_at_10000_open"] is not None else "(<100 MB at 10000)",
            ok["rss_lt_100mb_at_10000_open"]),
        val("relay peak RSS (VmHWM)", f"{r['hwm_mb']:.1f} MB"),
        "",
        f"isolated = {ISOLATION_GAP_S * 1000:.0f} ms idle before each report; warm = the burst's {nb} connections "
        "opened (GET) before the clock starts",
        f"load average at start {m['loadavg']}; CPU steal during the run {m['steal_pct']:.1f} %, "
        f"iowait {m['iowait_pct']:.1f} %; CPU probe {m['cpu_probe_ms']:.1f} ms (a fixed Python loop, lower = faster)",
    ]


def to_json(m: dict[str, Any], r: dict[str, Any], plan: Plan, relay: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": m, "plan": asdict(plan), "relay": relay}
    for key, value in r.items():
        if isinstance(value, Summary | scenarios.Sequential | scenarios.Burst):
            out[key] = value.as_dict()
        elif isinstance(value, scenarios.Fill):
            out[key] = asdict(value)
        else:
            out[key] = value
    f = floor_sum_ms(r)
    out["floor_sum_p50_ms"] = None if math.isnan(f) else round(f, 4)
    out["targets"] = targets(r, plan)
    return out
