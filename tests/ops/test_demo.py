"""`relay demo` on this machine: reports, a failover half-way, acks by console and SMS, a summary; exit 0."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "demo", "--reports", "4", "--pause", "1.5", *extra],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("extra", [[], ["--embedded-broker"]], ids=["mosquitto", "embedded amqtt"])
async def test_the_demo_shows_a_failover_and_every_report_acknowledged(tmp_path: Path, extra: list[str]) -> None:
    if extra:
        pytest.importorskip("amqtt", reason="the embedded broker is in the demo extra")
    result = await asyncio.to_thread(_demo, tmp_path, *extra)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "/console/dispatcher  token " in out and "/console/operator    token " in out
    assert "the MQTT broker is down now" in out
    assert "dispatcher replied by SMS" in out and "via sms" in out and "via mqtt" in out
    assert "acknowledged 4 of 4" in out
    assert "POST -> console: median" in out
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob("var/demo-*")))
    assert not leftovers, "the demo cleans up after itself"
