from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.process import RelayProcess
from tests.support.relay import RunningRelay, running_relay, settings_dict
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake


@pytest.fixture(autouse=True)
def _no_relay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's RELAY_* variables must not leak into a test's config."""
    for key in list(os.environ):
        if key.startswith("RELAY_"):
            monkeypatch.delenv(key)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Mosquitto(workdir)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(settings_dict(broker.port, tmp_path / "data")) as r:
        yield r


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioFake]:
    fake = TwilioFake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def relay_process() -> Iterator[list[RelayProcess]]:
    """Relays a test starts as subprocesses (append each); every one is stopped, by its own PID, at the end."""
    started: list[RelayProcess] = []
    yield started
    for p in started:
        p.stop()
