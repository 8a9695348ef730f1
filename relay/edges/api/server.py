"""The aiohttp application and its lifecycle inside the daemon (signals stay with the daemon).

The listening socket is the daemon's own, not a TCPSite: see relay.api.connections for why (aiohttp bounds
neither the time to send a request head nor the number of connections).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from relay.edges.api import ack_page, alerts, cap, consoles, ops, places, reports, stream, tracks, webhooks
from relay.edges.api.connections import ConnectionGuard, accept_backlog, connection_limit, track_requests
from relay.edges.api.context import CONTEXT, ApiContext
from relay.edges.api.errors import error_middleware
from relay.edges.api.failures import AUTH_GUARD, AuthGuard
from relay.edges.api.openapi import openapi

log = logging.getLogger("relay.api")


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 10.0
    max_connections: int = 2000
    max_streams_per_token: int = 20
    # Idle keep-alive connections close after this (aiohttp's default is an hour); above the 60 s most
    # clients and proxies use, so the close comes from their side first.
    keepalive_s: float = 75.0


def build_app(ctx: ApiContext, guard: AuthGuard, limits: HttpLimits) -> web.Application:
    app = web.Application(middlewares=[track_requests, error_middleware], client_max_size=reports.MAX_BODY)
    app[CONTEXT] = ctx
    app[AUTH_GUARD] = guard
    app[stream.STREAM_SLOTS] = stream.StreamSlots(limits.max_streams_per_token)

    async def _on_shutdown(app: web.Application) -> None:
        ctx.shutting_down.set()  # SSE streams end now instead of holding the shutdown

    app.on_shutdown.append(_on_shutdown)
    app.add_routes([
        web.post("/api/v1/reports", reports.post_report),
        web.get("/api/v1/alerts", alerts.list_alerts),
        web.get("/api/v1/alerts/{alert_id}", alerts.get_alert),
        web.post("/api/v1/alerts/{alert_id}/ack", alerts.ack_alert),
        web.get("/api/v1/alerts/{alert_id}/history", alerts.alert_history),
        web.get("/api/v1/alerts/{alert_id}/cap", cap.get_cap),
        web.get("/api/v1/cap", cap.cap_feed),
        web.get("/api/v1/audit", alerts.audit),
        web.post("/api/v1/alerts/{alert_id}/received", alerts.received),
        web.get("/api/v1/places", places.places),
        web.get("/api/v1/tracks", tracks.list_tracks),
        web.get("/api/v1/tracks/{track_id}", tracks.get_track),
        web.post("/api/v1/tracks/{track_id}/ack", tracks.ack_track),
        web.post("/api/v1/tracks/{track_id}/merge", tracks.merge_track),
        web.post("/api/v1/alerts/{alert_id}/split", tracks.split_alert),
        web.get("/api/v1/events", stream.events),
        web.get("/api/v1/openapi.json", openapi),
        web.get("/ack/{token}", ack_page.show),
        web.post("/ack/{token}", ack_page.confirm),
        web.get("/healthz", ops.healthz),
        web.get("/readyz", ops.readyz),
        web.get("/metrics", ops.metrics),
        web.get("/console", consoles.index),
        web.get("/console/", consoles.index),
        web.get("/console/dispatcher", consoles.dispatcher),
        web.get("/console/operator", consoles.operator),
        web.get("/console/session", consoles.session),
        web.get("/console/static/{name}", consoles.static),
        *webhooks.routes(ctx.receivers),
    ])
    return app


class HttpServer:
    def __init__(self, ctx: ApiContext, host: str, port: int, guard: AuthGuard,
                 limits: HttpLimits = HttpLimits()) -> None:
        self._runner = web.AppRunner(build_app(ctx, guard, limits), access_log=None, shutdown_timeout=1.0,
                                     keepalive_timeout=limits.keepalive_s)
        self._host, self._port, self._limits, self._metrics = host, port, limits, ctx.metrics
        self._listener: asyncio.Server | None = None
        self.connections: ConnectionGuard | None = None
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        limit = connection_limit(self._limits.max_connections)  # raises the file limit first where it can
        self.connections = ConnectionGuard(limit,
                                           self._limits.header_timeout_s, self._metrics)
        self._listener = await asyncio.get_running_loop().create_server(
            self.connections.factory(handlers), self._host, self._port, backlog=accept_backlog(), reuse_address=True)
        sockets = self._listener.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("http listening", extra={"event": "http_listening", "host": self._host, "port": self.port,
                                          "max_connections": self.connections.limit})

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; those open are closed by the runner's cleanup
        await self._runner.cleanup()
        if self._listener is not None:
            try:
                async with asyncio.timeout(2):
                    await self._listener.wait_closed()
            except TimeoutError:
                log.warning("http listener slow to close", extra={"event": "http_close_slow"})
