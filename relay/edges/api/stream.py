"""GET /api/v1/events: Server-Sent Events, one per alert state change the token may see.

Each stream holds a connection and a bus subscription for as long as the client likes: at most
`http.max_streams_per_token` at once per token (the next gets 429), so one leaked or hostile token cannot take
the connections every console needs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from relay.edges.api.access import authenticate
from relay.edges.api.connections import closed_event
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError
from relay.edges.api.views import event_json
from relay.edges.auth import Principal, may_see


class StreamSlots:
    """Open streams per principal (one token each); keys are configured principals only, so it stays small."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: Counter[Principal] = Counter()

    def take(self, principal: Principal) -> bool:
        if self._open[principal] >= self.per_token:
            return False
        self._open[principal] += 1
        return True

    def release(self, principal: Principal) -> None:
        self._open[principal] -= 1
        if self._open[principal] <= 0:
            del self._open[principal]


STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)


async def events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    slots = request.app[STREAM_SLOTS]
    if not slots.take(principal):
        ctx.metrics.http_refused.labels("streams_per_token").inc()
        raise ApiError(429, "too_many_streams", f"{slots.per_token} event streams are open for this token "
                       "already; close one first", headers={"Retry-After": "5"})
    try:
        return await _stream(request, principal)
    finally:
        slots.release(principal)


async def _stream(request: web.Request, principal: Principal) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    gone = closed_event(request)
    sub = ctx.bus.subscribe()
    try:
        # aiohttp-sse pings every 15 s (proxies cut idle streams); its ping task ends when the client is gone.
        async with sse_response(request) as resp:
            ending: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(ctx.shutting_down.wait()),
                asyncio.ensure_future(resp.wait()),
                asyncio.ensure_future(gone.wait()),
            }
            try:
                while True:
                    nxt = asyncio.ensure_future(sub.next())
                    await asyncio.wait({nxt, *ending}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        break
                    event = nxt.result()
                    if may_see(principal, event.operator_id, event.desks):
                        await resp.send(event_json(event), event="alert")
            except ConnectionResetError:
                pass  # the client went away mid-send
            finally:
                for f in ending:
                    f.cancel()
        return resp
    finally:
        ctx.bus.unsubscribe(sub)
