"""MQTT channel: one supervised broker connection, QoS 1 publishes confirmed by PUBACK, replies back in.

MQTT v5 with a persistent session (clean_start=False plus a session expiry), or 3.1.1 with clean_session=False:
while the relay reconnects, the broker keeps its subscriptions and queues what consoles and 112 systems publish to
it. With the nodes of a clustered broker (`hosts`), the session lives in the cluster: the relay moves to another
node when its own goes, and finds its session there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import PahoSocket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from channels.base import (
    ChannelHealth,
    FailureReason,
    HealthState,
    Inbound,
    InboundKind,
    InboundSink,
    Outgoing,
    SendResult,
)

log = logging.getLogger("channels.mqtt")

T = TypeVar("T")

# Each inbound message is handled in its own task; this bounds how many are in flight at once.
MAX_INBOUND_IN_FLIGHT = 256


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    reply_filter: str  # e.g. "uav/acks/+": the last level names the sender
    status_topic: str  # retained "online", last will "offline"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 5
    publish_timeout_s: float = 1.0
    subscribe_timeout_s: float = 5.0
    session_expiry_s: int = 3600
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    # "5" (message expiry, session expiry) or "3.1.1" for a broker that speaks only that (the demo's embedded one,
    # NATS)
    protocol: str = "5"
    # The nodes of one clustered broker, in the order to try them; empty: the one broker at host and port.
    hosts: tuple[tuple[str, int], ...] = ()
    # Several clients taking turns on the inbound topics: each inbound message goes to one of the group
    # (`$share/<group>/<filter>`, MQTT 5 shared subscriptions); empty: every message to this client.
    share_group: str = ""

    def nodes(self) -> tuple[tuple[str, int], ...]:
        return self.hosts or ((self.host, self.port),)


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    payload: bytes


RawHandler = Callable[[RawMessage], Awaitable[None]]


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, low: float, high: float) -> None:
        self._low, self._high, self._attempt = low, high, 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._high, self._low * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)


class Nodes:
    """Which broker node to try: the first at the start, then, after each failed attempt or lost connection, the
    next one round the list. The node that went away is likely still away, and the session lives in the cluster,
    not in the node; a single broker is a list of one."""

    def __init__(self, nodes: Sequence[tuple[str, int]]) -> None:
        if not nodes:
            raise ValueError("no broker node to connect to")
        self._nodes = tuple(nodes)
        self._at = 0

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def current(self) -> tuple[str, int]:
        return self._nodes[self._at]

    def move_on(self) -> None:
        self._at = (self._at + 1) % len(self._nodes)


def node_name(node: tuple[str, int]) -> str:
    host, port = node
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LoopBoundClient(aiomqtt.Client):
    """aiomqtt's client, with the event loop watching exactly the socket paho holds, for as long as it holds it.

    aiomqtt 2.x applies paho's socket callbacks out of order: `_on_socket_register_write` adds the writer through
    `call_soon_threadsafe`, so later, even when paho asks on the loop thread, while `_on_socket_unregister_write`
    removes it at once. Under load paho often unregisters (its `loop_write` emptied the queue) before the deferred
    add has run; the add then lands after the removal, and the writer stays registered while paho's
    `_registered_write` says it is not. That writer fires on every loop iteration (a busy loop) and nothing
    removes it: when the broker goes, paho's `_sock_close` skips the unregister and closes the descriptor with the
    writer still on it. uvloop's libuv then fails its batched epoll_ctl on that descriptor and calls abort()
    (issue 12: SIGABRT at a broker kill); the stdlib loop only logs "Bad file descriptor" or a `KeyError`.

    Here each callback makes the loop's registrations match paho's current socket and write flag, at once on the
    loop thread. Only paho's connect(), which aiomqtt runs in an executor thread, calls from elsewhere; its
    changes are posted to the loop and read paho's state when they run, so they never act on a stale socket.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_thread = threading.get_ident()
        self._watched: object | None = None  # the socket whose descriptor the loop watches
        self._watched_fd = -1
        self._writing = False
        self._write_soon = False  # a write of what paho queued is scheduled on the loop
        self._awaiting_connack = False
        self.session_present = False  # the last CONNACK's: whether the broker still had this client's session

    def aim(self, node: tuple[str, int]) -> None:
        """Where the next connect goes (aiomqtt reads these two at each connect)."""
        self._hostname, self._port = node

    async def __aenter__(self) -> Self:
        # paho's connect() closes a socket it still holds, in the executor thread, behind the loop's back.
        self._drop_socket()
        # aiomqtt renews these two futures only after a clean disconnect. After a lost connection both stay done:
        # its __aenter__ then returns before the CONNACK (`_connected` done already), and a connection lost while
        # it connects is ignored (`_on_disconnect` returns early on a `_disconnected` already done). The relay
        # then believed itself connected while paho held no socket: every publish "The client is not currently
        # connected", the channel never marked down, for a minute and a half in the hostile soak, until the
        # relay itself was restarted.
        if self._connected.done():
            self._connected = asyncio.get_running_loop().create_future()
        if self._disconnected.done():
            self._disconnected = asyncio.get_running_loop().create_future()
        self._awaiting_connack = True
        try:
            await super().__aenter__()
        except aiomqtt.MqttError:
            # No CONNACK in time leaves the socket open and watched; a late CONNACK would then pass for the
            # next attempt's.
            self._awaiting_connack = False
            self._drop_socket()
            raise
        finally:
            self._awaiting_connack = False
        if not self.holds_connection():
            # lost between the CONNACK and here: aiomqtt forgets such a loss (it renews `_disconnected` last)
            self._drop_socket()
            self._connected = asyncio.get_running_loop().create_future()
            self._lock.release()
            raise aiomqtt.MqttError("connection lost while connecting")
        return self

    def forget_unconfirmed(self) -> None:
        """Drop paho's copies of the QoS 1 publishes the broker never confirmed. Each caller was told its publish
        failed and tries again itself (the engine's retry, the failover); paho would also send every one again at
        the next connection, to whichever node that is, and each would reach the console twice."""
        with self._client._out_message_mutex:
            self._client._out_messages.clear()

    def holds_connection(self) -> bool:
        """Whether paho has a socket and a session with the broker: the truth aiomqtt's futures can miss."""
        return self._client._sock is not None and self._client.is_connected()

    async def publish_confirmed(
        self, topic: str, payload: bytes | str, *, retain: bool, properties: Properties | None
    ) -> None:
        """A QoS 1 publish, returning once the broker's PUBACK came: aiomqtt's `publish` without what it does around
        paho's on every call (a semaphore wrapper, a generator context manager, and two scans of every pending
        call: quadratic in a burst). Waits in `_pending_publishes` as aiomqtt's own publish does, so aiomqtt's
        `_on_publish` wakes it, and `_wake_waiting_publishes` at a lost connection."""
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc == paho.MQTT_ERR_NO_CONN:
            # paho keeps such a message to send at the next connection; the caller is told it failed and tries
            # again itself, so paho's copy would only reach the console twice (the soak saw eleven copies)
            with self._client._out_message_mutex:
                self._client._out_messages.pop(info.mid, None)
            self._failed(aiomqtt.MqttCodeError(info.rc, "the connection is gone"))
        if info.rc != paho.MQTT_ERR_SUCCESS:
            if self._disconnected.done() and self._disconnected.exception():
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message") from self._disconnected.exception()
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if info.is_published():  # the PUBACK came while paho was still in publish()
            return
        if info.mid in self._pending_publishes:  # a pending call for this mid: as aiomqtt, refuse
            raise RuntimeError(f'There already exists a pending call for message ID "{info.mid}"')
        confirmation = asyncio.Event()
        self._pending_publishes[info.mid] = confirmation
        try:
            await confirmation.wait()
        finally:
            self._pending_publishes.pop(info.mid, None)

    def _drop_socket(self) -> None:
        if not self._lock.locked() and self._client._sock is not None:
            self._client._sock_close()  # calls back into _on_socket_close, on this thread

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.session_present = flags.session_present
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        self._on_loop(self._opened)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        if threading.get_ident() != self._loop_thread:
            self._on_loop(self._reconcile)
            return
        # On the loop thread (a publish, a PUBACK to send): write what paho queued on the loop's next turn, without
        # first asking the loop to watch the socket for writing (an epoll_ctl each way, and a turn of the loop, per
        # packet). Whatever a full socket leaves unwritten is watched for as before (`_write_queued`).
        if not self._write_soon:
            self._write_soon = True
            self._loop.call_soon(self._write_queued)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        self._on_loop(self._reconcile)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        # paho closes the descriptor as soon as this returns: the loop must have let go of it by then.
        self._on_loop(self._closed, wait=True)

    def _on_loop(self, action: Callable[[], None], *, wait: bool = False) -> None:
        if threading.get_ident() == self._loop_thread:
            action()
            return
        if not wait:
            self._loop.call_soon_threadsafe(action)
            return
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        # The loop is free meanwhile (it awaits the executor); the bound only keeps a stopped loop from hanging
        # the thread.
        if not done.wait(timeout=10):
            log.error("event loop did not release the MQTT socket before paho closed it")

    def _opened(self) -> None:
        self._reconcile()
        if self._misc_task is not None:
            self._misc_task.cancel()
        self._misc_task = self._loop.create_task(self._misc_loop())

    def _closed(self) -> None:
        if self._awaiting_connack and self._watched is not None and not self._connected.done():
            # The broker hung up on the CONNECT (a NATS node without its JetStream quorum does, after 4 s): aiomqtt
            # ignores a loss before the CONNACK and would wait out its whole timeout before the next node is tried.
            self._connected.set_exception(aiomqtt.MqttError("the broker closed the connection before its CONNACK"))
        self._reconcile()
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None

    def _reconcile(self) -> None:
        """On the loop thread: watch paho's current socket for reading, and for writing while paho wants to."""
        sock = self._client._sock
        if self._watched is not None and self._watched is not sock:
            # paho let go of it (it sets _sock to None before its close callbacks), or replaced it; by socket
            # object, not descriptor number, which a new socket may already have taken.
            self._loop.remove_reader(self._watched_fd)
            if self._writing:
                self._loop.remove_writer(self._watched_fd)
            self._watched, self._watched_fd, self._writing = None, -1, False
        if sock is None or sock.fileno() < 0:
            return
        if self._watched is None:
            self._watched, self._watched_fd = sock, sock.fileno()
            self._loop.add_reader(self._watched_fd, self._on_readable)
        wants_write = self._client._registered_write
        if wants_write != self._writing:
            self._writing = wants_write
            if wants_write:
                self._loop.add_writer(self._watched_fd, self._on_writable)
            else:
                self._loop.remove_writer(self._watched_fd)

    def _on_readable(self) -> None:
        try:
            while True:
                self._client.loop_read()
                # an SSL socket may hold decrypted bytes that loop_read left, and the descriptor shows none (paho#131)
                sock = self._client._sock
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                    break
        except Exception as exc:  # noqa: BLE001 - as aiomqtt: any failure here ends the connection
            self._failed(exc)

    def _write_queued(self) -> None:
        self._write_soon = False
        if self._client._sock is not None and self._client._registered_write:
            self._on_writable()  # paho's loop_write: what it could not write keeps its write flag set
        self._reconcile()

    def _on_writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:  # noqa: BLE001 - as aiomqtt: any failure here ends the connection
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)


