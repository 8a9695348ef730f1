"""Secrets never show (logs, /metrics, check-config, error answers); every ack and every refusal is on record."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.process import RelayProcess
from tests.support.relay import (
    DESK1_PHONE,
    DESK2_PHONE,
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import AUTH_TOKEN, TwilioFake
from tests.support.wait import eventually, free_port

ENGINEER_TOKEN = "engineer-token-0123456789abcdef"
LINK_KEY = "ack-link-key-that-must-stay-secret-0123456789"
MQTT_PASSWORD = "mqtt-password-that-must-stay-secret"


def secret_config(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, data: Path) -> dict[str, Any]:
    cfg = with_backups(settings_dict(broker.port, data), smtp_port=smtp.port, twilio_url=twilio.base_url)
    cfg["mqtt"] |= {"username": "uav-relay", "password": MQTT_PASSWORD}
    cfg["http"] |= {"ack_link_key": LINK_KEY}
    cfg["engineers"] = [{"id": "oncall", "token": ENGINEER_TOKEN}]
    cfg["relay"]["log_level"] = "debug"
    return cfg


SECRETS = [OPERATOR_TOKEN, DESK_TOKEN, DESK2_TOKEN, ENGINEER_TOKEN, AUTH_TOKEN, LINK_KEY, MQTT_PASSWORD]


async def test_secrets_never_appear_in_logs_metrics_config_output_or_errors(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = secret_config(broker, smtp, twilio, tmp_path / "data")
    port = free_port()
    cfg["http"] |= {"port": port, "public_url": f"http://127.0.0.1:{port}"}
    relay = RelayProcess(cfg, tmp_path)
    seen: list[str] = []
    checked = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "check-config", "--config", str(relay.config)],
        capture_output=True, text=True, timeout=30)
    seen += [checked.stdout, checked.stderr]
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps({**cfg, "sms": {**cfg["sms"], "from_number": ""}}))
    refused = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "relay", "check-config", "--config", str(bad)],
        capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    seen += [refused.stdout, refused.stderr]
    relay.start()
    try:
        await relay.wait_ready()
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Authorization": f"Basic {OPERATOR_TOKEN}"}):
                async with http.post(f"{relay.url}/api/v1/reports", json=report(), headers=headers) as r:
                    seen.append(await r.text())
            async with http.post(f"{relay.url}/api/v1/reports", json=report("s-1"),
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                assert r.status == 201
            broker.kill()  # failover: SMS and e-mail go out, with links and signed callbacks
            async with http.post(f"{relay.url}/api/v1/reports", json=report("s-2"),
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                assert r.status == 201
            await twilio.wait_for(2)
            await smtp.wait_for(1)
            _, body = await TwilioFake.inbound(relay.url, DESK1_PHONE, "что-то", signature="Zm9yZ2Vk")
            seen.append(body)
            async with http.get(f"{relay.url}/metrics") as r:
                seen.append(await r.text())
        seen.append(relay.log.read_text())
    finally:
        relay.stop()
    for text in seen:
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked: {secret[:6]}…"


async def _audit(relay: RunningRelay) -> list[dict[str, Any]]:
    status, body = await relay.get("/api/v1/audit?limit=100", ENGINEER_TOKEN)
    assert status == 200, body
    return list(body["events"])


async def test_every_ack_and_every_refusal_is_on_the_audit_trail(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = secret_config(broker, smtp, twilio, tmp_path / "data")
    cfg["mqtt"] |= {"username": "", "password": ""}
    async with running_relay(cfg) as relay, Console(broker.port, "airfield-1") as console, \
            Console(broker.port, "airfield-2") as other:
        url = str(relay.relay.settings.http.public_url)
        _, by_mqtt = await relay.post_report(report("audit-mqtt"))
        await console.next_alert()
        await other.ack(by_mqtt["alert_id"], by="чужой пульт")  # not routed to airfield-2
        await console.ack(by_mqtt["alert_id"], by="Иванов")
        _, by_http = await relay.post_report(report("audit-http"))
        await relay.ack(by_http["alert_id"], by="Петров")
        await relay.ack(by_http["alert_id"], token=DESK2_TOKEN, by="чужой")
        _, by_sms = await relay.post_report(report("audit-sms", priority="flash"))
        await twilio.wait_for(2)
        await TwilioFake.inbound(url, DESK2_PHONE, by_sms["short_code"])  # a phone of another desk
        await TwilioFake.inbound(url, DESK1_PHONE, by_sms["short_code"])
        await TwilioFake.inbound(url, DESK1_PHONE, by_sms["short_code"], signature=None)
        async with relay.http.post(f"{url}/ack/forged.token") as r:
            assert r.status == 403
        events = await eventually(lambda: _audit_has(relay, 8), what="the whole trail")
        for token in (OPERATOR_TOKEN, DESK_TOKEN):
            status, _ = await relay.get("/api/v1/audit", token)
            assert status == 403

    acks = {(e["detail"]["channel"], e["detail"]["by"]): e for e in events if e["kind"] == "acknowledged"}
    assert acks[("mqtt", "Иванов")]["detail"]["from"] == "uav/acks/airfield-1"
    assert acks[("http", "Петров")]["detail"]["from"].startswith("http 127.0.0.1")
    assert acks[("sms", DESK1_PHONE)]["detail"]["from"] == DESK1_PHONE
    refused = [(e["detail"]["channel"], e["detail"]["reason"], e["detail"]["from"]) for e in events
               if e["kind"] == "ack_refused"]
    assert ("mqtt", "not_routed", "uav/acks/airfield-2") in refused
    assert ("sms", "not_routed", DESK2_PHONE) in refused
    assert any(r[0] == "http" and r[1] == "not_routed" for r in refused)
    assert {e["kind"] for e in events} >= {"webhook_refused", "link_refused"}


async def _audit_has(relay: RunningRelay, n: int) -> list[dict[str, Any]] | None:
    events = await _audit(relay)
    return events if len(events) >= n else None
