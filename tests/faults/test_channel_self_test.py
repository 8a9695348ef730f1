"""`relay test-channels` and the canary: a rotted backup channel is found before the day it is needed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomli_w

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import DESK1_EMAIL, DESK1_PHONE, running_relay, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually


async def _run_test_channels(cfg: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "relay.toml"
    config.write_text(tomli_w.dumps(cfg))
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "test-channels", "--config", str(config), "--wait", "5"],
        capture_output=True, text=True, timeout=60,
    )


async def _answer_tests(console: Console, twilio: TwilioFake) -> None:
    """A desk's console says `received` to the test message; the carrier reports the SMS delivered."""
    alert = await console.next_alert(timeout=30)
    assert alert["short_code"] == "TEST" and alert["status"] == "test"
    await console.received(alert["alert_id"])
    sent = await twilio.wait_for(2)
    for sms in sent:
        sms.status = "delivered"


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in stdout.splitlines()[1:]:
        cells = line.split()
        rows[(cells[0], cells[2])] = cells
    return rows


async def test_test_channels_reports_accepted_delivered_and_latency_per_channel(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    async with Console(broker.port, "airfield-1") as console:
        answering = asyncio.create_task(_answer_tests(console, twilio))
        result = await _run_test_channels(cfg, tmp_path)
        await answering
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    mqtt = rows[("mqtt", "uav/alerts/airfield-1")]
    assert mqtt[3:6] == ["yes", "yes", "NO"]  # accepted, delivered (received), not acked
    assert rows[("sms", DESK1_PHONE)][3:5] == ["yes", "yes"]
    assert rows[("email", DESK1_EMAIL)][3] == "yes"
    assert rows[("mqtt", "uav/alerts/airfield-2")][4] == "NO"  # nobody at that console
    mail = (await smtp.wait_for(2))[0]
    assert "ТЕСТ" in mail.message["Subject"]


async def test_test_channels_exits_1_when_a_channel_does_not_take_the_message(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    smtp.stop()
    result = await _run_test_channels(cfg, tmp_path)
    assert result.returncode == 1
    email_rows = [cells for (channel, _), cells in _rows(result.stdout).items() if channel == "email"]
    assert email_rows and all(cells[3] == "NO" for cells in email_rows)


async def test_check_config_warns_and_test_channels_finds_what_the_smtp_server_lacks(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    """starttls, a login and a non-ASCII address are valid config; only the server can say it lacks them."""
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    cfg["email"] = {**cfg["email"], "starttls": True, "username": "relay", "password": "smtp-secret-pass"}
    cfg["desks"][1] = {**cfg["desks"][1], "email": ["дежурный@аэродром.example"]}
    config = tmp_path / "relay.toml"
    config.write_text(tomli_w.dumps(cfg))
    checked = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "relay", "check-config", "--config",
                                                       str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0
    for key in ("email.starttls", "email.username", "desks[1].email", "http.public_url"):
        assert f"warning: {key}:" in checked.stderr, (key, checked.stderr)

    result = await _run_test_channels(cfg, tmp_path)
    assert result.returncode == 1
    assert "STARTTLS" in result.stdout, result.stdout  # the row says why, from the server itself


async def test_the_canary_checks_the_backup_channels_at_start(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    cfg["canary"] = {"interval_s": 3600, "sms_to": "+79005550000", "email_to": "oncall@relay.example"}
    async with running_relay(cfg) as relay:
        (sms,) = await twilio.wait_for(1, to="+79005550000")
        (mail,) = await smtp.wait_for(1, to="oncall@relay.example")
        assert "Канарейка" in sms.body
        assert "канарейка" in mail.message["Subject"]
        await eventually(lambda: _canaries(relay), what="canary metrics")
        assert await relay.metric('relay_channel_last_success_timestamp_seconds{channel="sms"}') > 0
        assert await relay.metric("relay_alerts_open") == 0  # a canary is not an alert


async def _canaries(relay: Any) -> bool:
    ok_sms = await relay.metric('relay_canary_total{channel="sms",outcome="ok"}')
    ok_email = await relay.metric('relay_canary_total{channel="email",outcome="ok"}')
    return bool(ok_sms == 1 and ok_email == 1)
