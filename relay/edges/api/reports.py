"""POST /api/v1/reports: the answer comes only after the report is on disk, and never waits for a channel."""

from __future__ import annotations

from aiohttp import web

from relay.edges.api.access import authenticate
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError
from relay.edges.api.views import accepted_view
from relay.edges.auth import Role
from relay.engine.intake import Outcome

MAX_BODY = 64 * 1024


async def post_report(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.OPERATOR)
    wait = ctx.limiter.take(principal.id, ctx.clock.now())
    if wait > 0:
        ctx.intake.reject("rate_limited", principal.id, "http")
        retry_after = max(1, int(wait + 0.999))
        raise ApiError(429, "rate_limited", f"over {principal.id}'s request rate; retry in {retry_after} s",
                       headers={"Retry-After": str(retry_after)})
    if request.content_length is not None and request.content_length > MAX_BODY:
        ctx.intake.reject("too_large", principal.id, "http")
        raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        ctx.intake.reject("too_large", principal.id, "http")
        raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes") from None
    result = await ctx.intake.submit(principal.id, body, "http")
    match result.outcome:
        case Outcome.INVALID:
            raise ApiError(422, "invalid_report", [p.model_dump() for p in result.problems])
        case Outcome.UNAVAILABLE:
            raise ApiError(503, "store_unavailable", result.detail)
        case Outcome.CONFLICT:
            raise ApiError(409, "conflict", result.detail)
    assert result.alert is not None
    view = accepted_view(result.alert, ctx.public_url)
    status = 201 if result.outcome is Outcome.CREATED else 200
    return web.json_response(
        text=view.model_dump_json(), status=status, headers={"Location": view.status_url}
    )
