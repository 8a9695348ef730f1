"""The private world a run needs: a work dir on a real disk, a broker, the relay, the HTTP floor server.

Every process is started in its own session (so a Ctrl-C reaches only the bench, which then stops them in
order) and stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.wait import free_port as free_port  # one way to pick a port a server takes next

REPO = Path(__file__).resolve().parent.parent
OPERATOR_TOKEN = "bench-operator-token-0123456789"
DESK_TOKEN = "bench-desk-token-0123456789abc"
DESK_ID = "airfield-1"
ALERT_TOPIC = f"uav/alerts/{DESK_ID}"


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding `path` (longest matching mount point in /proc/mounts)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            inside = str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt
            if inside and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"no {key} for pid {pid}")


def cpu_times(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the process (all threads), or by its thread `tid`."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process used so far (all its threads)."""
    return sum(cpu_times(pid))


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    """Poll `url` until it answers 200, or fail (also when the process died meanwhile)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready at {url} after {timeout} s (last: {last})")
        time.sleep(0.05)


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """`sig` (SIGTERM) to this PID, wait, then SIGKILL it; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def _spawn(name: str, argv: list[str], log: Path) -> Proc:
    # RELAY_* variables would override the bench's config file: what is measured is what the file says
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, proc, log)


def mosquitto_version() -> str:
    out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


@dataclass
class World:
    """Owns the work dir and the processes; `close()` undoes everything, whatever state it is in."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    broker_port: int = 0
    relay_port: int = 0
    floor_port: int = 0
    relay_exit: int | None = None

    @classmethod
    def create(cls) -> World:
        workdir = REPO / "var" / f"bench-{os.getpid()}"
        workdir.mkdir(parents=True, exist_ok=False)
        return cls(workdir)

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    @property
    def relay(self) -> Proc:
        return self.proc("relay")

    def start_broker(self) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.broker_port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            f"user {getpass.getuser()}\n"
        )
        p = _spawn("mosquitto", ["mosquitto", "-c", str(conf)], self.workdir / "mosquitto.log")
        self.procs.append(p)
        wait_port(self.broker_port, p.proc, "mosquitto")

    def start_relay(self, *, site: bool = False, tracks: bool = False) -> None:
        self.relay_port = free_port()
        config = self.workdir / "relay.toml"
        config.write_text(relay_toml(self.workdir, self.relay_port, self.broker_port, site=site, tracks=tracks))
        p = _spawn("relay", [python(), "-m", "relay", "run", "--config", str(config)], self.workdir / "relay.stderr")
        self.procs.append(p)
        wait_ready(f"http://127.0.0.1:{self.relay_port}/readyz", p.proc, "relay")

    def start_floor_server(self) -> None:
        self.floor_port = free_port()
        p = _spawn("floor-http", [python(), "-m", "bench.floor_server", str(self.floor_port)],
                   self.workdir / "floor_server.log")
        self.procs.append(p)
        wait_ready(f"http://127.0.0.1:{self.floor_port}/readyz", p.proc, "floor HTTP server")

    def start_profiler(self, out: Path) -> None:
        """py-spy sampling the relay (raw collapsed stacks, written when it gets SIGINT)."""
        spy = Path(python()).parent / "py-spy"
        if not spy.exists():
            raise RuntimeError(f"{spy} not found: .venv/bin/pip install py-spy")
        argv = [str(spy), "record", "--gil", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(out),
                "-p", str(self.relay.pid)]
        self.procs.append(_spawn("py-spy", argv, self.workdir / "py-spy.log"))

    def stop_profiler(self) -> None:
        for p in [p for p in self.procs if p.name == "py-spy"]:
            p.stop(sig=signal.SIGINT)
            self.procs.remove(p)

    def relay_log(self) -> list[str]:
        with contextlib.suppress(OSError):
            return (self.workdir / "relay.stderr").read_text(errors="replace").splitlines()
        return []

    def stop(self) -> None:
        # the relay first (it says `offline` to the broker and drains), the broker last
        self.stop_profiler()
        order = sorted(self.procs, key=lambda p: {"relay": 0, "floor-http": 1}.get(p.name, 2))
        for p in order:
            code = p.stop()
            if p.name == "relay":
                self.relay_exit = code
        self.procs.clear()

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def relay_toml(workdir: Path, http_port: int, broker_port: int, *, site: bool = False, tracks: bool = False) -> str:
    """The minimal relay (one desk, MQTT only, warning logs), or with `site` what a site runs: a second desk that
    every report is routed to as well, SMS and e-mail configured for both desks, info logs. The backups never fire
    (no ack is due within the run), and their far ends are closed ports on 127.0.0.1: what the site profile adds
    is the relay's own work per report (a second console delivery, its commit, the log lines)."""
    def q(s: str) -> str:
        return json.dumps(s)  # a JSON string is a valid TOML basic string

    backups = f"""
[sms]
enabled = true
provider = "twilio"
account_sid = "AC{'0' * 32}"
auth_token = "bench-auth-token-0123456789abcdef"
from_number = "+79000000000"
api_base_url = "http://127.0.0.1:{free_port()}"

[email]
enabled = true
host = "127.0.0.1"
port = {free_port()}
from_address = "uav-relay@localhost"
""" if site else ""
    second_desk = f"""
[[desks]]
id = "airfield-2"
name = "bench, second desk"
token = {q(DESK_TOKEN + "-2")}
sms = ["+79000000002"]
email = ["duty@airfield-2.example"]
""" if site else ""
    desk_backups = '\nsms = ["+79000000001"]\nemail = ["duty@airfield-1.example"]' if site else ""

    return f"""\
[relay]
data_dir = {q(str(workdir))}
log_level = "{'info' if site else 'warning'}"

[store]
url = {q(f"sqlite:///{workdir}/relay.db")}

[http]
host = "127.0.0.1"
port = {http_port}
rate_per_s = 1000000
rate_burst = 1000000

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "bench-relay"

[escalation]
give_up_s = 3600
ack_timeout_s = 600
{"[tracks]" + chr(10) + "enabled = true" + chr(10) if tracks else ""}{backups}
[[operators]]
id = "op-1"
token = {q(OPERATOR_TOKEN)}

[[desks]]
id = {q(DESK_ID)}
name = "bench"
token = {q(DESK_TOKEN)}{desk_backups}
{second_desk}"""
