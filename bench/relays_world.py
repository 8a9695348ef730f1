"""What `python -m bench.relays` runs against, and who stops it.

One private PostgreSQL server for the whole run (tests/support/postgres.py, fsync and full_page_writes on, as the
SQLite store fsyncs its commits), a fresh database in it for each measured run. Per measured run: a private
Mosquitto (bench/env.py's config) and one or two relay subprocesses, each with its own data dir, HTTP port and
mqtt.client_id, everything else equal. The relay's config is bench/env.py's minimal one (one desk, MQTT only,
warning logs), changed only in the store, the client id, the shared-subscription group, a common ack-link key
and, for the takeover runs, e-mail backups with a short ack timeout.

Every process is started in its own session and stopped by its own PID: the relays with SIGTERM (SIGKILL after
10 s), then the broker; the PostgreSQL server last (SIGINT to its postmaster, a fast shutdown). `Infra.close()`
does all of it, whatever state a run was left in.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from bench.env import REPO, Proc, _spawn, cpu_s, free_port, python, relay_toml, wait_port, wait_ready
from tests.support.postgres import PostgresServer, server_bin

ACK_LINK_KEY = "bench-relays-one-key-for-every-relay-0123456789"
SHARE_GROUP = "relays"
DESK_EMAIL = "duty@airfield-1.example"


def postgres_version() -> str:
    binary = server_bin("postgres")
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out.removeprefix("postgres (PostgreSQL) ") or "unknown"


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by `pid` and its children alive now (the postmaster and its backends)."""
    total = 0.0
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for p in [pid, *map(int, children)]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_s(p)
    return total


class CpuMeter:
    """CPU used since `start()` by the run's relays (together), the PostgreSQL server (postmaster and backends; a
    backend that ended meanwhile is not counted) and this bench process, per item; /proc counts 10 ms ticks."""

    def __init__(self, relays: list[Relay], pg: PostgresServer | None) -> None:
        self.pids = {"relays": [r.proc.pid for r in relays], "bench": [os.getpid()]}
        self.pg_pid = pg.proc.pid if pg is not None and pg.proc is not None else None
        self.t0: dict[str, float] = {}
        self.wall0 = 0.0

    def _read(self) -> dict[str, float]:
        now = {k: sum(cpu_s(p) for p in pids) for k, pids in self.pids.items()}
        now["postgres"] = tree_cpu_s(self.pg_pid) if self.pg_pid is not None else 0.0
        return now

    def start(self) -> CpuMeter:
        self.t0, self.wall0 = self._read(), time.perf_counter()
        return self

    def per_item_ms(self, n: int) -> dict[str, float]:
        used = {k: (v - self.t0[k]) * 1000 / max(1, n) for k, v in self._read().items()}
        used["wall"] = (time.perf_counter() - self.wall0) * 1000 / max(1, n)
        return used


