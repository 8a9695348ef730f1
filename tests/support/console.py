"""A dispatcher console (or a 112 system) over real MQTT: what a desk's screen would receive and send."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class MqttPeer:
    """Subscribes to `topics`, collects what arrives, can publish. Persistent session, as a real console has."""

    def __init__(self, port: int, identifier: str, topics: list[str]) -> None:
        self.port, self.identifier, self.topics = port, identifier, topics
        self.messages: asyncio.Queue[tuple[str, dict[str, Any], aiomqtt.Message]] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttPeer:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=self.identifier,
                                      protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props)
        await self._client.__aenter__()
        for topic in self.topics:
            await self._client.subscribe(topic, qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for msg in self._client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            try:
                body = json.loads(payload)
            except ValueError:
                body = {"_raw": payload.decode(errors="replace")}
            self.messages.put_nowait((msg.topic.value, body, msg))

    async def next(self, timeout: float = 5.0, topic_prefix: str = "") -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                topic, body, _ = await self.messages.get()
                if topic.startswith(topic_prefix):
                    return topic, body

    async def publish(self, topic: str, body: dict[str, Any] | str | bytes) -> None:
        assert self._client is not None
        payload = json.dumps(body) if isinstance(body, dict) else body
        await self._client.publish(topic, payload, qos=1, timeout=5)


class Console(MqttPeer):
    def __init__(self, port: int, desk_id: str, prefix: str = "uav") -> None:
        super().__init__(port, f"console-{desk_id}", [f"{prefix}/alerts/{desk_id}"])
        self.desk_id, self.prefix = desk_id, prefix

    async def next_alert(self, timeout: float = 5.0) -> dict[str, Any]:
        return (await self.next(timeout))[1]

    async def received(self, alert_id: str) -> None:
        await self.publish(f"{self.prefix}/acks/{self.desk_id}", {"alert_id": alert_id, "kind": "received"})

    async def ack(self, alert_id: str, by: str = "дежурный") -> None:
        await self.publish(f"{self.prefix}/acks/{self.desk_id}", {"alert_id": alert_id, "kind": "ack", "by": by})
