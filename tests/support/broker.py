"""A private Mosquitto on a free port, which a test may stop, kill and start again."""

from __future__ import annotations

import getpass
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.wait import free_port, wait_port


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        if shutil.which("mosquitto") is None:
            pytest.fail("mosquitto is not installed: run ./scripts/test, which installs it")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # persistence: sessions (subscriptions, queued QoS 1 messages) survive a graceful restart, as in deploy/
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 3600\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log}\n"
            # started as root, mosquitto would switch to user `mosquitto` and could not write its files here
            f"user {getpass.getuser()}\n"
            + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.kill()
            raise

    def stop(self) -> None:
        """Graceful: mosquitto saves its sessions to disk."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
