"""An MQTT subscriber in the bench process: one reader task stamps `time.perf_counter()` at receipt, per key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

import aiomqtt

from bench.arrivals import Arrivals

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


Parsed = tuple[str | None, float | None]  # (key, the relay's own timestamp in epoch seconds, if any)


def alert_fields(payload: bytes) -> Parsed:
    """An alert on `uav/alerts/{desk}`: keyed by its report_id; `created_at` is when the relay accepted it."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    key = body.get("report_id")
    created: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        created = datetime.fromisoformat(body["created_at"]).timestamp()
    return (key if isinstance(key, str) else None), created


def raw_key(payload: bytes) -> Parsed:
    return payload.decode(errors="replace"), None


def client(port: int, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
                          socket_options=NODELAY, max_inflight_messages=1000)


class Receiver(Arrivals):
    """Subscribes at QoS 1 to `topic`; `received[key]` is the perf_counter() of the first copy of each key,
    `stamped[key]` the sender's own timestamp found in it (epoch seconds), where there is one."""

    def __init__(self, port: int, identifier: str, topic: str,
                 parse: Callable[[bytes], Parsed] = alert_fields) -> None:
        super().__init__()
        self.topic, self.parse = topic, parse
        self.client = client(port, identifier)
        self.stamped: dict[str, float] = {}
        self.unparsed = 0
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Receiver:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self._reader = asyncio.create_task(self._read(), name=f"reader:{self.topic}")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for msg in self.client.messages:
            t = time.perf_counter()
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            key, stamp = self.parse(payload)
            if key is None:
                self.unparsed += 1
            elif self.arrived(key, t) and stamp is not None:
                self.stamped[key] = stamp
