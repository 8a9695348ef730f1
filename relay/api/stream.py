"""GET /api/v1/events: Server-Sent Events, one per alert state change the token may see."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from relay.api.access import authenticate
from relay.api.context import CONTEXT
from relay.auth import Principal, Role
from relay.events import StateEvent


def _visible(principal: Principal, event: StateEvent) -> bool:
    if principal.role is Role.OPERATOR:
        return event.operator_id == principal.id
    if principal.role is Role.ENGINEER:
        return True
    return principal.id in event.desks


async def events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    sub = ctx.bus.subscribe()
    try:
        # aiohttp-sse pings every 15 s (proxies cut idle streams); its ping task ends when the client is gone.
        async with sse_response(request) as resp:
            ending: set[asyncio.Future[Any]] = {
                asyncio.ensure_future(ctx.shutting_down.wait()),
                asyncio.ensure_future(resp.wait()),
            }
            try:
                while True:
                    nxt = asyncio.ensure_future(sub.next())
                    await asyncio.wait({nxt, *ending}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        break
                    event = nxt.result()
                    if _visible(principal, event):
                        await resp.send(json.dumps(event.to_json(), ensure_ascii=False), event="alert")
            except ConnectionResetError:
                pass  # the client went away mid-send
            finally:
                for f in ending:
                    f.cancel()
        return resp
    finally:
        ctx.bus.unsubscribe(sub)
