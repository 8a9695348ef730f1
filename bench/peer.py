"""The peer: Prometheus Alertmanager relaying an alert to a webhook, measured the way the relay is.

Alertmanager (Debian's `prometheus-alertmanager`) runs as its own process on a free loopback port, clustering
off, storage in the work dir. Its route sends every alert at once to one webhook receiver: `group_by: ['...']`
(each alert is its own group), `group_wait: 0s`. The webhook is an aiohttp server inside the bench process that
stamps `time.perf_counter()` the moment a notification's body has been read, keyed by the alert's `id` label.

`python -m bench.peer` runs the peer alone (for experiments with its settings); `python -m bench` runs it in
the same run as the relay (skip with `--no-peer`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.arrivals import Arrivals
from bench.env import Proc, _spawn, cpu_s, free_port, rss_mb, wait_ready
from bench.scenarios import RECEIVE_TIMEOUT_S
from bench.stats import Summary, summarize

BINARIES = ("prometheus-alertmanager", "alertmanager")
HEADERS = {"Content-Type": "application/json"}
# a long interval: a group's later flushes only re-check an alert that was already sent (see bench/README.md)
GROUP_INTERVAL = "1h"


def binary() -> str | None:
    return next((path for b in BINARIES if (path := shutil.which(b)) is not None), None)


def version() -> str:
    exe = binary()
    if exe is None:
        return "not installed"
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    # "alertmanager, version 0.25.0 (branch: debian/sid, revision: 0.25.0-1+b4)"
    return first[0].split("version", 1)[1].split("(")[0].strip() if first and "version" in first[0] else "unknown"


def config_yaml(hook_url: str, group_interval: str) -> str:
    return f"""\
global:
  resolve_timeout: 1h
route:
  receiver: bench
  group_by: ['...']
  group_wait: 0s
  group_interval: {group_interval}
  repeat_interval: 24h
receivers:
  - name: bench
    webhook_configs:
      - url: {json.dumps(hook_url)}
        send_resolved: false
