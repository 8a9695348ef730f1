"""A report's whole way, through the real HTTP API, a real Mosquitto and a real MQTT console."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.relay import (
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)
from tests.support.wait import eventually


async def test_report_reaches_the_console_and_its_ack_closes_the_alert(relay: RunningRelay, broker: Mosquitto) -> None:
    async with Console(broker.port, "airfield-1") as console:
        status, accepted = await relay.post_report(report("r-100"))
        assert status == 201, accepted
        assert set(accepted) == {"alert_id", "report_id", "short_code", "state", "status_url", "desks"}
        assert accepted["state"] == "pending"
        assert accepted["desks"] == ["airfield-1"]  # airfield-2 only covers the far east
        assert accepted["status_url"].endswith(f"/api/v1/alerts/{accepted['alert_id']}")

        alert = await console.next_alert()
        assert alert["alert_id"] == accepted["alert_id"]
        assert alert["short_code"] == accepted["short_code"]
        assert alert["ack_topic"] == "uav/acks/airfield-1"
        assert alert["report"]["heading_deg"] == 315
        assert "caller" not in alert["report"]  # the caller's phone and name stay with the 112 centre
        assert "+79001234567" not in json.dumps(alert)

        await console.received(alert["alert_id"])
        delivered = await eventually(
            lambda: _state_is(relay, alert["alert_id"], "delivered"), what="alert delivered"
        )
        assert delivered["deliveries"][0]["state"] == "delivered"
        assert delivered["deliveries"][0]["delivered_at"] is not None

        await console.ack(alert["alert_id"], by="Майор Иванов")
        acked = await eventually(lambda: _state_is(relay, alert["alert_id"], "acknowledged"), what="acknowledged")
        assert acked["ack"]["by"] == "Майор Иванов"
        assert acked["ack"]["channel"] == "mqtt"
        assert acked["ack"]["desk_id"] == "airfield-1"
        assert 0 <= acked["ack"]["latency_s"] < 5

    assert await relay.metric('relay_reports_total{source="http"}') == 1
    assert await relay.metric('relay_delivery_seconds_count{channel="mqtt"}') == 1
    assert await relay.metric('relay_ack_seconds_count{channel="mqtt"}') == 1
    assert await relay.metric('relay_deliveries_total{channel="mqtt",outcome="sent"}') == 1
    assert await relay.metric('relay_deliveries_total{channel="mqtt",outcome="delivered"}') == 1
    assert await relay.metric("relay_alerts_open") == 0
    assert await relay.metric('relay_channel_up{channel="mqtt"}') == 1


async def _state_is(relay: RunningRelay, alert_id: str, state: str) -> dict[str, object] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == state else None


async def test_first_ack_wins_and_later_acks_are_recorded_as_duplicates(relay: RunningRelay, broker: Mosquitto) -> None:
    async with Console(broker.port, "airfield-1") as console:
        _, accepted = await relay.post_report(report("r-dup"))
        alert_id = accepted["alert_id"]
        await console.next_alert()
        status, first = await relay.ack(alert_id, by="первый")
        assert status == 200
        assert first["ack"]["by"] == "первый" and first["ack"]["channel"] == "http"

        await console.ack(alert_id, by="второй")
        status, again = await relay.ack(alert_id, by="третий")
        assert status == 200
        assert again["ack"] == first["ack"]
        history = await eventually(lambda: _kinds(relay, alert_id, "duplicate_ack", 2), what="two duplicates")
        assert history.count("acknowledged") == 1
    assert await relay.metric('relay_ack_seconds_count{channel="http"}') == 1
    assert await relay.metric('relay_ack_seconds_count{channel="mqtt"}') == 0


async def _kinds(relay: RunningRelay, alert_id: str, kind: str, count: int) -> list[str] | None:
    status, body = await relay.get(f"/api/v1/alerts/{alert_id}/history")
    assert status == 200, body
    kinds = [e["kind"] for e in body["events"]]
    return kinds if kinds.count(kind) >= count else None


async def test_replay_of_the_same_report_answers_200_with_the_same_alert(relay: RunningRelay) -> None:
    body = report("r-replay")
    status, first = await relay.post_report(body)
    assert status == 201
    status, second = await relay.post_report(body)
    assert status == 200
    assert second["alert_id"] == first["alert_id"]
    assert second["short_code"] == first["short_code"]
    _, listing = await relay.get("/api/v1/alerts")
    assert [a["report_id"] for a in listing["alerts"]] == ["r-replay"]
    assert await relay.metric("relay_reports_total") == 1


async def test_same_report_id_with_other_content_is_a_conflict(relay: RunningRelay) -> None:
    status, _ = await relay.post_report(report("r-conflict", count=2))
    assert status == 201
    status, body = await relay.post_report(report("r-conflict", count=3))
    assert status == 409
    assert body["error"] == "conflict"
    assert "r-conflict" in body["detail"]


async def test_a_desk_with_an_area_gets_only_sightings_inside_it(relay: RunningRelay, broker: Mosquitto) -> None:
    async with Console(broker.port, "airfield-1") as west, Console(broker.port, "airfield-2") as east:
        _, near_vladivostok = await relay.post_report(report("r-east", location={"lat": 43.2, "lon": 131.8}))
        assert near_vladivostok["desks"] == ["airfield-1", "airfield-2"]
        assert (await east.next_alert())["report_id"] == "r-east"
        assert (await west.next_alert())["report_id"] == "r-east"

        _, far_west = await relay.post_report(report("r-west"))
        assert far_west["desks"] == ["airfield-1"]
        assert (await west.next_alert())["report_id"] == "r-west"
        assert east.messages.empty()
        status, _ = await relay.get(f"/api/v1/alerts/{far_west['alert_id']}", DESK2_TOKEN)
        assert status == 403


async def test_operator_follows_state_changes_over_mqtt_and_sse(relay: RunningRelay, broker: Mosquitto) -> None:
    async with (
        MqttPeer(broker.port, "op-1-workstation", ["uav/events/op-1"]) as events,
        Console(broker.port, "airfield-1") as console,
        relay.http.get(f"{relay.url}/api/v1/events", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as sse,
    ):
        assert sse.status == 200
        assert sse.content_type == "text/event-stream"
        _, accepted = await relay.post_report(report("r-events"))
        alert = await console.next_alert()
        await console.received(alert["alert_id"])
        await console.ack(alert["alert_id"])

        states = [(await events.next())[1]["state"] for _ in range(3)]
        assert states == ["pending", "delivered", "acknowledged"]

        seen: list[dict[str, object]] = []
        async with asyncio.timeout(5):
            while len(seen) < 3:
                line = (await sse.content.readline()).decode().strip()
                if line.startswith("data:"):
                    seen.append(json.loads(line.removeprefix("data:")))
        assert [e["state"] for e in seen] == ["pending", "delivered", "acknowledged"]
        assert {e["alert_id"] for e in seen} == {accepted["alert_id"]}
        assert set(seen[2]) >= {"alert_id", "report_id", "state", "at", "short_code", "ack"}


async def test_sse_shows_a_desk_only_what_was_sent_to_it(relay: RunningRelay) -> None:
    async with relay.http.get(f"{relay.url}/api/v1/events", headers={"Authorization": f"Bearer {DESK2_TOKEN}"}) as sse:
        await relay.post_report(report("r-west-only"))
        _, east = await relay.post_report(report("r-east-too", location={"lat": 43.2, "lon": 131.8}))
        async with asyncio.timeout(5):
            while True:
                line = (await sse.content.readline()).decode().strip()
                if line.startswith("data:"):
                    break
        assert json.loads(line.removeprefix("data:"))["alert_id"] == east["alert_id"]


async def test_reports_over_mqtt_are_relayed_and_bad_ones_answered(relay: RunningRelay, broker: Mosquitto) -> None:
    async with (
        Console(broker.port, "airfield-1") as console,
        MqttPeer(broker.port, "112-system", ["uav/reports/+/rejected"]) as system,
    ):
        await system.publish("uav/reports/op-1", report("mq-1"))
        alert = await console.next_alert()
        assert alert["report_id"] == "mq-1"
        assert alert["operator_id"] == "op-1"

        await system.publish("uav/reports/op-1", report("mq-2", count=0, location={"lat": 91, "lon": 39}))
        topic, rejection = await system.next()
        assert topic == "uav/reports/op-1/rejected"
        assert rejection["report_id"] == "mq-2"
        assert rejection["error"] == "invalid"
        assert {p["field"] for p in rejection["detail"]} == {"count", "location.lat"}

        await system.publish("uav/reports/op-9", report("mq-3"))
        topic, rejection = await system.next()
        assert topic == "uav/reports/op-9/rejected"
        assert rejection["error"] == "unknown_operator"

        await system.publish("uav/reports/op-1", b"not json at all")
        _, rejection = await system.next()
        assert rejection["error"] == "invalid"
        assert rejection["detail"][0]["field"] == "body"
    _, listing = await relay.get("/api/v1/alerts")
    assert [a["report_id"] for a in listing["alerts"]] == ["mq-1"]
    assert await relay.metric('relay_reports_total{source="mqtt"}') == 1
    assert await relay.metric('relay_reports_rejected_total{reason="invalid"}') == 2


async def test_an_ack_from_a_desk_the_alert_was_not_sent_to_does_not_count(
    relay: RunningRelay, broker: Mosquitto
) -> None:
    async with Console(broker.port, "airfield-1") as console, Console(broker.port, "airfield-2") as other:
        _, accepted = await relay.post_report(report("r-foreign-ack"))
        await console.next_alert()
        await other.ack(accepted["alert_id"], by="чужой")
        await other.publish("uav/acks/airfield-2", {"kind": "ack"})  # malformed: no alert_id
        await eventually(lambda: relay.metric("relay_acks_rejected_total"), what="acks refused")
        assert await relay.metric('relay_acks_rejected_total{channel="mqtt",reason="not_routed"}') == 1
        assert (await relay.alert(accepted["alert_id"]))["state"] == "pending"
        status, body = await relay.ack(accepted["alert_id"], token=DESK2_TOKEN)
        assert status == 403, body


async def test_listing_filters_by_state_newest_first(relay: RunningRelay) -> None:
    ids = []
    for n in range(3):
        _, a = await relay.post_report(report(f"r-list-{n}"))
        ids.append(a["alert_id"])
    await relay.ack(ids[1])
    _, open_ = await relay.get("/api/v1/alerts?state=open&limit=100")
    assert [a["alert_id"] for a in open_["alerts"]] == [ids[2], ids[0]]
    _, acked = await relay.get("/api/v1/alerts?state=acknowledged")
    assert [a["alert_id"] for a in acked["alerts"]] == [ids[1]]
    _, two = await relay.get("/api/v1/alerts?limit=2")
    assert [a["alert_id"] for a in two["alerts"]] == [ids[2], ids[1]]
    status, bad = await relay.get("/api/v1/alerts?state=lost")
    assert status == 422 and bad["detail"][0]["field"] == "state"
    status, bad = await relay.get("/api/v1/alerts?limit=0")
    assert status == 422 and bad["detail"][0]["field"] == "limit"
    _, desk_view = await relay.get("/api/v1/alerts", DESK_TOKEN)
    assert all("caller" not in a["report"] for a in desk_view["alerts"])
    _, op_view = await relay.get(f"/api/v1/alerts/{ids[0]}")
    assert op_view["report"]["caller"]["phone"] == "+79001234567"


async def test_relay_starts_with_an_empty_store_directory_and_keeps_alerts_over_a_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = settings_dict(broker.port, tmp_path / "fresh" / "nested")
    async with running_relay(cfg) as first:
        status, accepted = await first.post_report(report("r-persist"))
        assert status == 201
    async with running_relay(cfg) as second:
        alert = await second.alert(accepted["alert_id"])
        assert alert["report_id"] == "r-persist"
        assert alert["short_code"] == accepted["short_code"]
