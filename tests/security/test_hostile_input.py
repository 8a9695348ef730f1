"""Bad input never hurts: deep nesting, huge numbers, odd bytes, floods; over HTTP and MQTT alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.console import MqttPeer
from tests.support.relay import RunningRelay, report, running_relay, settings_dict


def _deep(depth: int) -> bytes:
    return ('{"report_id": "deep", "location": {"lat": 1, "lon": 2}, "notes": ' + "[" * depth + "]" * depth
            + "}").encode()


HOSTILE: list[tuple[str, bytes]] = [
    ("nested 30000 deep", _deep(30_000)),
    ("float beyond double", json.dumps(report("big-float")).replace('"lat": 52.61', '"lat": 1e400').encode()),
    ("integer of 400 digits", json.dumps(report("big-int")).replace('"count": 2', '"count": ' + "9" * 400).encode()),
    ("NaN", json.dumps(report("nan")).replace('"lat": 52.61', '"lat": NaN').encode()),
    ("not UTF-8", b'{"report_id": "\xff\xfe", "observed_at": 1}'),
    ("a NUL in the id", json.dumps(report("a\u0000b")).encode()),
    ("duplicate keys", b'{"report_id": "a", "report_id": "b"}'),
    ("a 60 KiB key", ('{"' + "k" * 60_000 + '": 1}').encode()),
    ("null body", b"null"),
    ("a string", b'"report"'),
]


@pytest.mark.parametrize(("case", "body"), HOSTILE, ids=[c for c, _ in HOSTILE])
async def test_hostile_bodies_get_422_and_the_relay_keeps_serving(relay: RunningRelay, case: str, body: bytes) -> None:
    status, answer = await relay.post_report(body)
    assert status == 422, (case, answer)
    assert answer["error"] == "invalid_report"
    assert all(p["field"] and p["problem"] for p in answer["detail"])
    assert len(json.dumps(answer)) < 20_000  # the answer does not echo a huge input back
    status, _ = await relay.post_report(report("still-fine"))
    assert status == 201
    _, listing = await relay.get("/api/v1/alerts")
    assert [a["report_id"] for a in listing["alerts"]] == ["still-fine"]


async def test_mqtt_intake_refuses_the_same_and_keeps_its_rate(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = settings_dict(broker.port, tmp_path / "data", http={"rate_per_s": 0.01, "rate_burst": 6})
    async with running_relay(cfg) as relay, MqttPeer(broker.port, "112-system", ["uav/reports/op-1/rejected"]) as sys:
        for _, body in HOSTILE[:4]:
            await sys.publish("uav/reports/op-1", body)
            assert (await sys.next())[1]["error"] == "invalid"
        await sys.publish("uav/reports/op-1", json.dumps(report("r1")))
        await sys.publish("uav/reports/op-1", json.dumps(report("r2")))
        await sys.publish("uav/reports/op-1", json.dumps(report("r3")))  # the 7th: over the burst of 6
        rejection = (await sys.next())[1]
        assert (rejection["report_id"], rejection["error"]) == ("r3", "rate_limited")
        assert rejection["detail"]["retry_after_s"] > 0
        await sys.publish("uav/reports/op-1", b"x" * (65 * 1024))
        assert (await sys.next())[1]["error"] == "too_large"
        status, _ = await relay.post_report(report("http-now"))
        assert status == 429  # one budget per operator, whichever way the reports come
        assert await relay.metric('relay_reports_total{source="mqtt"}') == 2
