"""Providers' webhooks (`POST /webhooks/{provider}/{hook}`, e.g. /webhooks/twilio/sms): the HTTP edge takes the
call in, bounded, and hands it to the provider's channel receiver (authentication, parsing, the answer's format
live there) with the relay's reply sink. Nothing here knows a provider's fields or signature scheme."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from channels.base import Receiver, Unauthenticated, WebhookCall
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError
from relay.edges.api.failures import guard_of

log = logging.getLogger("relay.api.webhooks")

REFUSED = "webhook_refused"
BODY_TIMEOUT_S = 10.0


def routes(receivers: Mapping[str, Receiver]) -> list[web.RouteDef]:
    """One route per provider and hook (literal paths: the audit trail and metrics name each one)."""
    return [web.post(f"/webhooks/{provider}/{hook}", _handler(provider, hook))
            for provider, receiver in receivers.items() for hook in sorted(receiver.hooks)]


def _handler(provider: str, hook: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await webhook(request, provider, hook)

    return handle


async def webhook(request: web.Request, provider: str, hook: str) -> web.Response:
    ctx = request.app[CONTEXT]
    receiver = ctx.receivers[provider]
    if ctx.replies is None:
        raise ApiError(404, "not_found", "no one takes replies here")
    guard = guard_of(request)
    guard.check(request, REFUSED)  # an address that failed too often: 429 before its body is read
    name = f"{provider}_{hook}"
    try:
        receiver.precheck(request.headers)  # an unsigned call is refused before its body is read
        # The provider signed the URL it was given: the public one, which a reverse proxy may rewrite on the way.
        call = WebhookCall(hook, f"{ctx.public_url}{request.path_qs}", request.headers, request.query,
                           await _form(request))
        answer = await receiver.receive(call, ctx.replies)
    except Unauthenticated as exc:
        ctx.metrics.webhooks_rejected.labels(name, "signature").inc()
        guard.failed(request, REFUSED, str(exc))  # counted for the audit trail; 429 past the address's rate
        log.warning("webhook refused", extra={"event": "webhook_refused", "webhook": name, "reason": str(exc),
                                              "remote": request.remote})
        raise ApiError(403, "forbidden", str(exc)) from None
    if not answer.body:
        return web.Response(status=answer.status)
    return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type, charset="utf-8")


async def _form(request: web.Request) -> dict[str, str]:
    # A provider posts a small form at once; a body trickled in slowly by someone else must not hold the connection.
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return {k: str(v) for k, v in (await request.post()).items()}
    except TimeoutError:
        raise ApiError(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
