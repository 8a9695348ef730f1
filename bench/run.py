"""One measuring run against a started World: floors, sequential, isolated, bursts, fill, memory."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import floors, peer, scenarios
from bench.console import Receiver
from bench.env import ALERT_TOPIC, World, rss_mb
from bench.meters import CpuMeter

ISOLATION_GAP_S = 0.02


@dataclass(frozen=True)
class Plan:
    warmup: int
    sequential: int
    burst: int
    open: int
    floor: int
    profile: str | None = None
    peer: bool = True  # also measure Alertmanager (bench/peer.py), where it is installed
    # what a site runs: two routed desks, SMS and e-mail configured (not fired: no ack is due), info logs
    site: bool = False
    # tracks on, and this many other open tracks (far from where the measured reports are) before measuring
    tracks: int = 0

    @property
    def isolated(self) -> int:
        return max(1, self.sequential // 5)

    @property
    def before_fill(self) -> int:
        """Alerts created before the fill: warm-up, sequential, isolated, the cold and the warm burst."""
        return self.warmup + self.sequential + self.isolated + 2 * self.burst


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_alive(world: World, phase: str) -> None:
    code = world.relay.proc.poll()
    if code is not None:
        raise RuntimeError(f"the relay exited with code {code} during {phase}")


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))


async def relay_metric(s: aiohttp.ClientSession, port: int, name: str) -> float | None:
    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            series, _, value = line.rpartition(" ")
            if series == name:
                return float(value)
    return None


async def measure_floors(world: World, plan: Plan, out: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{world.floor_port}/api/v1/reports"
    say("floors ...")
    async with session(1) as s:
        cpu = CpuMeter(world).start()
        out["floor_http"] = await floors.http_floor(s, url, plan.floor)
        out["cpu_floor_http_ms"] = cpu.per_item_ms(plan.floor + floors.WARMUP)
    for warm in (False, True):
        async with session(0) as s:
            if warm:
                await scenarios.open_connections(s, f"http://127.0.0.1:{world.floor_port}/readyz", plan.burst)
            cpu = CpuMeter(world).start()
            out[f"floor_http_burst_{'warm' if warm else 'cold'}_s"] = await floors.http_burst_floor(s, url, plan.burst)
            out[f"cpu_floor_http_burst_{'warm' if warm else 'cold'}_ms"] = cpu.per_item_ms(plan.burst)
    out["floor_fsync"] = floors.fsync_floor(world.workdir / "floor.db", plan.floor)
    out["floor_mqtt"] = await floors.mqtt_floor(world.broker_port, plan.floor, str(os.getpid()))


async def measure(world: World, plan: Plan) -> dict[str, Any]:
    url = f"http://127.0.0.1:{world.relay_port}/api/v1/reports"
    out: dict[str, Any] = {}
    phases: list[Any] = []
    async with Receiver(world.broker_port, "bench-console-airfield-1", ALERT_TOPIC) as console:
        await measure_floors(world, plan, out)

        if plan.tracks:
            say(f"tracks on: {plan.tracks} other open tracks first ...")
            async with session(0) as s:
                out["track_seed"] = await scenarios.fill(s, url, console, "t", plan.tracks,
                                                         body=scenarios.elsewhere_body)
        say(f"sequential: {plan.warmup} warm-up + {plan.sequential}, then {plan.isolated} isolated ...")
        async with session(1) as s:
            phases.append(await scenarios.sequential(s, url, console, "w", plan.warmup))
            check_alive(world, "warm-up")
            cpu = CpuMeter(world).start()
            out["sequential"] = await scenarios.sequential(s, url, console, "s", plan.sequential)
            out["cpu_sequential_ms"] = cpu.per_item_ms(plan.sequential)
            check_alive(world, "sequential")
            out["isolated"] = await scenarios.sequential(s, url, console, "i", plan.isolated, ISOLATION_GAP_S)
            check_alive(world, "isolated")

        for warm in (False, True):
            kind = "warm" if warm else "cold"
            say(f"burst: {plan.burst} at once, {kind} connections ...")
            async with session(0) as s:
                if warm:
                    await scenarios.open_connections(s, f"http://127.0.0.1:{world.relay_port}/healthz", plan.burst)
                cpu = CpuMeter(world).start()
                out[f"burst_{kind}"] = await scenarios.burst(s, url, console, f"b{kind[0]}", plan.burst)
                out[f"cpu_burst_{kind}_ms"] = cpu.per_item_ms(plan.burst)
                check_alive(world, f"burst ({kind})")

        remaining = max(0, plan.open - plan.before_fill)
        say(f"filling to {plan.open} open alerts ({remaining} more, 500 at a time) ...")
        async with session(0) as s:
            out["fill"] = await scenarios.fill(s, url, console, "o", remaining)
            check_alive(world, "fill")
            out["open_alerts"] = await relay_metric(s, world.relay_port, "relay_alerts_open")
        out["rss_open_mb"] = rss_mb(world.relay.pid)
        out["hwm_mb"] = rss_mb(world.relay.pid, "VmHWM")
        phases += [out["sequential"], out["isolated"], out["burst_cold"], out["burst_warm"], out["fill"]]
        out["lost"] = sum(p.lost for p in phases)
        out["non_201"] = sum(p.non_201 for p in phases)
        out["duplicates"] = console.duplicates
        out["alerts_received"] = len(console.received)
    out["peer"] = await measure_peer(world, plan)
    return out


async def measure_peer(world: World, plan: Plan) -> dict[str, Any]:
    """Alertmanager with the same counts, after the relay's phases (the relay then holds its alerts, idle).

    Never fails the run: a missing binary or an error leaves the peer's columns "n/a"."""
    if not plan.peer:
        return {"status": "skipped (--no-peer)"}
    if peer.binary() is None:
        return {"status": "not installed (apt-get install prometheus-alertmanager)"}
    workdir = world.workdir / "peer"
    workdir.mkdir()
    try:
        result = await peer.measure(workdir, plan.warmup, plan.sequential, plan.burst, plan.open,
                                    procs=world.procs, say=say)
    except Exception as exc:
        say(f"peer failed: {type(exc).__name__}: {exc}")
        return {"status": f"failed: {type(exc).__name__}: {exc}"}
    result["status"] = "measured"
    return result