class MqttChannel:
    name = "mqtt"

    def __init__(self, settings: MqttSettings, clock: Callable[[], float] | None = None) -> None:
        """`clock`: the relay's (seconds since the epoch), so health times agree with what it stores."""
        self._cfg = settings
        self._sink: InboundSink | None = None
        self._raw: dict[str, RawHandler] = {}
        self._client: aiomqtt.Client | None = None
        self._connections = 0  # bumped when a connection ends: a publish that saw it change lost its PUBACK
        self._expiry_props: dict[int, Properties] = {}
        self.health = ChannelHealth(self.name, clock=clock or time.time)

    def listen(self, sink: InboundSink, subscriptions: Mapping[str, RawHandler] | None = None) -> None:
        """Where replies go, and which other topics to take in (call before run)."""
        self._sink = sink
        self._raw = dict(subscriptions or {})

    # ---- sending -------------------------------------------------------------------------------------

    async def send(self, msg: Outgoing) -> SendResult:
        return await self.publish(msg.target, msg.body, expiry_s=msg.expiry_s)

    async def publish(
        self, topic: str, payload: bytes | str, *, retain: bool = False, expiry_s: int | None = None
    ) -> SendResult:
        """Publish at QoS 1 and wait for the broker's PUBACK, at most `publish_timeout_s`."""
        client = self._client
        if client is None:
            return SendResult.failed(FailureReason.UNREACHABLE, "broker not connected")
        connection = self._connections
        try:
            async with asyncio.timeout(self._cfg.publish_timeout_s):
                if isinstance(client, LoopBoundClient):
                    await client.publish_confirmed(topic, payload, retain=retain, properties=self._props(expiry_s))
                else:
                    await client.publish(
                        topic, payload, qos=1, retain=retain, properties=self._props(expiry_s), timeout=math.inf
                    )
        except TimeoutError:
            if self.health.state is HealthState.UP:
                self.health.set(HealthState.DEGRADED, "no PUBACK within publish timeout")
            return SendResult.failed(FailureReason.TIMEOUT, "no PUBACK within publish timeout")
        except aiomqtt.MqttError as exc:
            return SendResult.failed(FailureReason.UNREACHABLE, str(exc))
        if connection != self._connections:
            return SendResult.failed(FailureReason.UNREACHABLE, "connection lost before the broker's PUBACK")
        if self.health.state is HealthState.DEGRADED and self._client is client:
            self.health.set(HealthState.UP, "publishing again")
        return SendResult.accepted()

    def _props(self, expiry_s: int | None) -> Properties | None:
        if not expiry_s or self._cfg.protocol != "5":
            return None
        props = self._expiry_props.get(expiry_s)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = expiry_s
            self._expiry_props[expiry_s] = props
        return props

    # ---- connection ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, and reconnect with capped backoff, until cancelled; on cancel say `offline` and leave."""
        backoff = Backoff(self._cfg.reconnect_min_s, self._cfg.reconnect_max_s)
        nodes = Nodes(self._cfg.nodes())
        # One client for the whole life, whichever node it is on: aiomqtt's futures and paho's state carry over.
        client = self._new_client()
        while True:
            node = nodes.current
            client.aim(node)
            try:
                async with client:
                    try:
                        await self._serve(client, backoff, node, len(nodes))
                    except asyncio.CancelledError:
                        await self._say_offline(client)
                        raise
                    finally:
                        self._lost(client, node)
            except aiomqtt.MqttError as exc:
                self._client = None
                why = str(exc) or type(exc).__name__
                log.debug("no connection at this MQTT node", extra={"node": node_name(node), "error": why})
                self.health.set(HealthState.DOWN, f"{node_name(node)}: {why}")
            except BaseException:
                self._client = None
                self.health.set(HealthState.DOWN, "channel stopped")
                raise
            nodes.move_on()
            await asyncio.sleep(backoff.next_delay())

    async def _serve(self, client: aiomqtt.Client, backoff: Backoff, node: tuple[str, int], nodes: int) -> None:
        """Take in messages from the first moment: a persistent session may hold thousands queued while the relay
        was away, and they arrive before the SUBACK; reading them only after subscribing could take longer than the
        subscribe may, and the relay would reconnect for ever without catching up."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(client))
                if isinstance(client, LoopBoundClient):
                    tg.create_task(self._watch(client))
                await self._on_connect(client, node, nodes)
                backoff.reset()
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None

    async def _watch(self, client: LoopBoundClient) -> None:
        """Ends the connection once paho no longer holds one, whether or not aiomqtt heard of it: a channel that
        calls itself up while every publish fails keeps the failover from starting."""
        period = min(1.0, self._cfg.keepalive_s / 2)  # paho's state changes under it: nothing to wait on but time
        while True:
            await asyncio.sleep(period)
            if not client.holds_connection():
                raise aiomqtt.MqttError("the connection to the broker is gone")

    def _lost(self, client: aiomqtt.Client, node: tuple[str, int]) -> None:
        """The connection is over: say so at once (the failover waits on it), and fail the publishes still waiting."""
        self._client = None
        self._connections += 1
        _wake_waiting_publishes(client)
        if isinstance(client, LoopBoundClient):
            client.forget_unconfirmed()
        self.health.set(HealthState.DOWN, f"connection to {node_name(node)} lost")

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        # A clean disconnect sends no last will: leaving on purpose, the relay says `offline` itself.
        if client._disconnected.done():
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(self._cfg.publish_timeout_s):
                await client.publish(self._cfg.status_topic, b"offline", qos=1, retain=True)

    def _new_client(self) -> LoopBoundClient:
        cfg = self._cfg
        v5 = cfg.protocol == "5"
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = cfg.session_expiry_s
        session: dict[str, Any] = (
            # the default clean_start would wipe the session on every reconnect
            {"clean_start": cfg.session_expiry_s == 0, "properties": connect_props} if v5
            else {"clean_session": cfg.session_expiry_s == 0}
        )
        tls_params = None
        if cfg.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
        host, port = cfg.nodes()[0]  # `aim` points it at each connect's node
        client = LoopBoundClient(
            host,
            port,
            identifier=cfg.client_id,
            username=cfg.username or None,
            password=cfg.password or None,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            **session,
            keepalive=cfg.keepalive_s,
            timeout=cfg.subscribe_timeout_s,
            will=aiomqtt.Will(cfg.status_topic, b"offline", qos=1, retain=True),
            tls_params=tls_params,
            # Small QoS 1 packets must not wait for Nagle; the broker side needs set_tcp_nodelay too.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_inflight_messages=1000,
        )
        client.pending_calls_threshold = 10_000  # the default warns on every publish of a burst
        # PUBACK for an inbound message only after it was handled (a report is on disk before the 112 system
        # hears it was taken). aiomqtt 2.x does not expose this, paho underneath does.
        client._client.manual_ack_set(True)
        return client

    async def _on_connect(self, client: aiomqtt.Client, node: tuple[str, int], nodes: int) -> None:
        group = self._cfg.share_group
        filters = [f"$share/{group}/{f}" if group else f for f in (self._cfg.reply_filter, *self._raw)]
        try:
            async with asyncio.timeout(self._cfg.subscribe_timeout_s):  # aiomqtt#356: a subscribe can hang
                granted = await _unless_disconnected(
                    client, client.subscribe([(f, 1) for f in filters], timeout=math.inf))
                await _unless_disconnected(
                    client, client.publish(self._cfg.status_topic, b"online", qos=1, retain=True, timeout=math.inf)
                )
        except TimeoutError:
            raise aiomqtt.MqttError("no SUBACK/PUBACK from the broker after connecting") from None
        for topic_filter, code in zip(filters, granted, strict=False):
            if isinstance(code, ReasonCode) and code.is_failure:
                # e.g. a NATS user without "$MQTT.sub.>" (deploy/nats/uav-relay.conf): nothing on it would arrive
                log.error("the broker refused a subscription", extra={"filter": topic_filter, "reason": str(code)})
        self._client = client
        self.health.set(HealthState.UP, f"connected to {node_name(node)}")
        resumed = isinstance(client, LoopBoundClient) and client.session_present
        where = {"node": node_name(node), "nodes": nodes, "client_id": self._cfg.client_id, "session_present": resumed}
        if resumed or not self._connections or not self._cfg.session_expiry_s:
            log.info("connected to the MQTT broker", extra=where)
        else:
            # the broker (or the cluster) lost the relay's session: acks and reports sent to it meanwhile are gone
            log.warning("connected to the MQTT broker, which had lost the relay's session", extra=where)

    async def _consume(self, client: aiomqtt.Client) -> None:
        limit = asyncio.Semaphore(MAX_INBOUND_IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as tg:
                async for message in client.messages:
                    await limit.acquire()
                    tg.create_task(self._handle(client, message, limit))
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message, limit: asyncio.Semaphore) -> None:
        try:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if message.topic.matches(self._cfg.reply_filter):
                await self._on_reply(message.topic.value, payload)
            else:
                for pattern, handler in self._raw.items():
                    if message.topic.matches(pattern):
                        await handler(RawMessage(message.topic.value, payload))
                        break
        except Exception:
            # Handlers answer bad input themselves; reaching here is a bug. Still PUBACK below: an unacked
            # message would hold one of the broker's few in-flight slots for this client forever.
            log.exception("inbound message handler failed", extra={"topic": message.topic.value})
        finally:
            limit.release()
        if message.qos > 0:
            client._client.ack(message.mid, message.qos)

    async def _on_reply(self, topic: str, payload: bytes) -> None:
        if self._sink is None:
            return
        sender = topic.rsplit("/", 1)[-1]
        try:
            parsed = parse_reply(payload)
        except ValueError as exc:
            await self._sink.on_rejected_inbound(self.name, sender, str(exc))
            return
        ref, kind, by = parsed
        await self._sink.on_inbound(Inbound(self.name, kind, ref, sender, by))


def _wake_waiting_publishes(client: aiomqtt.Client) -> None:
    """aiomqtt 2.x leaves a publish waiting for a PUBACK that can no longer come; wake each one, and let it see
    (by the connection count) that it lost its connection, instead of waiting for its timeout: the failover
    starts at once."""
    for confirmation in list(client._pending_publishes.values()):
        confirmation.set()


async def _unless_disconnected(client: aiomqtt.Client, call: Awaitable[T]) -> T:
    """Await `call`, but fail at once if the connection drops meanwhile.

    aiomqtt 2.x leaves a subscribe or publish waiting for its ack after the connection died; only the message
    iterator watches for the disconnect. Waiting for a timeout instead would delay the failover.
    """
    disconnected = client._disconnected  # the future aiomqtt itself resolves on disconnect
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    waiters: set[asyncio.Future[Any]] = {task, disconnected}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    exc = disconnected.exception() if disconnected.done() else None
    raise aiomqtt.MqttError("connection lost while waiting for the broker's ack") from exc


def parse_reply(payload: bytes) -> tuple[str, InboundKind, str]:
    """`{"alert_id": <ref>, "kind": "received"|"ack", "by": <name>}` -> (ref, kind, by); ValueError names the field."""
    if len(payload) > 4096:  # an ack is a few dozen bytes
        raise ValueError("body: over 4096 bytes")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"body: not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError("body: must be a JSON object")
    ref = data.get("alert_id")
    if not isinstance(ref, str) or not 0 < len(ref) <= 64:
        raise ValueError("alert_id: required string of 1..64 characters")
    try:
        kind = InboundKind(str(data.get("kind")))
    except ValueError:
        raise ValueError("kind: must be 'received' or 'ack'") from None
    by = data.get("by", "")
    if not isinstance(by, str) or len(by) > 100:
        raise ValueError("by: must be a string of at most 100 characters")
    return ref, kind, by
