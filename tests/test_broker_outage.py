"""The broker goes away and comes back: the relay notices, keeps accepting, reconnects by itself, catches up."""

from __future__ import annotations

import time

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import RunningRelay, report
from tests.support.wait import eventually


async def _ready(relay: RunningRelay) -> bool:
    status, _ = await relay.get("/readyz", token=None)
    return status == 200


async def _not_ready(relay: RunningRelay) -> dict[str, object] | None:
    status, body = await relay.get("/readyz", token=None)
    return body if status == 503 else None


async def test_relay_reconnects_after_a_broker_restart_and_reports_flow_again(
    relay: RunningRelay, broker: Mosquitto
) -> None:
    broker.kill()
    down = await eventually(lambda: _not_ready(relay), what="readyz 503 while the broker is down")
    assert any("mqtt" in r for r in down["reasons"])  # type: ignore[union-attr]
    assert await relay.metric('relay_channel_up{channel="mqtt"}') == 0

    broker.start()
    await eventually(lambda: _ready(relay), timeout=10, what="relay reconnected by itself")
    assert await relay.metric('relay_channel_up{channel="mqtt"}') == 1
    async with Console(broker.port, "airfield-1") as console:
        _, accepted = await relay.post_report(report("after-restart"))
        alert = await console.next_alert()
        assert alert["alert_id"] == accepted["alert_id"]


async def test_a_report_accepted_while_the_broker_is_down_is_delivered_when_it_returns(
    relay: RunningRelay, broker: Mosquitto
) -> None:
    async with Console(broker.port, "airfield-1"):
        pass  # the console's session (its subscription) now lives in the broker
    broker.stop()
    await eventually(lambda: _not_ready(relay), what="relay sees the broker gone")

    started = time.monotonic()
    status, accepted = await relay.post_report(report("during-outage"))
    assert status == 201
    assert time.monotonic() - started < 1.0  # never held up by a channel
    queued = await relay.alert(accepted["alert_id"])
    assert queued["state"] == "pending"
    assert [d["state"] for d in queued["deliveries"]] == ["queued"]

    broker.start()
    async with Console(broker.port, "airfield-1") as console:
        alert = await console.next_alert(timeout=10)
        assert alert["alert_id"] == accepted["alert_id"]
        await console.received(alert["alert_id"])
    delivered = await eventually(
        lambda: _delivered(relay, accepted["alert_id"]), what="delivery marked delivered after the outage"
    )
    assert delivered["deliveries"][0]["attempts"] >= 1


async def _delivered(relay: RunningRelay, alert_id: str) -> dict[str, object] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == "delivered" else None


async def test_acks_sent_while_the_relay_was_cut_off_are_taken_when_it_reconnects(
    relay: RunningRelay, broker: Mosquitto
) -> None:
    async with Console(broker.port, "airfield-1") as console:
        _, accepted = await relay.post_report(report("ack-later"))
        await console.next_alert()
    broker.stop()  # the relay's session, with its subscription to the acks, is saved by the broker
    await eventually(lambda: _not_ready(relay), what="relay sees the broker gone")
    broker.start()
    async with Console(broker.port, "airfield-1") as console:
        await console.ack(accepted["alert_id"], by="после перезапуска")
    acked = await eventually(
        lambda: _acked(relay, accepted["alert_id"]), timeout=10, what="ack taken after reconnect"
    )
    assert acked["ack"]["by"] == "после перезапуска"


async def _acked(relay: RunningRelay, alert_id: str) -> dict[str, object] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == "acknowledged" else None
