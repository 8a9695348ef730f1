"""`python -m bench.cot`: issue 18's Cursor-on-Target target, a track update -> its event on the TAK side,
p99 <= 100 ms. The relay runs in this process on real sockets (HTTP intake, a real Mosquitto for its consoles,
SQLite store) with `[cot]` pointed at a CoT listener (tests/support/cot_listener.py, parsing with defusedxml).

1. sequential: N reports, one at a time, spread over K tracks (each report joins its track: an update); for each,
   from the POST leaving here to the listener parsing the track's event that counts that report.
2. burst: B reports at once over the same tracks; from the first POST to each track's event counting all of its
   reports (coalescing: fewer events than reports, never a stale last one).

See bench/README.md, "Cursor-on-Target"."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import in_process
from bench.in_process import say
from bench.stats import Summary, summarize
from bench.table import header, latency_row, rule, value_row
from tests.support.broker import Mosquitto
from tests.support.cot_listener import CotEvent, CotListener
from tests.support.relay import RunningRelay, report, running_relay, settings_dict

TARGET_P99_MS = 100.0
# K places 100 km apart (they never join each other's tracks), around Lipetsk
ORIGIN = (52.0, 38.0)


def place(k: int) -> tuple[float, float]:
    return ORIGIN[0] + 0.9 * (k % 5), ORIGIN[1] + 1.5 * (k // 5)


def body(report_id: str, k: int, n: int) -> dict[str, Any]:
    lat, lon = place(k)
    jitter = (n % 7) * 0.0005  # a few tens of metres: the same hovering drone
    return report(report_id, observed_at=datetime.now(UTC).isoformat(), uav_type="multirotor", movement="hovering",
                  speed="slow", location={"lat": lat + jitter, "lon": lon - jitter, "district": "Липецкий район"})


def counts(track_id: str, reports: int):  # type: ignore[no-untyped-def]
    uid = f"uav-relay.{track_id}"

    def match(e: CotEvent) -> bool:
        mine = e.detail("uav_relay")
        return e.uid == uid and mine is not None and int(mine.get("reports", "0")) >= reports
    return match


async def file(relay: RunningRelay, b: dict[str, Any]) -> str:
    status, accepted = await relay.post_report(b)
    if status != 201:
        raise RuntimeError(f"report refused: {status} {accepted}")
    return str(accepted["alert_id"])


async def sequential(relay: RunningRelay, cot: CotListener, tracks: list[str], n: int) -> dict[str, Any]:
    seen = [1] * len(tracks)
    lat: list[float] = []
    answered: list[float] = []
    for i in range(n):
        k = i % len(tracks)
        seen[k] += 1
        before = len(cot.events)
        t0 = time.perf_counter()
        await file(relay, body(f"seq-{i}", k, i))
        answered.append(time.perf_counter() - t0)
        e = await cot.wait_for(counts(tracks[k], seen[k]), after=before, timeout=10, what=f"update {i}")
        lat.append(e.at - t0)
    return {"n": n, "lat": summarize(lat), "http": summarize(answered)}


async def burst(relay: RunningRelay, cot: CotListener, tracks: list[str], n: int, base: list[int]) -> dict[str, Any]:
    before = len(cot.events)
    t0 = time.perf_counter()
    await asyncio.gather(*(file(relay, body(f"burst-{i}", i % len(tracks), i)) for i in range(n)))
    answered = time.perf_counter() - t0
    want = [base[k] + sum(1 for i in range(n) if i % len(tracks) == k) for k in range(len(tracks))]
    done = [await cot.wait_for(counts(t, w), after=before, timeout=20, what=f"track {t} current")
            for t, w in zip(tracks, want, strict=True)]
    return {"n": n, "answered_s": answered, "current": summarize([e.at - t0 for e in done]),
            "events": len(cot.events) - before}


async def measure(work: Path, n: int, k: int, n_burst: int, out: dict[str, Any]) -> None:
    (work / "broker").mkdir(exist_ok=True)
    broker = Mosquitto(work / "broker")
    broker.start()
    cot = CotListener()
    await cot.start()
    try:
        cfg = settings_dict(broker.port, work / "data")
        cfg["relay"] = {**cfg["relay"], "log_level": "error"}
        cfg["tracks"] = {"enabled": True}
        cfg["http"] = {**cfg["http"], "rate_per_s": 100_000, "rate_burst": 100_000}
        cfg["cot"] = {"enabled": True, "url": cot.url}
        async with running_relay(cfg) as relay:
            say(f"warm-up: {k} tracks ...")
            tracks = []
            for j in range(k):
                alert_id = await file(relay, body(f"start-{j}", j, 0))
                tracks.append(str((await relay.alert(alert_id))["track_id"]))
                await cot.wait_for(counts(tracks[-1], 1), timeout=10)
            say(f"1. {n} updates, one at a time, over {k} tracks ...")
            out["seq"] = await sequential(relay, cot, tracks, n)
            say(f"   p50 {out['seq']['lat'].p50_ms:.1f} ms, p99 {out['seq']['lat'].p99_ms:.1f} ms")
            base = [1 + sum(1 for i in range(n) if i % k == j) for j in range(k)]
            say(f"2. a burst of {n_burst} reports at once over the same tracks ...")
            out["burst"] = await burst(relay, cot, tracks, n_burst, base)
            out["unparsable"] = len(cot.unparsable)
    finally:
        await cot.stop()
        broker.stop()


def render(info: dict[str, Any], r: dict[str, Any]) -> list[str]:
    lines = [f"uav-relay, Cursor-on-Target — {info['date']}, {info['cpu']}, {info['cores']} cores, Python "
             f"{info['python']}; relay in this process, SQLite, CoT over TCP on loopback", header(), rule()]
    if "seq" in r:
        s: Summary = r["seq"]["lat"]
        lines.append(latency_row(f"1. report (HTTP) -> its track's CoT event, n={r['seq']['n']}", s,
                                 f"p99 <= {TARGET_P99_MS:.0f} ms", s.p99_ms <= TARGET_P99_MS))
        lines.append(latency_row("   of which the HTTP answer (201)", r["seq"]["http"]))
    if "burst" in r:
        b = r["burst"]
        lines.append(latency_row(f"2. burst of {b['n']}: first POST -> each track current", b["current"]))
        lines.append(value_row("   all answered (201) after", f"{b['answered_s'] * 1000:.0f}ms"))
        lines.append(value_row("   events for the burst (coalesced per track)", str(b["events"])))
    if "unparsable" in r:
        lines.append(value_row("events that did not parse", str(r["unparsable"]), "0", r["unparsable"] == 0))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args(argv)
    return in_process.run("bench-cot", lambda work, results: measure(work, args.updates, args.tracks, args.burst,
                                                                       results), render)


if __name__ == "__main__":
    sys.exit(main())
