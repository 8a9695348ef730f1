"""The relay as a real subprocess (`python -m relay run`), for tests that kill it, stop it, or restart it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from tests.support.wait import eventually


class RelayProcess:
    def __init__(self, settings: dict[str, Any], workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.config = workdir / "relay.toml"
        self.config.write_text(tomli_w.dumps(settings))
        self.log = workdir / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{settings['http']['port']}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        assert self.proc is None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | (extra_env or {})
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "relay", "run", "--config", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.workdir)

    async def wait_ready(self, timeout: float = 15.0) -> float:
        """Seconds from now until /readyz answers 200."""
        started = time.monotonic()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{self.url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout, interval=0.01, what="relay ready")
        return time.monotonic() - started

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        return code

    def stop(self) -> None:
        """Cleanup: whatever state it is in, it is gone afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
