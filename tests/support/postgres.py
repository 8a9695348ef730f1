"""A private PostgreSQL server on a free 127.0.0.1 port, which a test may stop, kill and start again.

Debian's `postgresql` package (./scripts/test installs it). initdb and postgres refuse to run as root, and the tests
run as root here: then the server runs as the `postgres` OS user (subprocess's `user=`, so the PID we hold is the
server's own), in a temp dir of its own outside pytest's root-only tmp tree. Unix sockets are off: TCP on loopback
only. fsync is off unless asked for: a test's server is thrown away, and the machine's two cores are shared.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.wait import free_port

USER = "relay"
PASSWORD = "relay-test-password"
STARTUP_S = 30.0


def server_bin(name: str) -> str | None:
    """Where Debian puts the server's programs (/usr/lib/postgresql/<version>/bin), newest version first."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0, reverse=True)
    for bin_dir in versions:
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    return None


class PostgresServer:
    """`start()` once (initdb the first time), then `stop()`/`kill()`/`start()` at will; `close()` at the end."""

    def __init__(self, *, fsync: bool = False, port: int | None = None) -> None:
        initdb, postgres = server_bin("initdb"), server_bin("postgres")
        if initdb is None or postgres is None:
            raise RuntimeError("PostgreSQL's server is not installed: run ./scripts/test, which installs it")
        self._initdb, self._postgres = initdb, postgres
        self.fsync = fsync
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._as_root = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._admin: dict[str, psycopg.Connection[Any]] = {}

    # ---- the server's process ------------------------------------------------------------------------

    def _run_as(self) -> dict[str, object]:
        if not self._as_root:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _make_cluster(self) -> None:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(
            [self._initdb, "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._run_as(),  # type: ignore[arg-type]
        )
        pwfile.unlink()

    def start(self) -> None:
        assert self.proc is None, "already running"
        if not self.data.exists():
            self._make_cluster()
        args = [
            self._postgres, "-D", str(self.data), "-p", str(self.port), "-c", f"listen_addresses={self.host}",
            "-c", "unix_socket_directories=", "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", f"full_page_writes={'on' if self.fsync else 'off'}", "-c", "max_connections=200",
            "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, **self._run_as())  # type: ignore[call-overload]
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        """postmaster.pid's 8th line says `ready` once connections are accepted (what pg_ctl -w waits for)."""
        deadline = time.monotonic() + STARTUP_S
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # the first line is the postmaster's PID: a file a killed server left behind is not this one's
                if len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready":
                    return
            time.sleep(0.02)
        raise TimeoutError(f"postgres not ready within {STARTUP_S} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are ended, what was committed is kept."""
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL, as a crash: the next start recovers from the WAL."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        for conn in self._admin.values():  # the server ends them anyway
            conn.close()
        # a killed postmaster's children notice and exit by themselves; a new server refuses to start while one of
        # them still holds the old shared memory, so they are waited for, by their PIDs
        children = self._children() if sig is signal.SIGKILL else []
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        deadline = time.monotonic() + 10
        while children and time.monotonic() < deadline:
            children = [pid for pid in children if Path(f"/proc/{pid}").exists()]
            time.sleep(0.02)

    def _children(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        with contextlib.suppress(OSError):
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return []

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        for conn in self._admin.values():
            conn.close()
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- addresses and databases ----------------------------------------------------------------------

    def url(self, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{USER}:{PASSWORD}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def create_database(self) -> str:
        """A fresh, empty database; its name."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement on an admin connection kept for the purpose (a new one after a restart); its rows."""
        conn = self._admin.get(database)
        if conn is None or conn.closed or conn.broken:
            conn = self._admin[database] = psycopg.connect(
                self.url(database), autocommit=True, connect_timeout=5, application_name="tests-admin")
        try:
            cur = conn.execute(statement)  # type: ignore[arg-type]  # a test's own statements
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            conn.close()  # the server went away under it: the next call connects anew
            raise


# ---- fixtures (a test module that uses them names this module in its `pytest_plugins`) -------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private server for the whole run (a start costs about a second); a test that stops it starts it again."""
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of its own for each test."""
    if postgres_server.proc is None:  # a test before stopped it and failed before starting it again
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if postgres_server.proc is None:
        postgres_server.start()
    postgres_server.drop_database(name)
