"""The README's "three relays on one machine" walkthrough, as a new user runs it: `./scripts/cluster up` (a private
PostgreSQL, three NATS nodes, three relays), `./scripts/cluster watch` in one terminal while a relay and a NATS node
are SIGKILLed in another and started again (`start-relay`, `start-node`), the watch's verdict "0 lost", and
`./scripts/cluster stop` leaving no process behind.

Everything lives in a temp dir of its own (RELAY_CLUSTER_DIR) on free ports, so the repository's var/ and other
tests' servers are not touched. Whatever happens, each process the script recorded is ended by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import server_bin
from tests.support.wait import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "cluster"
WATCH_S = 25


def _missing() -> str | None:
    if not (shutil.which("nats-server") or Path("/usr/sbin/nats-server").exists()):
        return "nats-server is not installed (apt-get install nats-server; ./scripts/test installs it)"
    if server_bin("initdb") is None:
        return "PostgreSQL's initdb is not installed (apt-get install postgresql; ./scripts/test installs it)"
    return None


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Cluster:
    """scripts/cluster run in `workdir`, with every PID it ever recorded remembered for the cleanup."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pids: dict[int, str] = {}  # PID -> the name of its .pid file
        free: list[int] = []
        while len(free) < 16:  # three relays' HTTP; three nodes' MQTT, client, route, monitoring; PostgreSQL
            port = free_port()
            if port not in free:
                free.append(port)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | {
            "RELAY_CLUSTER_DIR": str(workdir), "RELAY_CLUSTER_PG_PORT": str(free.pop()),
            **{f"RELAY_CLUSTER_{name}_PORTS": " ".join(str(free.pop()) for _ in range(3))
               for name in ("HTTP", "MQTT", "NATS", "ROUTE", "MONITOR")},
        }

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([str(CLUSTER), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout)
        finally:
            self.remember()

    def remember(self) -> None:
        for pidfile in self.workdir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                self.pids[int(pidfile.read_text())] = pidfile.stem

    def pid(self, name: str) -> int:
        return int((self.workdir / f"{name}.pid").read_text())

    def log_tails(self) -> str:
        logs = [*self.workdir.glob("relay-*.log"), *self.workdir.glob("nats-*/nats.log"),
                self.workdir / "pg" / "server.log"]
        return "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-8:])
                         for log in logs if log.exists())


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # not pytest's tmp_path: as root, PostgreSQL runs as the postgres user, which must reach the dir (pytest's tmp
    # tree is closed to other users)
    workdir = Path(tempfile.mkdtemp(prefix="relay-cluster-"))
    workdir.chmod(0o755)
    c = Cluster(workdir)
    try:
        yield c
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.run("stop", timeout=60)
        # what stop did not end (it failed, or timed out): by the PIDs recorded, if still the processes we started
        for pid in c.pids:
            with contextlib.suppress(OSError):
                if _alive(pid) and str(workdir) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def test_three_relays_lose_nothing_when_a_relay_and_a_nats_node_are_killed(cluster: Cluster) -> None:
    started = time.monotonic()
    up = cluster.run("up")
    assert up.returncode == 0, up.stdout + up.stderr + cluster.log_tails()
    assert len(cluster.pids) == 7, cluster.pids  # PostgreSQL, three NATS nodes, three relays
    assert "start-relay 2" in up.stdout and "kill -9" in up.stdout and "ready" in up.stdout
    secrets = cluster.workdir / "secrets.env"
    assert secrets.stat().st_mode & 0o077 == 0, "tokens and keys are for the owner only"
    up_s = time.monotonic() - started

    watch = subprocess.Popen([str(CLUSTER), "watch", "--seconds", str(WATCH_S)], env=cluster.env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(5)
        os.kill(cluster.pid("relay-2"), signal.SIGKILL)
        time.sleep(5)
        # node 1 is the one every relay and the console connected to first: all of them must move
        os.kill(cluster.pid("nats-1"), signal.SIGKILL)
        time.sleep(4)
        again = cluster.run("start-relay", "2", timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        again = cluster.run("start-node", "1", timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        out, _ = watch.communicate(timeout=WATCH_S + 45)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, out + cluster.log_tails()
    assert "VERDICT: 0 lost" in out, out
    assert "relay 2: ok -> DOWN" in out and "NATS node 1: ok -> DOWN" in out, "the watch saw both kills:\n" + out
    accepted = re.search(r"^(\d+) reports accepted by the relays", out, re.MULTILINE)
    assert accepted and int(accepted[1]) >= WATCH_S, out  # about two a second, less the seconds no relay took one

    stop = cluster.run("stop", timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert len(cluster.pids) == 9, cluster.pids  # and the relay and the node started again
    left = [f"{name} (PID {pid})" for pid, name in cluster.pids.items() if _alive(pid)]
    assert not left, f"still running after stop: {left}"
    assert not list(cluster.workdir.glob("*.pid"))
    print(f"up in {up_s:.0f} s; whole walkthrough {time.monotonic() - started:.0f} s;\n{out[-600:]}")
