"""`python -m bench`: start a private broker, the relay and an HTTP floor server; measure; print; clean up."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import peer
from bench.env import REPO, World, fs_type, mosquitto_version, rss_mb
from bench.meters import HostMeter, cpu_probe_ms
from bench.report import render, to_json
from bench.run import Plan, measure


def parse(argv: Sequence[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sequential", type=int, default=1000, help="reports posted one after another (1000)")
    p.add_argument("--burst", type=int, default=1000, help="reports posted all at once (1000)")
    p.add_argument("--open", type=int, default=10000, help="open alerts when the relay's RSS is read (10000)")
    p.add_argument("--floor", type=int, default=1000, help="samples per floor measurement (1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 sequential, 100 burst, 1000 open")
    p.add_argument("--no-peer", action="store_true",
                   help="do not measure the peer (Alertmanager relaying an alert to a webhook)")
    p.add_argument("--site", action="store_true",
                   help="the relay configured as a site runs it: two desks, SMS and e-mail configured, info logs")
    p.add_argument("--tracks", type=int, default=0, metavar="N",
                   help="tracks on, with N other open tracks (reports 30 km apart) before the measurements (0: off)")
    p.add_argument("--profile", metavar="FILE",
                   help="also sample the relay with py-spy (--gil) into FILE; see bench/profile_summary.py")
    a = p.parse_args(argv)
    if min(a.sequential, a.burst, a.floor) < 1 or a.open < 0:
        p.error("counts must be positive")
    if a.quick:
        return Plan(warmup=10, sequential=100, burst=100, open=1000, floor=100, profile=a.profile,
                    peer=not a.no_peer, site=a.site, tracks=a.tracks)
    return Plan(warmup=50, sequential=a.sequential, burst=a.burst, open=a.open, floor=a.floor, profile=a.profile,
                peer=not a.no_peer, site=a.site, tracks=a.tracks)


def relay_version() -> str:
    """The commit the relay was measured at, and whether relay/ or channels/ had uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "relay", "channels")
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "mosquitto": mosquitto_version(),
            "kernel": platform.release(), "store_fs": fs_type(REPO / "var"),
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "relay_commit": relay_version(),
            "cpu_probe_ms": cpu_probe_ms(), "alertmanager": peer.version()}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same cleanup as a Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where it was inherited as ignored
    t0 = time.monotonic()
    host = HostMeter()
    info = machine()
    world = World.create()
    results: dict[str, Any] | None = None
    failure: str | None = None
    try:
        world.start_broker()
        world.start_relay(site=plan.site, tracks=plan.tracks > 0)
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
    info.update(host.stop())
    relay = {"exit_code": world.relay_exit, "stderr_lines": len(relay_log), "stderr_tail": relay_log[-20:]}

    if failure is not None or results is None:
        print(f"benchmark failed: {failure}", file=sys.stderr)
        if relay_log:
            print(f"relay stderr (last {len(relay_log[-30:])} of {len(relay_log)} lines):", file=sys.stderr)
            for line in relay_log[-30:]:
                print(f"  {line}", file=sys.stderr)
        return 130 if failure == "interrupted" else 1

    print("\n".join(render(info, results, plan)))
    print(f"run took {time.monotonic() - t0:.0f} s; relay exit code {world.relay_exit}; relay stderr "
          f"(log_level={'info' if plan.site else 'warning'}): {results['relay_log_lines_before_stop']} lines while "
          "measuring, "
          f"{len(relay_log)} in all; duplicate alerts received: {results['duplicates']}")
    for line in ([] if plan.site else relay_log[:10]):  # at info, every report logs
        print(f"  relay: {line}")
    out = REPO / "var" / "bench-last.json"
    out.write_text(json.dumps(to_json(info, results, plan, relay), indent=2, default=str) + "\n")
    print(f"results: {out.relative_to(REPO)}")
    return 0
