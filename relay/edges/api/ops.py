"""/healthz, /readyz and /metrics: what monitoring reads."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.domain.clock import to_datetime
from relay.edges.api.context import CONTEXT
from relay.store.base import StoreUnavailable

STORE_CHECK_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    reasons: list[str] = []
    try:
        async with asyncio.timeout(STORE_CHECK_TIMEOUT_S):
            await ctx.store.check_writable()
    except StoreUnavailable as exc:
        reasons.append(f"store: {exc}")
    except TimeoutError:
        reasons.append(f"store: no commit within {STORE_CHECK_TIMEOUT_S} s")
    channels = {
        h.channel: {"state": h.state.value, "since": to_datetime(h.since).isoformat(), "detail": h.detail}
        for h in ctx.channels
    }
    if not any(h.is_up for h in ctx.channels):
        reasons.append("no channel is up: " + "; ".join(f"{h.channel}: {h.detail}" for h in ctx.channels))
    body = {"ready": not reasons, "reasons": reasons, "channels": channels}
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = generate_latest(ctx.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
