"""The `relay` command as an on-call engineer uses it: config checks, secrets masked, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from relay.domain.config import ConfigError, hash_token, load_settings
from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import OPERATOR_TOKEN, report
from tests.support.wait import eventually, free_port

RELAY = [sys.executable, "-m", "relay"]
SECRET = "super-secret-mqtt-password-42"

GOOD = """
[http]
port = {http_port}
[mqtt]
port = {mqtt_port}
password = "{secret}"
[store]
url = "sqlite:///{data}/relay.db"
[[operators]]
id = "op-1"
token = "{op_token}"
[[desks]]
id = "airfield-1"
name = "Аэродром"
token_sha256 = "{desk_digest}"
"""


def write_config(tmp_path: Path, mqtt_port: int = 1, http_port: int = 0, text: str = GOOD) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text.format(
        http_port=http_port, mqtt_port=mqtt_port, secret=SECRET, data=tmp_path / "data", op_token=OPERATOR_TOKEN,
        desk_digest=hash_token("airfield-1-token-0123456789"),
    ))
    return path


def relay_cmd(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RELAY, *args], capture_output=True, text=True, input=stdin, timeout=30,
                          env={**os.environ, **(env or {})})


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    result = relay_cmd("check-config", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    assert OPERATOR_TOKEN not in result.stdout
    assert 'password = "**********"' in result.stdout
    assert "ack_timeout_s = 10.0" in result.stdout  # defaults shown too


def test_check_config_names_every_problem_by_its_key_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[mqtt]\nport = 99999\nqos = 2\n[escalation]\nack_timeout_s = -1\n'
        '[[desks]]\nid = "a/b"\ntoken = "short"\nsms = ["12345"]\n'
    )
    result = relay_cmd("check-config", "--config", str(bad))
    assert result.returncode == 2
    for key in ("mqtt.port", "mqtt.qos: unknown key", "escalation.ack_timeout_s", "desks[0].id", "desks[0].sms",
                "desks[0].token: at least 16 characters"):
        assert key in result.stderr, result.stderr
    assert "short" not in result.stderr.replace("short code", "")  # a secret is not echoed back


def test_relay_run_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\nport = 1")
    result = relay_cmd("run", "--config", str(bad))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_MQTT__PORT", "2883")
    monkeypatch.setenv("RELAY_ESCALATION__REPEAT_S", "30")
    monkeypatch.setenv("RELAY_CONFIG", str(write_config(tmp_path, mqtt_port=1883)))
    settings = load_settings()
    assert settings.mqtt.port == 2883
    assert settings.mqtt.password.get_secret_value() == SECRET  # the rest of [mqtt] still from the file
    assert settings.escalation.repeat_s == 30
    monkeypatch.setenv("RELAY_MQTT__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings()


def test_built_in_defaults_need_no_file() -> None:
    settings = load_settings(None)
    assert (settings.http.port, settings.mqtt.port) == (8080, 1883)
    assert settings.store.url == "sqlite:///var/relay.db"


def test_hash_token_prints_the_digest_for_the_config() -> None:
    result = relay_cmd("hash-token", stdin="airfield-1-token-0123456789\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hash_token("airfield-1-token-0123456789")
    assert relay_cmd("hash-token", stdin="short\n").returncode == 1


async def test_relay_run_logs_json_lines_and_stops_cleanly_on_sigterm(tmp_path: Path, broker: Mosquitto) -> None:
    http_port = free_port()
    config = write_config(tmp_path, mqtt_port=broker.port, http_port=http_port)
    stderr = (tmp_path / "relay.log").open("w")
    proc = subprocess.Popen([*RELAY, "run", "--config", str(config)], stderr=stderr, env={  # noqa: ASYNC220
        **os.environ, "RELAY_MQTT__PASSWORD": SECRET})
    try:
        async with aiohttp.ClientSession() as http, Console(broker.port, "airfield-1") as console:
            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{http_port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=15, what="relay ready")
            async with http.post(f"http://127.0.0.1:{http_port}/api/v1/reports", json=report("cli-1"),
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                assert r.status == 201
                alert_id = (await r.json())["alert_id"]
            await console.next_alert()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 6  # drain is bounded at 5 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
    lines = [json.loads(line) for line in (tmp_path / "relay.log").read_text().splitlines()]
    events = {line.get("event"): line for line in lines}
    for event in ("relay_started", "channel_up", "report_accepted", "delivery_sent", "relay_stopped"):
        assert event in events, f"{event} not logged"
    assert events["report_accepted"]["alert_id"] == alert_id
    assert events["delivery_sent"]["alert_id"] == alert_id
    assert SECRET not in (tmp_path / "relay.log").read_text()
    assert OPERATOR_TOKEN not in (tmp_path / "relay.log").read_text()


def test_relay_run_without_a_reachable_port_says_why(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = relay_cmd("run", "--config", str(write_config(tmp_path, http_port=port)))
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_the_example_config_in_the_repository_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "example.toml"
    result = relay_cmd("check-config", "--config", str(example))
    assert result.returncode == 0, result.stderr


def test_ids_with_a_dot_are_warned_about_for_a_broker_that_speaks_3_1_1() -> None:
    from relay.domain.config import Settings
    from relay.operations.config_warnings import config_warnings

    def warned(protocol: str, hosts: list[str]) -> list[str]:
        s = Settings(mqtt={"protocol": protocol, "hosts": hosts},
                     desks=[{"id": "airfield.1", "token": "desk-token-0123456789"}],
                     operators=[{"id": "op-1", "token": "operator-token-0123456"}])
        return [w for w in config_warnings(s) if "holds a '.'" in w]

    assert warned("3.1.1", ["127.0.0.1:4223", "127.0.0.1:4224"]) == [
        "desks[0].id: 'airfield.1' holds a '.': a NATS broker drops the relay's connection at every message to its "
        "topics; use - or _ instead"]
    assert warned("5", []) == []  # Mosquitto takes dots in topic levels


def test_an_enquire_link_more_often_than_the_smpp_library_sends_it_is_warned_about() -> None:
    from relay.domain.config import Settings
    from relay.operations.config_warnings import config_warnings

    def warned(every_s: float) -> list[str]:
        smpp = {"enquire_link_s": every_s, "system_id": "relay", "password": "secret"}
        s = Settings(sms={"enabled": True, "provider": "smpp", "smpp": smpp},
                     desks=[{"id": "airfield-1", "token": "desk-token-0123456789", "sms": ["+79001234567"]}],
                     operators=[{"id": "op-1", "token": "operator-token-0123456"}])
        return [w for w in config_warnings(s) if w.startswith("sms.smpp.enquire_link_s")]

    (said,) = warned(10)
    assert "every 30 s whatever this says" in said
    assert warned(30) == warned(60) == []


def test_a_relay_on_a_shared_database_is_warned_about_what_several_relays_need() -> None:
    from relay.domain.config import Settings
    from relay.operations.config_warnings import config_warnings

    people = {"desks": [{"id": "airfield-1", "token": "desk-token-0123456789"}],
              "operators": [{"id": "op-1", "token": "operator-token-0123456"}]}
    shared = Settings(store={"url": "postgresql://relay@127.0.0.1:5432/relay"}, **people)
    said = config_warnings(shared)
    assert any(w.startswith("http.ack_link_key: empty") for w in said)
    assert any(w.startswith("mqtt.client_id: the default") for w in said)
    named = Settings(store={"url": "postgresql://relay@127.0.0.1:5432/relay"}, mqtt={"client_id": "relay-2"},
                     http={"ack_link_key": "k" * 32}, **people)
    assert config_warnings(named) == []
    assert config_warnings(Settings(**people)) == []  # SQLite: one relay, nothing to share
    nats = Settings(mqtt={"share_group": "relays", "hosts": ["127.0.0.1:4223", "127.0.0.1:4224"]}, **people)
    assert any(w.startswith("mqtt.share_group: set for a broker") for w in config_warnings(nats))
    with pytest.raises(ValueError, match="share_group"):
        Settings(mqtt={"share_group": "a/b"}, **people)
