"""Cursor-on-Target to one TAK server or CoT listener: `tcp://`, `tls://` (client certificate) or `udp://`.

The channel delivers opaque events, each under a uid (the thing on the map it is about), and keeps the latest
event of every uid that is still live: when the listener goes away and comes back, a TAK map gets the latest
state of everything again, not just what changed while it was gone. A uid's final event (one that takes it off
the map) is sent and then forgotten. Nothing here blocks a sender: `send` only records the event and wakes the
writer, so a listener that is down, slow or stalled costs the relay memory for one event per live uid, never time.

Our own writer rather than pytak: pytak 7.6's TXWorker writes to one connection given at its start (no
reconnection), awaits `drain()` without a bound (a stalled listener would stall the worker for ever), keeps a
plain queue (no latest-per-uid to resend), and warns at import when `cryptography`/`aiohttp` are missing. The
framing it would give is "the XML bytes, one event after the other", which is all this writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from channels.base import ChannelHealth, FailureReason, HealthState, Outgoing, SendResult

log = logging.getLogger("channels.cot")

Scheme = Literal["tcp", "tls", "udp"]
SCHEMES: tuple[Scheme, ...] = ("tcp", "tls", "udp")
# `Outgoing.target` of a uid's last event: once written, the uid is forgotten (not sent again on a reconnect).
FINAL = "final"
LIVE = ""
INBOUND_CHUNK = 65_536
MAX_UDP_EVENT = 65_000  # one datagram each; above this IPv4 cannot carry it


@dataclass(frozen=True, slots=True)
class CotAddress:
    scheme: Scheme
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(url: str) -> CotAddress:
    """`tcp://host:port`, `tls://host:port` or `udp://host:port`; ValueError says what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"{url!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be tcp://, tls:// or udp://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host (e.g. tcp://127.0.0.1:8087)")
    if port is None or port == 0:
        raise ValueError(f"{url!r}: no port (e.g. {parts.scheme}://{parts.hostname}:8087)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{url!r}: only scheme://host:port")
    scheme: Scheme = "tcp" if parts.scheme == "tcp" else "tls" if parts.scheme == "tls" else "udp"
    return CotAddress(scheme, parts.hostname, port)


@dataclass(frozen=True, slots=True)
class CotSettings:
    url: str
    cert_file: str | None = None  # tls: the client certificate the TAK server knows us by
    key_file: str | None = None
    ca_file: str | None = None  # tls: the CA that signed the server's certificate (else the system's)
    connect_timeout_s: float = 5.0
    # A listener that takes nothing for this long is stalled: the connection is dropped and made again.
    write_timeout_s: float = 5.0
    reconnect_first_s: float = 0.1
    reconnect_max_s: float = 5.0
    max_uids: int = 10_000  # live uids remembered; a new one beyond is refused (a bound on memory)
    max_event_bytes: int = 60_000


@dataclass(frozen=True, slots=True)
class _Entry:
    body: bytes
    final: bool
    offered_at: float  # monotonic


class _Lost(Exception):
    """The connection is gone or useless; the message says why (shown as the channel's health detail)."""