@dataclass
class Relay:
    name: str  # also its mqtt.client_id
    port: int
    proc: Proc
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def reports_url(self) -> str:
        return f"{self.url}/api/v1/reports"

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.proc.log.read_text(errors="replace").splitlines()
        return []

    def events(self, name: str) -> list[dict[str, Any]]:
        """The relay's JSON log lines whose `event` is `name`, each with `at` (epoch seconds, from its `ts`)."""
        found = []
        for line in self.log_lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    entry["at"] = datetime.fromisoformat(entry["ts"]).timestamp()
                found.append(entry)
        return found

    def sigkill(self) -> None:
        """SIGKILL to its PID, as a crash; waits until it is gone."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(timeout=10)


def relay_config(data_dir: Path, http_port: int, broker_port: int, store_url: str, client_id: str,
                 email_port: int | None = None) -> dict[str, Any]:
    """bench/env.py's minimal relay, on `store_url`, named `client_id`; with `email_port` also e-mail backups
    (ack_timeout_s = 1: the first backup round of an alert is due a second after it was accepted)."""
    cfg = tomllib.loads(relay_toml(data_dir, http_port, broker_port))
    cfg["store"] = {"url": store_url}  # lease_s: the default (5 s)
    cfg["mqtt"] = {**cfg["mqtt"], "client_id": client_id, "share_group": SHARE_GROUP}
    cfg["http"] = {**cfg["http"], "public_url": f"http://127.0.0.1:{http_port}", "ack_link_key": ACK_LINK_KEY}
    if email_port is not None:
        cfg["email"] = {"enabled": True, "host": "127.0.0.1", "port": email_port,
                        "from_address": "uav-relay@localhost", "timeout_s": 5}
        cfg["desks"] = [{**cfg["desks"][0], "email": [DESK_EMAIL]}]
        cfg["escalation"] = {"ack_timeout_s": 1.0, "repeat_s": 120.0, "give_up_s": 3600.0}
    return cfg


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def metric(port: int, series: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
    return None


def wait_mqtt_up(relay: Relay, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if relay.proc.proc.poll() is not None:
            raise RuntimeError(f"{relay.name} exited with code {relay.proc.proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if metric(relay.port, 'relay_channel_up{channel="mqtt"}') == 1.0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{relay.name}: MQTT not up after {timeout} s")
        time.sleep(0.05)


@dataclass
class Run:
    """One measured run: its dir, its broker, its relays, its store."""

    infra: Infra
    dir: Path
    store: str  # "sqlite" or "postgresql"
    database: str | None = None
    broker: Proc | None = None
    broker_port: int = 0
    relays: list[Relay] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    log_tail: dict[str, list[str]] = field(default_factory=dict)
    events: dict[str, collections.Counter[str]] = field(default_factory=dict)  # relay -> its log's events
    lease_after_ready_s: list[float] = field(default_factory=list)

    def start_broker(self) -> None:
        self.broker_port = free_port()
        conf = self.dir / "mosquitto.conf"
        # bench/env.py World.start_broker's config
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            f"user {self.infra.user}\n"
        )
        self.broker = _spawn("mosquitto", ["mosquitto", "-c", str(conf)], self.dir / "mosquitto.log")
        self.infra.procs.append(self.broker)
        wait_port(self.broker_port, self.broker.proc, "mosquitto")

    def store_url(self, name: str) -> str:
        if self.store == "sqlite":
            return f"sqlite:///{self.dir / name / 'relay.db'}"
        if self.database is None:
            self.database = self.infra.postgres().create_database()
        return self.infra.postgres().url(self.database)

    def start_relays(self, names: list[str], email_port: int | None = None) -> list[Relay]:
        """Start every relay first, then wait for each (ready, and its MQTT up)."""
        started = []
        for name in names:
            data_dir = self.dir / name
            data_dir.mkdir()
            port = free_port()
            cfg = relay_config(data_dir, port, self.broker_port, self.store_url(name), name, email_port)
            path = data_dir / "relay.toml"
            path.write_text(tomli_w.dumps(cfg))
            proc = _spawn(name, [python(), "-m", "relay", "run", "--config", str(path)], data_dir / "relay.stderr")
            self.infra.procs.append(proc)
            relay = Relay(name, port, proc, cfg)
            self.relays.append(relay)
            started.append(relay)
        for relay in started:
            wait_ready(f"{relay.url}/readyz", relay.proc.proc, relay.name, timeout=30)
            wait_mqtt_up(relay)
        if self.store == "postgresql":
            self.wait_leases(started)
        return started

    def wait_leases(self, relays: list[Relay], timeout: float = 20.0) -> None:
        """Until each relay holds a live lease (the `relays` table, read on an admin connection). /readyz answers
        before a relay's first renewal; an alert it accepts before that is claimable by the others, as a dead
        relay's would be. The measurements start from the steady state; the wait is kept in
        `lease_after_ready_s`."""
        t0 = time.monotonic()
        names = {r.name for r in relays}
        while True:
            rows = self.infra.postgres().sql("SELECT relay_id, lease_until FROM relays", self.database or "")
            now = time.time()
            if names <= {r for r, until in rows if until > now}:
                self.lease_after_ready_s.append(time.monotonic() - t0)
                return
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no lease in the database for {sorted(names)} {timeout} s after /readyz")
            time.sleep(0.01)

    def stop(self) -> None:
        """The relays (SIGTERM: they drain), then the broker, each by its PID; the run's database dropped."""
        for relay in self.relays:  # the events logged while measuring: before its own stop
            self.events[relay.name] = collections.Counter(
                str(e.get("event")) for e in map(_json_or_none, relay.log_lines()) if isinstance(e, dict))
        for relay in self.relays:
            self.exit_codes[relay.name] = self.infra.stop(relay.proc)
            self.log_tail[relay.name] = relay.log_lines()[-20:]
        if self.broker is not None:
            self.infra.stop(self.broker)
        if self.database is not None and self.infra.pg is not None and self.infra.pg.proc is not None:
            with contextlib.suppress(Exception):
                self.infra.pg.drop_database(self.database)
        if not self.infra.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Infra:
    """The run's work dir (var/relays-<pid>/, on the repo's disk), the PostgreSQL server, every process."""

    root: Path
    user: str
    pg: PostgresServer | None = None
    procs: list[Proc] = field(default_factory=list)
    runs: int = 0
    keep: bool = False  # leave var/relays-<pid>/ (configs, relay logs, SQLite stores) behind

    @classmethod
    def create(cls, pid: int, user: str) -> Infra:
        root = REPO / "var" / f"relays-{pid}"
        root.mkdir(parents=True, exist_ok=False)
        return cls(root, user)

    def start_postgres(self) -> PostgresServer:
        self.pg = PostgresServer(fsync=True)
        self.pg.start()
        return self.pg

    def postgres(self) -> PostgresServer:
        if self.pg is None:
            raise RuntimeError("the PostgreSQL server was not started")
        return self.pg

    def run(self, store: str, label: str) -> Run:
        self.runs += 1
        d = self.root / f"{self.runs:02d}-{label}"
        d.mkdir()
        return Run(self, d, store)

    def stop(self, p: Proc) -> int | None:
        code = p.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(p)
        return code

    def close(self) -> None:
        """Whatever is still running, relays first, then brokers, each by its PID; then PostgreSQL; the dir."""
        for p in sorted(self.procs, key=lambda p: p.name == "mosquitto"):
            with contextlib.suppress(Exception):
                p.stop()
        self.procs.clear()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.close()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
