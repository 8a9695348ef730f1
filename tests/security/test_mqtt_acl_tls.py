"""The real Mosquitto with deploy/mosquitto/acl, TLS (certificates made by the test) and logins: a desk cannot
read another desk's alerts nor ack for it, an operator cannot publish alerts, and nobody gets in without TLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.relay import RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
USERS = {"uav-relay": "relay-pass-0123", "airfield-1": "desk1-pass-0123", "airfield-2": "desk2-pass-0123",
         "op-1": "op1-pass-0123"}


def make_certificates(d: Path) -> Path:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=uav-relay test CA",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(d / "broker.key"),
            "-out", str(d / "broker.csr"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(d / "broker.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "1", "-extfile", str(d / "san.ext"), "-out", str(d / "broker.pem"))
    return d / "ca.pem"


def make_password_file(d: Path) -> Path:
    passwd = d / "passwd"
    for n, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True)
    passwd.chmod(0o644)
    return passwd


@dataclass
class Secured:
    relay: RunningRelay
    broker: Mosquitto
    ca: str

    def peer(self, user: str, topics: list[str], identifier: str | None = None) -> MqttPeer:
        return MqttPeer(self.broker.port, identifier or f"{user}-peer", topics, username=user,
                        password=USERS[user], ca_file=self.ca)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    d = tmp_path / "tls"
    d.mkdir()
    ca = make_certificates(d)
    passwd = make_password_file(d)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, extra_conf=(
        f"cafile {ca}\ncertfile {d / 'broker.pem'}\nkeyfile {d / 'broker.key'}\n"
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {ROOT / 'deploy/mosquitto/acl'}\n"
    ))
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.start()
    cfg = settings_dict(broker.port, tmp_path / "data")
    cfg["mqtt"] |= {"tls": True, "ca_file": str(ca), "username": "uav-relay", "password": USERS["uav-relay"]}
    try:
        async with running_relay(cfg) as relay:
            yield Secured(relay, broker, str(ca))
    finally:
        broker.kill()


def _console(s: Secured, desk: str) -> Console:
    return Console(s.broker.port, desk, username=desk, password=USERS[desk], ca_file=s.ca)


async def test_the_relay_works_over_tls_with_its_login(secured: Secured) -> None:
    async with _console(secured, "airfield-1") as console:
        _, accepted = await secured.relay.post_report(report("tls-1"))
        alert = await console.next_alert()
        await console.ack(alert["alert_id"])
        acked = await eventually(lambda: _state(secured.relay, accepted["alert_id"], "acknowledged"), what="acked")
    assert acked["ack"]["desk_id"] == "airfield-1"


async def test_a_desk_cannot_read_another_desks_alerts_nor_ack_for_it(secured: Secured) -> None:
    async with (
        _console(secured, "airfield-1") as owner,
        secured.peer("airfield-2", ["uav/alerts/airfield-1", "uav/alerts/#"]) as snoop,
        secured.peer("uav-relay", ["uav/acks/#"], identifier="spy") as spy,
    ):
        _, accepted = await secured.relay.post_report(report("acl-1"))
        alert = await owner.next_alert()
        _, barrier = await secured.relay.post_report(report("acl-barrier"))
        assert (await owner.next_alert())["alert_id"] == barrier["alert_id"]  # the broker passed both on
        assert snoop.messages.empty(), "airfield-2 read an alert meant for airfield-1"

        await snoop.publish("uav/acks/airfield-1", {"alert_id": alert["alert_id"], "kind": "ack", "by": "чужой"})
        await snoop.publish("uav/acks/airfield-2", {"alert_id": "barrier", "kind": "received"})
        topic, _ = await spy.next()
        assert topic == "uav/acks/airfield-2", "the broker let airfield-2 write airfield-1's acks"
        await _answered(secured.relay)
        assert (await secured.relay.alert(accepted["alert_id"]))["state"] == "pending"


async def _answered(relay: RunningRelay) -> None:
    await eventually(lambda: _metric_at_least(relay, "relay_acks_rejected_total", 1), what="the barrier seen")


async def test_an_operator_cannot_publish_alerts_or_report_as_another_operator(secured: Secured) -> None:
    async with (
        _console(secured, "airfield-1") as console,
        secured.peer("op-1", ["uav/reports/op-1/rejected"]) as op,
    ):
        await op.publish("uav/alerts/airfield-1", {"alert_id": "forged", "short_code": "FAKE"})
        await op.publish("uav/reports/op-2", json.dumps(report("as-op-2")))
        await op.publish("uav/reports/op-1", json.dumps(report("own")))
        first = await console.next_alert()
        assert first["report_id"] == "own"  # the forged alert never reached the console
        assert console.messages.empty()
    _, listing = await secured.relay.get("/api/v1/alerts")
    assert [a["report_id"] for a in listing["alerts"]] == ["own"]


async def test_no_way_in_without_tls_or_with_a_wrong_password(secured: Secured) -> None:
    plain = aiomqtt.Client("127.0.0.1", secured.broker.port, identifier="plain", username="airfield-1",
                           password=USERS["airfield-1"], timeout=3)
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(5), plain:
            pass
    wrong = aiomqtt.Client("127.0.0.1", secured.broker.port, identifier="wrong", username="airfield-1",
                           password="guess", tls_params=aiomqtt.TLSParameters(ca_certs=secured.ca), timeout=3)
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(5), wrong:
            pass


async def _state(relay: RunningRelay, alert_id: str, state: str) -> dict[str, Any] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == state else None


async def _metric_at_least(relay: RunningRelay, name: str, value: float) -> bool:
    return await relay.metric(name) >= value
