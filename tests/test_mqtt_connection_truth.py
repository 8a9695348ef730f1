"""The MQTT channel's idea of its connection follows paho's, against a real Mosquitto.

In the ten-minute hostile soak a broker SIGKILL left paho without a socket while aiomqtt's futures said connected:
every publish failed with "The client is not currently connected", the channel stayed up (so no failover for
"primary down"), and it did not reconnect until the relay was restarted a minute and a half later; and each failed
publish stayed queued in paho, reaching the console up to eleven times once a connection came back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from channels.base import HealthState
from channels.mqtt import LoopBoundClient, MqttChannel, MqttSettings
from tests.support.broker import Mosquitto
from tests.support.wait import eventually

TOPIC = "uav/alerts/airfield-1"


@pytest.fixture
async def channel(broker: Mosquitto) -> AsyncIterator[MqttChannel]:
    ch = MqttChannel(MqttSettings(host="127.0.0.1", port=broker.port, client_id="relay-truth",
                                  reply_filter="uav/acks/+", status_topic="uav/relay/status"))
    task = asyncio.create_task(ch.run())
    try:
        await eventually(lambda: ch.health.state is HealthState.UP or None, timeout=10, what="connected")
        yield ch
    finally:
        task.cancel()
        await asyncio.wait([task])


def _health_changes(ch: MqttChannel) -> list[HealthState]:
    states: list[HealthState] = []
    ch.health.on_change(lambda change: states.append(change.state))
    return states


def _lose_socket_quietly(ch: MqttChannel) -> None:
    """What the soak saw: paho's socket gone, and nothing told aiomqtt (no on_disconnect)."""
    client = ch._client
    assert isinstance(client, LoopBoundClient)
    client._client._sock_close()
    assert not client.holds_connection()


async def test_a_connection_paho_lost_unnoticed_is_marked_down_and_replaced(
    channel: MqttChannel, broker: Mosquitto
) -> None:
    states = _health_changes(channel)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="console-truth") as console:
        await console.subscribe(TOPIC, qos=1)
        _lose_socket_quietly(channel)
        await eventually(lambda: HealthState.DOWN in states or None, timeout=5, what="the channel marked down")
        await eventually(lambda: channel.health.state is HealthState.UP or None, timeout=10, what="reconnected")
        result = await channel.publish(TOPIC, json.dumps({"alert_id": "after"}).encode())
        assert result.ok, result
        async with asyncio.timeout(5):
            message = await anext(aiter(console.messages))
        assert json.loads(message.payload)["alert_id"] == "after"  # type: ignore[arg-type]


async def test_a_publish_that_finds_no_connection_fails_and_never_arrives_later(
    channel: MqttChannel, broker: Mosquitto
) -> None:
    states = _health_changes(channel)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="console-dups") as console:
        await console.subscribe(TOPIC, qos=1)
        _lose_socket_quietly(channel)
        failed = await channel.publish(TOPIC, json.dumps({"alert_id": "failed"}).encode())
        assert not failed.ok and "not currently connected" in (failed.detail or "")
        await eventually(lambda: HealthState.DOWN in states or None, timeout=5, what="the channel marked down")
        await eventually(lambda: channel.health.state is HealthState.UP or None, timeout=10, what="reconnected")
        assert (await channel.publish(TOPIC, json.dumps({"alert_id": "retried"}).encode())).ok
        seen = []
        async with asyncio.timeout(5):
            async for message in console.messages:
                seen.append(json.loads(message.payload)["alert_id"])  # type: ignore[arg-type]
                if seen[-1] == "retried":
                    break
        assert seen == ["retried"]  # the failed one is the caller's to retry, not paho's to resend


async def test_after_a_broker_kill_a_reconnect_waits_for_the_connack(channel: MqttChannel, broker: Mosquitto) -> None:
    client = channel._client
    assert isinstance(client, LoopBoundClient)
    broker.kill()
    await eventually(lambda: channel.health.state is HealthState.DOWN or None, timeout=10, what="marked down")
    assert client._connected.done()  # what aiomqtt leaves after a lost connection
    broker.start()
    await eventually(lambda: channel.health.state is HealthState.UP or None, timeout=15, what="reconnected")
    assert client.holds_connection()
    assert (await channel.publish(TOPIC, b"{}")).ok
