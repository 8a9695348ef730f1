"""The printed table and the JSON record of one run."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench import scenarios, table
from bench.peer import PeerSequential
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


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


def _all(*oks: bool | None) -> bool | None:
    """FAIL if any known part fails; n/a if a part cannot be judged (no peer); PASS otherwise."""
    if any(ok is False for ok in oks):
        return False
    return None if any(ok is None for ok in oks) else True


def _le(x: float | None, limit: float) -> bool | None:
    return None if x is None else x <= limit


def peer_measured(r: dict[str, Any]) -> dict[str, Any] | None:
    p = r.get("peer") or {}
    return p if p.get("status") == "measured" else None


def comparisons(r: dict[str, Any], plan: Plan) -> dict[str, dict[str, Any]]:
    """Each of our figures, its floor (measured in the same run) and the peer's (Alertmanager, same run),
    the two ratios and the issue's target for it (issue 13, item 8)."""
    seq: scenarios.Sequential = r["sequential"]
    cold: scenarios.Burst = r["burst_cold"]
    p = peer_measured(r)
    pseq = p["sequential"].end_to_end if p else None
    open_now = r["open_alerts"] or 0
    rows: dict[str, dict[str, Any]] = {
        "sequential_p50_ms": {
            "ours": _num(seq.end_to_end.p50_ms), "floor": _num(floor_sum_ms(r)),
            "peer": _num(pseq.p50_ms) if pseq else None, "target": "<=1.3x floor, <=2.5x peer"},
        "sequential_p99_ms": {
            "ours": _num(seq.end_to_end.p99_ms),
            "floor": _num(r["floor_http"].p99_ms + r["floor_fsync"].p99_ms + r["floor_mqtt"].p99_ms),
            "peer": _num(pseq.p99_ms) if pseq else None, "target": "<=2x peer"},
        "burst_cold_s": {
            "ours": _num(cold.complete_s), "floor": _num(r["floor_http_burst_cold_s"]),
            "peer": _num(p["burst_cold"]["complete_s"]) if p else None, "target": "<=1.5x client floor"},
        "cpu_per_sequential_report_ms": {
            "ours": _num(r["cpu_sequential_ms"]["relay"]), "floor": _num(r["cpu_floor_http_ms"]["floor_server"]),
            "peer": _num(p["cpu_sequential_ms"]) if p else None, "target": "<=0.7 ms"},
        "rss_open_mb": {
            "ours": _num(r["rss_open_mb"]), "floor": None,
            "peer": _num(p["rss_open_mb"]) if p else None,
            "target": "<100 MB" if open_now >= 10000 else "(<100 MB at 10000)"},
    }
    for row in rows.values():
        row["x_floor"] = _ratio(row["ours"], row["floor"])
        row["x_peer"] = _ratio(row["ours"], row["peer"])
    a, b, c, d, e = rows.values()
    a["ok"] = _all(_le(a["x_floor"], 1.3), _le(a["x_peer"], 2.5))
    b["ok"] = _le(b["x_peer"], 2.0)
    c["ok"] = _le(c["x_floor"], 1.5)
    d["ok"] = _le(d["ours"], 0.7)
    e["ok"] = None if open_now < 10000 or e["ours"] is None else e["ours"] < 100
    return rows


def _compare_lines(r: dict[str, Any], plan: Plan) -> list[str]:
    rows = comparisons(r, plan)
    p = peer_measured(r)
    status = (r.get("peer") or {}).get("status", "not measured")
    title = (f"against the floor and the peer (Alertmanager {p['version']}, POST /api/v2/alerts -> webhook)" if p
             else f"against the floor and the peer (Alertmanager: {status})")

    def fmt(key: str, v: float | None) -> str:
        if v is None:
            return "n/a"
        if key.endswith("_s"):
            return f"{v:.3f} s"
        if key.endswith("_mb"):
            return f"{v:.1f} MB"
        return table.ms(v)

    names = {
        "sequential_p50_ms": "POST -> delivered, sequential p50",
        "sequential_p99_ms": "POST -> delivered, sequential p99",
        "burst_cold_s": f"{plan.burst} at once (cold) -> all delivered",
        "cpu_per_sequential_report_ms": "CPU per sequential report",
        "rss_open_mb": f"RSS with {r['open_alerts'] or 0:.0f} open alerts",
    }
    out = [title, table.compare_header(), table.rule()]
    for key, row in rows.items():
        floor = fmt(key, row["floor"]) if key != "rss_open_mb" else "-"
        out.append(table.compare_row(names[key], fmt(key, row["ours"]), floor, row["x_floor"],
                                     fmt(key, row["peer"]), row["x_peer"], row["target"], row["ok"]))
    out += ["floor: p50 = HTTP + fsync + MQTT p50s; p99 = the sum of their p99s; burst = the same client's "
            f"{plan.burst} POSTs",
            "  at once to the trivial server (cold); CPU = the trivial server's per request. The peer: the same "
            "counts, run after",
            "  the relay's phases; CPU = Alertmanager's process per alert (bench/README.md, \"The peer\")"]
    if p:
        ps = p["sequential"]
        pb = p["burst_cold"]
        out += [
            table.rule(),
            table.latency_row(f"peer: POST -> webhook (sequential, n={ps.end_to_end.n})", ps.end_to_end),
            table.latency_row("peer: POST -> 200 answer (same posts)", ps.post_200),
            table.latency_row("peer: 200 answer -> webhook (same posts)", ps.answer_to_hook),
            table.value_row("peer: webhook had it before the client had the 200",
                            f"{ps.hook_first} of {ps.end_to_end.n}"),
            table.value_row(f"peer: {pb['n']} at once -> webhook has all",
                            "incomplete" if pb["complete_s"] is None
                            else f"{pb['complete_s']:.3f} s, {pb['reports_per_s']:.0f} alerts/s"),
            table.value_row("peer: CPU ms per alert, sequential / burst",
                            f"{p['cpu_sequential_ms']:.2f} / {p['cpu_burst_cold_ms']:.2f}"),
            table.value_row(f"peer: RSS at start / with {p['open_alerts'] or 0:.0f} open alerts",
                            f"{p['rss_start_mb']:.1f} / {p['rss_open_mb']:.1f} MB"),
            table.value_row("peer: lost / non-200 / duplicates", f"{p['lost']} / {p['non_200']} / {p['duplicates']}"),
        ]
    return out


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
        f"mosquitto {m['mosquitto']}, Alertmanager {m.get('alertmanager', '?')}, store on {m['store_fs']}; "
        f"relay at {m['relay_commit']}; profile: "
        + ("site (two desks, SMS and e-mail configured, info logs)" if plan.site else "minimal (one desk, MQTT, "
           "warning logs)")
        + (f"; tracks on, {plan.tracks} other open tracks" if plan.tracks else ""),
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
        table.rule(),
        *_compare_lines(r, plan),
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
    out["comparisons"] = comparisons(r, plan)
    for key, row in out["comparisons"].items():
        out["targets"][f"issue13_{key}"] = row["ok"]
    p = r.get("peer")
    if isinstance(p, dict) and isinstance(p.get("sequential"), PeerSequential):
        out["peer"] = {**p, "sequential": p["sequential"].as_dict()}
    return out
