"""The alert nobody acknowledges: given up at give_up_s, the operator told, a late ack still recorded."""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.relay import report, running_relay, settings_dict


async def test_an_alert_nobody_acknowledges_is_given_up_and_the_operator_told(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = settings_dict(broker.port, tmp_path / "data", escalation={"ack_timeout_s": 0.3, "give_up_s": 1.0})
    async with (
        running_relay(cfg) as relay,
        Console(broker.port, "airfield-1") as console,
        MqttPeer(broker.port, "op-1-workstation", ["uav/events/op-1"]) as operator,
    ):
        _, accepted = await relay.post_report(report("silent"))
        alert = await console.next_alert()
        await console.received(alert["alert_id"])  # shown on the console, but nobody acknowledges
        states = [(await operator.next(timeout=5))[1]["state"] for _ in range(3)]
        assert states == ["pending", "delivered", "unacknowledged"]
        got = await relay.alert(accepted["alert_id"])
        assert got["state"] == "unacknowledged"
        assert await relay.metric("relay_alerts_unacknowledged_total") == 1
        assert await relay.metric("relay_alerts_open") == 0

        status, late = await relay.ack(accepted["alert_id"], by="опоздавший")
        assert status == 200
        assert late["state"] == "acknowledged"  # a late ack is still recorded, and shown
        assert late["ack"]["latency_s"] >= 1.0
        assert (await operator.next())[1]["state"] == "acknowledged"