class CotChannel:
    """One connection to a CoT listener, kept up; the latest event of each live uid, resent on every connect."""

    def __init__(
        self, settings: CotSettings, clock: Callable[[], float] = time.time, *,
        on_written: Callable[[float], None] | None = None, name: str = "cot",
    ) -> None:
        self.name = name
        self.settings = settings
        self.address = parse_url(settings.url)
        self.health = ChannelHealth(name, clock=clock)
        self.on_written = on_written  # called with the seconds from send() to the event on the wire
        self._latest: dict[str, _Entry] = {}
        self._pending: dict[str, None] = {}  # uids to write, in the order they changed
        self._wake = asyncio.Event()
        self._was_up = False
        self.connects = 0
        self.written = 0

    # ---- the plug board's side ---------------------------------------------------------------------------

    async def send(self, msg: Outgoing) -> SendResult:
        """`msg.key` is the uid, `msg.body` the event, `msg.target` FINAL for the uid's last event."""
        return self.offer(msg.key, msg.body, final=msg.target == FINAL)

    def offer(self, uid: str, body: bytes, *, final: bool = False) -> SendResult:
        limit = MAX_UDP_EVENT if self.address.scheme == "udp" else self.settings.max_event_bytes
        if len(body) > limit:
            return SendResult.failed(FailureReason.REJECTED, f"event of {len(body)} bytes (at most {limit})",
                                     permanent=True)
        if uid not in self._latest and len(self._latest) >= self.settings.max_uids:
            return SendResult.failed(FailureReason.RATE_LIMITED, f"{len(self._latest)} live uids already")
        self._latest[uid] = _Entry(body, final, time.monotonic())
        self._pending[uid] = None
        self._wake.set()
        return SendResult.accepted()

    def live_uids(self) -> list[str]:
        return [uid for uid, e in self._latest.items() if not e.final]

    # ---- the connection --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, write, and on any loss connect again after a pause doubling up to reconnect_max_s."""
        s = self.settings
        wait = s.reconnect_first_s
        while True:
            try:
                await self._connected_once()
            except _Lost as exc:
                self._down(str(exc))
            except (OSError, ssl.SSLError, TimeoutError) as exc:  # ssl.SSLError is an OSError; said for the reader
                self._down(f"cannot connect to {self.address}: {_describe(exc)}")
            if self._was_up:  # it ran, then broke: a new failure, so the pauses start short again
                wait, self._was_up = s.reconnect_first_s, False
            await asyncio.sleep(wait)
            wait = min(wait * 2, s.reconnect_max_s)

    def _down(self, detail: str) -> None:
        if self.health.is_up:
            log.warning("CoT listener lost", extra={"event": "cot_down", "url": str(self.address), "detail": detail})
        self.health.set(HealthState.DOWN, detail)

    async def _connected_once(self) -> None:
        if self.address.scheme == "udp":
            async with self._datagrams() as (transport, lost):
                await self._serve(lambda body: transport.sendto(body), None, lost)
        else:
            async with self._stream() as (reader, writer):
                await self._serve(writer.write, writer, None, reader)

    @contextlib.asynccontextmanager
    async def _stream(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        a, s = self.address, self.settings
        tls = self._tls_context() if a.scheme == "tls" else None
        async with asyncio.timeout(s.connect_timeout_s):
            reader, writer = await asyncio.open_connection(
                a.host, a.port, ssl=tls, server_hostname=a.host if tls else None,
                ssl_handshake_timeout=s.connect_timeout_s if tls else None,
            )
        try:
            yield reader, writer
        finally:
            writer.transport.abort()  # a stalled listener would hold a graceful close; it gets the latest again

    def _tls_context(self) -> ssl.SSLContext:
        """Read on every connect: a renewed certificate is used from the next connection on."""
        s = self.settings
        context = ssl.create_default_context(cafile=s.ca_file)
        if s.cert_file:
            context.load_cert_chain(s.cert_file, s.key_file)
        return context

    @contextlib.asynccontextmanager
    async def _datagrams(self) -> AsyncIterator[tuple[asyncio.DatagramTransport, asyncio.Future[str]]]:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(lost), remote_addr=(self.address.host, self.address.port))
        try:
            yield transport, lost
        finally:
            transport.abort()

    async def _serve(
        self, write: Callable[[bytes], object], writer: asyncio.StreamWriter | None, lost: asyncio.Future[str] | None,
        reader: asyncio.StreamReader | None = None,
    ) -> None:
        """Up: everything live is pending again (the listener may have lost it), then written as it changes."""
        self.connects += 1
        self._was_up = True
        self._pending = dict.fromkeys(self._latest)
        self._wake.set()
        self.health.set(HealthState.UP, f"connected to {self.address}")
        log.info("CoT listener connected", extra={"event": "cot_up", "url": str(self.address),
                                                 "resent": len(self._pending)})
        parts = [self._write_loop(write, writer)]
        if reader is not None:
            parts.append(_discard_inbound(reader))
        if lost is not None:
            parts.append(_raise_when(lost))
        await _until_one_fails(parts)

    async def _write_loop(self, write: Callable[[bytes], object], writer: asyncio.StreamWriter | None) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = [(uid, self._latest[uid]) for uid in self._pending if uid in self._latest]
            self._pending.clear()
            if not batch:
                continue
            try:
                for _, entry in batch:
                    write(entry.body)
                if writer is not None:
                    async with asyncio.timeout(self.settings.write_timeout_s):
                        await writer.drain()
            # (what this batch held stays in _latest, finals too: the next connection is sent all of it)
            except TimeoutError:
                raise _Lost(f"{self.address} took nothing for {self.settings.write_timeout_s} s (stalled)") from None
            except OSError as exc:  # ConnectionResetError and the like
                raise _Lost(f"{self.address}: {_describe(exc)}") from None
            now = time.monotonic()
            for uid, entry in batch:
                self.written += 1
                if entry.final and self._latest.get(uid) is entry:
                    del self._latest[uid]
                if self.on_written is not None:
                    self.on_written(now - entry.offered_at)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, lost: asyncio.Future[str]) -> None:
        self._lost = lost

    def error_received(self, exc: Exception) -> None:
        # on a connected UDP socket, an ICMP "port unreachable" for an earlier datagram: nobody listens there
        if not self._lost.done():
            self._lost.set_result(_describe(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(_describe(exc) if exc else "closed")


async def _discard_inbound(reader: asyncio.StreamReader) -> None:
    """What the listener sends us (TAK servers echo and ping) is not for us: read and dropped, so its bytes never
    fill our receive window; the end of it is the end of the connection."""
    while True:
        try:
            chunk = await reader.read(INBOUND_CHUNK)
        except OSError as exc:
            raise _Lost(f"connection lost: {_describe(exc)}") from None
        if not chunk:
            raise _Lost("the listener closed the connection")


async def _raise_when(lost: asyncio.Future[str]) -> None:
    raise _Lost(f"no listener: {await lost}")


async def _until_one_fails(parts: list[Coroutine[None, None, None]]) -> None:
    """Run the parts side by side until one raises (each runs until the connection ends); the others are
    cancelled and awaited. (A TaskGroup would wrap the _Lost in an ExceptionGroup.)"""
    tasks = [asyncio.ensure_future(p) for p in parts]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:200]

