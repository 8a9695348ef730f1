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
    """Subscribes to `topics`, collects what arrives, can publish. A persistent session that reconnects by
    itself when the broker goes away and comes back, as a real console does."""

    def __init__(self, port: int, identifier: str, topics: list[str], *, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None) -> None:
        self.port, self.identifier, self.topics = port, identifier, topics
        self._login = {"username": username, "password": password}
        self._tls = aiomqtt.TLSParameters(ca_certs=ca_file) if ca_file else None
        self.messages: asyncio.Queue[tuple[str, dict[str, Any], aiomqtt.Message]] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttPeer:
        self._runner = asyncio.create_task(self._run())
        async with asyncio.timeout(5):
            await self._connected.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def _new_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        return aiomqtt.Client("127.0.0.1", self.port, identifier=self.identifier,
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                              keepalive=2, tls_params=self._tls, **self._login)

    async def _run(self) -> None:
        client = self._new_client()
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._serve(client)
            await asyncio.sleep(0.1)  # reconnect backoff of this test peer

    def _on_connect(self) -> None:
        """Connected and subscribed (a subclass keeps a record of it)."""

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection: subscribe, then collect what arrives (decoded as JSON where it is) until it ends."""
        try:
            async with client:
                for topic in self.topics:
                    await client.subscribe(topic, qos=1)
                self._client = client
                self._on_connect()
                self._connected.set()
                async for msg in client.messages:
                    payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                    try:
                        body = json.loads(payload)
                    except ValueError:
                        body = {"_raw": payload.decode(errors="replace")}
                    self.messages.put_nowait((msg.topic.value, body, msg))
        finally:
            self._client = None
            self._connected.clear()

    async def next(self, timeout: float = 5.0, topic_prefix: str = "") -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                topic, body, _ = await self.messages.get()
                if topic.startswith(topic_prefix):
                    return topic, body

    async def publish(self, topic: str, body: dict[str, Any] | str | bytes) -> None:
        payload = json.dumps(body) if isinstance(body, dict) else body
        async with asyncio.timeout(10):
            while True:
                await self._connected.wait()
                client = self._client
                if client is None:
                    continue
                try:
                    await client.publish(topic, payload, qos=1, timeout=5)
                    return
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.1)


class Console(MqttPeer):
    def __init__(self, port: int, desk_id: str, prefix: str = "uav", **login: str) -> None:
        super().__init__(port, f"console-{desk_id}", [f"{prefix}/alerts/{desk_id}"], **login)
        self.desk_id, self.prefix = desk_id, prefix

    async def next_alert(self, timeout: float = 5.0) -> dict[str, Any]:
        return (await self.next(timeout))[1]

    async def received(self, alert_id: str) -> None:
        await self.publish(f"{self.prefix}/acks/{self.desk_id}", {"alert_id": alert_id, "kind": "received"})

    async def ack(self, alert_id: str, by: str = "дежурный") -> None:
        await self.publish(f"{self.prefix}/acks/{self.desk_id}", {"alert_id": alert_id, "kind": "ack", "by": by})
