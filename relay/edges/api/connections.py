"""Bounded HTTP connections: a request head within `header_timeout_s`, at most `max_connections` at once.

Why this exists beside aiohttp (3.14, read in web_protocol.py, web_server.py, web_runner.py): its
RequestHandler bounds the *size* of a head (`max_line_size`, `max_field_size`, `max_headers`) and the idle time
between requests (`keepalive_timeout`, an hour by default, 75 s here), but not the *time* a client takes to send
a head: a socket that trickles a partial request line is held until that keep-alive timer fires. Nor does
anything in `AppRunner`/`TCPSite`/`Server` cap the number of connections: every accept becomes a handler, and
1,500 slow clients under a low file limit left the e-mail channel without a socket.

So the daemon makes the listening socket itself (`loop.create_server`) with a protocol factory that wraps the
handler aiohttp's own `runner.server()` makes (public API; aiohttp still parses and serves everything):

- a connection past the cap is answered 503 and closed at once, before aiohttp sees it; those already
  established are not touched;
- a timer armed when a connection opens, and again when the first bytes of a next request arrive on a kept-alive
  one, closes it (with a 408) unless a request started by then; a middleware tells the connection when each
  request starts and ends, so a long request (an event stream, a body being read) is never cut by it;
- the cap also stays below the process's file limit (RLIMIT_NOFILE, raised towards the hard limit when the soft
  one is too low), keeping `RESERVED_FDS` for the store, the broker, SMTP, Twilio, and a burst of accepts
  that are about to be refused.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

from aiohttp import web

from relay.edges.api.errors import Handler
from relay.engine.metrics import Metrics

log = logging.getLogger("relay.api.connections")

BACKLOG = 128
# The stdlib loop accepts up to `backlog` sockets per wake-up before any protocol can refuse one; the relay itself
# needs descriptors too (the store and its reader, the broker, SMTP and Twilio connections, the loop).
OWN_FDS = 128
RESERVED_FDS = BACKLOG + OWN_FDS

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
         b"Connection: close\r\n\r\n")
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def accept_backlog() -> int:
    """How many connections one wake-up of the listener may accept: BACKLOG, fewer under a low file limit (a
    burst of accepts that ran out of descriptors would stall the listener and starve SMTP and the store)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= 4 * BACKLOG + OWN_FDS:
        return BACKLOG
    return max(8, min(BACKLOG, soft // 8))


def connection_limit(configured: int) -> int:
    """`configured`, or less where the file limit would not leave RESERVED_FDS for the rest of the relay."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = configured + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return configured
    limit = max(1, soft - accept_backlog() - OWN_FDS)
    log.warning("fewer HTTP connections than configured: the file limit is low",
                extra={"event": "http_connections_limited", "configured": configured, "limit": limit,
                       "nofile": soft})
    return limit


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout_s: float, metrics: Metrics) -> None:
        self.limit, self.header_timeout_s, self._metrics = max_connections, header_timeout_s, metrics
        self.open = 0

    def factory(self, make_handler: Callable[[], web.RequestHandler]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Connection(self, make_handler)

    def admit(self) -> bool:
        if self.open >= self.limit:
            self._metrics.http_refused.labels("max_connections").inc()
            return False
        self.open += 1
        self._metrics.http_connections.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._metrics.http_connections.set(self.open)

    def head_too_slow(self) -> None:
        self._metrics.http_refused.labels("header_timeout").inc()


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler inside, with a deadline for each request head."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], web.RequestHandler]) -> None:
        self._guard, self._make_handler = guard, make_handler
        self._inner: web.RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._busy = False  # a request is being handled: its head is in
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if not self._guard.admit():
            transport.write(_BUSY)
            transport.close()
            return
        self._inner = self._make_handler()
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self._busy and self._deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()  # aiohttp's answers None: the transport closes itself
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.closed.set()
        inner, self._inner = self._inner, None
        if inner is not None:
            self._guard.release()
            inner.connection_lost(exc)

    def request_started(self) -> None:
        self._busy = True
        self._disarm()

    def request_finished(self) -> None:
        self._busy = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout_s, self._head_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._busy or self._inner is None or self._transport is None:
            return
        if self._transport.get_write_buffer_size():
            # The last answer is still going out (a big one to a slow reader) and the next head, pipelined, waits
            # behind it in aiohttp: that is not a slow head.
            self._arm()
            return
        self._guard.head_too_slow()
        self._transport.write(_TOO_SLOW)
        self._inner.force_close()


def closed_event(request: web.Request) -> asyncio.Event:
    """Set once the client's connection is gone. aiohttp tells a long-running handler (an event stream) only
    when it next writes, up to a ping interval later; a stream must give its slot back at once."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    return connection.closed if isinstance(connection, _Connection) else asyncio.Event()


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection a head is in (its deadline stops) and when the request is done."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    if not isinstance(connection, _Connection):
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_finished()