"""


class Hook(Arrivals):
    """The webhook receiver: `received[id]` is the perf_counter() at which the alert labelled `id` arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.notifications = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        t = time.perf_counter()
        self.notifications += 1
        for alert in json.loads(body).get("alerts", []):
            key = alert.get("labels", {}).get("id")
            if key is not None:
                self.arrived(key, t)
        return web.Response(text="ok")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Hook:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def start(workdir: Path, hook_url: str, group_interval: str = GROUP_INTERVAL) -> tuple[Proc, int]:
    """Alertmanager on a free loopback port, clustering off, its storage in `workdir`; waits for /-/ready."""
    exe = binary()
    if exe is None:
        raise RuntimeError("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    port = free_port()
    conf = workdir / "alertmanager.yml"
    conf.write_text(config_yaml(hook_url, group_interval))
    (workdir / "alertmanager-data").mkdir(exist_ok=True)
    argv = [exe, f"--config.file={conf}", f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"]
    p = _spawn("alertmanager", argv, workdir / "alertmanager.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", p.proc, "alertmanager")
    except BaseException:
        p.stop()
        raise
    return p, port


def alert_body(key: str) -> bytes:
    """One alert, about the size of a report; startsAt/endsAt are left to Alertmanager (now, now + 1h)."""
    return json.dumps([{
        "labels": {"alertname": "UavSighting", "desk": "airfield-1", "id": key},
        "annotations": {"location": "52.6,39.6", "uav_type": "multirotor", "count": "1"},
    }]).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(url, data=body, headers=HEADERS) as r:
        await r.read()
        return r.status


@dataclass
class PeerSequential:
    end_to_end: Summary  # POST -> webhook has the alert
    post_200: Summary  # POST -> Alertmanager's 200
    non_200: int
    lost: int
    answer_to_hook: Summary  # 200 at the client -> webhook has it (negative: the webhook had it first)
    hook_first: int  # how often the webhook had the alert before the client had the 200

    def as_dict(self) -> dict[str, Any]:
        return {"end_to_end_ms": self.end_to_end.as_dict(), "post_200_ms": self.post_200.as_dict(),
                "non_200": self.non_200, "lost": self.lost, "answer_to_hook_ms": self.answer_to_hook.as_dict(),
                "hook_first": self.hook_first}


async def sequential(session: aiohttp.ClientSession, url: str, hook: Hook, prefix: str, n: int) -> PeerSequential:
    """One alert at a time, the next only after the webhook had the previous one (as the relay's sequential)."""
    e2e: list[float] = []
    rtt: list[float] = []
    after: list[float] = []
    non_200 = lost = 0
    for i in range(n):
        key = f"{prefix}-{i}"
        body = alert_body(key)
        t0 = time.perf_counter()
        status = await post(session, url, body)
        t1 = time.perf_counter()
        if status != 200:
            non_200 += 1
            continue
        rtt.append(t1 - t0)
        try:
            t2 = await hook.wait(key, RECEIVE_TIMEOUT_S)
        except TimeoutError:
            lost += 1
            continue
        e2e.append(t2 - t0)
        after.append(t2 - t1)
    return PeerSequential(summarize(e2e), summarize(rtt), non_200, lost, summarize(after),
                          sum(1 for a in after if a < 0))


async def _timed(session: aiohttp.ClientSession, url: str, body: bytes) -> int | str:
    try:
        return await post(session, url, body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def burst(session: aiohttp.ClientSession, url: str, hook: Hook, prefix: str, n: int) -> dict[str, Any]:
    """`n` POSTs (one alert each) at once on fresh connections; complete = the webhook had the last alert."""
    keys = [f"{prefix}-{i}" for i in range(n)]
    bodies = [alert_body(k) for k in keys]
    t0 = time.perf_counter()
    statuses = await asyncio.gather(*(_timed(session, url, b) for b in bodies))
    answered = time.perf_counter() - t0
    ok = [k for k, s in zip(keys, statuses, strict=True) if s == 200]
    missing = await hook.wait_all(ok, RECEIVE_TIMEOUT_S)
    complete = None if missing else max((hook.received[k] for k in ok), default=t0) - t0
    return {"n": n, "complete_s": complete, "reports_per_s": n / complete if complete else None,
            "all_answered_s": answered, "non_200": n - len(ok), "lost": len(missing)}


async def fill(session: aiohttp.ClientSession, url: str, hook: Hook, prefix: str, n: int,
               chunk: int = 500) -> dict[str, Any]:
    """`n` more alerts, `chunk` POSTs at a time concurrently (as the relay's fill); wait for every one."""
    t0 = time.perf_counter()
    ok: list[str] = []
    for start_at in range(0, n, chunk):
        keys = [f"{prefix}-{i}" for i in range(start_at, min(n, start_at + chunk))]
        statuses = await asyncio.gather(*(_timed(session, url, alert_body(k)) for k in keys))
        ok += [k for k, s in zip(keys, statuses, strict=True) if s == 200]
    missing = await hook.wait_all(ok, RECEIVE_TIMEOUT_S)
    return {"posted": n, "non_200": n - len(ok), "lost": len(missing), "seconds": time.perf_counter() - t0}


async def active_alerts(session: aiohttp.ClientSession, port: int) -> float | None:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            series, _, value = line.rpartition(" ")
            if series == 'alertmanager_alerts{state="active"}':
                return float(value)
    return None


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))


async def measure(workdir: Path, warmup: int, n: int, n_burst: int, n_open: int,
                  group_interval: str = GROUP_INTERVAL, procs: list[Proc] | None = None,
                  say: Any = None) -> dict[str, Any]:
    """Start Alertmanager, measure sequential / burst / memory with `n_open` alerts, stop it by its PID.

    `procs`: the World's process list, so that a Ctrl-C in the middle still stops it (World.stop)."""
    def note(text: str) -> None:
        if say is not None:
            say(text)

    out: dict[str, Any] = {"version": version(), "group_interval": group_interval}
    async with Hook() as hook:
        proc, port = start(workdir, hook.url, group_interval)
        if procs is not None:
            procs.append(proc)
        try:
            url = f"http://127.0.0.1:{port}/api/v2/alerts"
            out["rss_start_mb"] = rss_mb(proc.pid)
            note(f"peer (Alertmanager {out['version']}): {warmup} warm-up + {n} sequential ...")
            async with _session(1) as s:
                await sequential(s, url, hook, "pw", warmup)
                c0, w0 = cpu_s(proc.pid), time.perf_counter()
                seq = await sequential(s, url, hook, "ps", n)
                out["cpu_sequential_ms"] = round((cpu_s(proc.pid) - c0) * 1000 / max(1, n), 3)
                out["wall_sequential_ms"] = round((time.perf_counter() - w0) * 1000 / max(1, n), 3)
            out["sequential"] = seq
            note(f"peer: burst of {n_burst} at once, cold connections ...")
            async with _session(0) as s:
                c0 = cpu_s(proc.pid)
                out["burst_cold"] = await burst(s, url, hook, "pb", n_burst)
                out["cpu_burst_cold_ms"] = round((cpu_s(proc.pid) - c0) * 1000 / max(1, n_burst), 3)
            remaining = max(0, n_open - warmup - n - n_burst)
            note(f"peer: filling to {n_open} open alerts ({remaining} more, 500 at a time) ...")
            async with _session(0) as s:
                out["fill"] = await fill(s, url, hook, "po", remaining)
                out["open_alerts"] = await active_alerts(s, port)
            out["rss_open_mb"] = rss_mb(proc.pid)
            out["hwm_mb"] = rss_mb(proc.pid, "VmHWM")
            out["lost"] = seq.lost + out["burst_cold"]["lost"] + out["fill"]["lost"]
            out["non_200"] = seq.non_200 + out["burst_cold"]["non_200"] + out["fill"]["non_200"]
            out["duplicates"] = hook.duplicates
            out["notifications"] = hook.notifications
        finally:
            out["exit_code"] = proc.stop()
            if procs is not None and proc in procs:
                procs.remove(proc)
            with contextlib.suppress(OSError):
                out["log_tail"] = (workdir / "alertmanager.log").read_text(errors="replace").splitlines()[-10:]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequential", type=int, default=1000)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--open", type=int, default=10000)
    p.add_argument("--group-interval", default=GROUP_INTERVAL)
    a = p.parse_args(argv)
    if binary() is None:
        print("Alertmanager is not installed (apt-get install prometheus-alertmanager)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        r = asyncio.run(measure(Path(tmp), 50, a.sequential, a.burst, a.open, a.group_interval,
                                say=lambda t: print(t, file=sys.stderr, flush=True)))
    seq: PeerSequential = r.pop("sequential")
    r["sequential"] = seq.as_dict()
    print(json.dumps(r, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
