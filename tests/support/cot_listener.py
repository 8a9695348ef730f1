"""A Cursor-on-Target listener for the tests: TCP, TLS (client certificates, a CA made on the fly) or UDP, on
127.0.0.1 and a free port; it parses what arrives with defusedxml, lets a test wait for an event matching a
predicate, and can be stopped and started again on the same port (a TAK server that restarts). It can also
misbehave: answer with garbage, stop reading (a stalled server whose TCP window fills), reset connections."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess  # nosec B404 - openssl, with fixed arguments, to make the test certificates
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.etree.ElementTree import Element  # nosec B405 - the type only; parsing is defusedxml's

from defusedxml.ElementTree import fromstring

from tests.support.wait import free_port

END = b"</event>"


@dataclass(frozen=True)
class CotEvent:
    raw: bytes
    root: Element
    connection: int  # which connection (or 0 for UDP) it came on
    at: float = field(default_factory=time.perf_counter)  # when it was parsed here (the bench's clock)

    @property
    def uid(self) -> str:
        return self.root.get("uid", "")

    @property
    def type(self) -> str:
        return self.root.get("type", "")

    def attr(self, name: str) -> str:
        return self.root.get(name, "")

    def point(self) -> dict[str, float]:
        p = self.root.find("point")
        assert p is not None, self.raw
        return {k: float(v) for k, v in p.attrib.items()}

    def detail(self, tag: str) -> Element | None:
        d = self.root.find("detail")
        return None if d is None else d.find(tag)

    def remarks(self) -> str:
        r = self.detail("remarks")
        return "" if r is None or r.text is None else r.text


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(d: Path) -> TlsFiles:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=uav-relay CoT test CA",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=uav-relay-{name}", "-keyout",
                str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def parse_stream(buffer: bytearray) -> list[bytes]:
    """The complete events at the front of a TCP stream's buffer (taken out of it)."""
    out = []
    while (end := buffer.find(END)) >= 0:
        out.append(bytes(buffer[: end + len(END)]).strip())
        del buffer[: end + len(END)]
    return out


@dataclass(eq=False)
class CotEvents:
    """Events as they come, parsed; a test waits for the one it expects."""

    events: list[CotEvent] = field(default_factory=list)
    unparsable: list[bytes] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _take(self, raw: bytes, conn: int) -> None:
        try:
            root = fromstring(raw)
        except Exception:
            self.unparsable.append(raw)  # kept for the test to see: our events must all parse
        else:
            self.events.append(CotEvent(raw, root, conn))
        self._changed.set()

    async def wait_for(self, match: Callable[[CotEvent], bool], *, after: int = 0, timeout: float = 5.0,
                       what: str = "event") -> CotEvent:
        """The first event from index `after` on that matches; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            for e in self.events[after:]:
                if match(e):
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [(e.uid, e.type, e.remarks()[:60]) for e in self.events[after:]][-10:]
                raise AssertionError(f"{what} not seen within {timeout} s; last events: {seen}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    def latest(self, uid: str) -> CotEvent | None:
        return next((e for e in reversed(self.events) if e.uid == uid), None)

    async def _read_stream(self, reader: asyncio.StreamReader, conn: int) -> None:
        buffer = bytearray()
        while chunk := await reader.read(65_536):
            buffer += chunk
            for raw in parse_stream(buffer):
                self._take(raw, conn)


@dataclass(eq=False)
class CotSubscriber(CotEvents):
    """A TAK client on the far side of a CoT router: connects to it and collects what it is sent."""

    _task: asyncio.Task[None] | None = None
    _writer: asyncio.StreamWriter | None = None

    async def connect(self, host: str, port: int) -> None:
        reader, self._writer = await asyncio.open_connection(host, port)
        self._task = asyncio.create_task(self._read_stream(reader, 1))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])


@dataclass(eq=False)
class CotListener(CotEvents):
    scheme: Literal["tcp", "tls", "udp"] = "tcp"
    tls: TlsFiles | None = None
    port: int = field(default_factory=free_port)
    reply: bytes = b""  # sent back on every connection as soon as it is made (garbage, for the hostile tests)
    reading: bool = True  # False: accept, then read nothing (the TCP window fills)
    connections: int = 0
    _server: asyncio.Server | None = None
    _udp: asyncio.DatagramTransport | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _resume: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.scheme == "udp":
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                               local_addr=("127.0.0.1", self.port))
            return
        context = None
        if self.scheme == "tls":
            assert self.tls is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.server_cert), str(self.tls.server_key))
            context.verify_mode = ssl.CERT_REQUIRED  # as a TAK server's streaming port: client certificates only
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=context)

    async def stop(self) -> None:
        """Gone: the port closed and every connection reset (a TAK server killed)."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def reset_connections(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def resume_reading(self) -> None:
        self.reading = True
        self._resume.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._writers.append(writer)
        self._changed.set()
        buffer = bytearray()
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            if self.reply:
                writer.write(self.reply)
            while True:
                if not self.reading:
                    self._resume.clear()
                    await self._resume.wait()
                chunk = await reader.read(65_536)
                if not chunk:
                    break
                buffer += chunk
                for raw in parse_stream(buffer):
                    self._take(raw, conn)
        writer.transport.abort()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: CotListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._listener._take(data.strip(), 0)
