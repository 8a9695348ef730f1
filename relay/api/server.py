"""The aiohttp application and its lifecycle inside the daemon (signals stay with the daemon)."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.api import ack_page, alerts, consoles, ops, reports, stream, webhooks
from relay.api.context import CONTEXT, ApiContext
from relay.api.errors import error_middleware
from relay.api.openapi import openapi

log = logging.getLogger("relay.api")


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=reports.MAX_BODY)
    app[CONTEXT] = ctx

    async def _on_shutdown(app: web.Application) -> None:
        ctx.shutting_down.set()  # SSE streams end now instead of holding the shutdown

    app.on_shutdown.append(_on_shutdown)
    app.add_routes([
        web.post("/api/v1/reports", reports.post_report),
        web.get("/api/v1/alerts", alerts.list_alerts),
        web.get("/api/v1/alerts/{alert_id}", alerts.get_alert),
        web.post("/api/v1/alerts/{alert_id}/ack", alerts.ack_alert),
        web.get("/api/v1/alerts/{alert_id}/history", alerts.alert_history),
        web.get("/api/v1/audit", alerts.audit),
        web.get("/api/v1/events", stream.events),
        web.get("/api/v1/openapi.json", openapi),
        web.post("/webhooks/twilio/sms", webhooks.inbound_sms),
        web.post("/webhooks/twilio/status", webhooks.sms_status),
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
    ])
    return app


class HttpServer:
    def __init__(self, ctx: ApiContext, host: str, port: int) -> None:
        self._runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=1.0)
        self._host, self._port = host, port
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server  # the only way to learn the port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("http listening", extra={"event": "http_listening", "host": self._host, "port": self.port})

    async def stop(self) -> None:
        await self._runner.cleanup()
