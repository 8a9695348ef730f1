"""The gazetteer over HTTP: the operator's place field asks it for places whose names start with what was typed."""

from __future__ import annotations

from aiohttp import web

from relay.edges.api import query
from relay.edges.api.access import authenticate
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError

MAX_QUERY = 100
MAX_PLACES = 50


async def places(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    authenticate(request, ctx)
    q = request.query.get("q", "")
    if len(q) > MAX_QUERY:
        raise ApiError(422, "invalid_query", [{"field": "q", "problem": f"at most {MAX_QUERY} characters"}])
    limit = query.limit(request, default=10, maximum=MAX_PLACES)
    found = [{"name": p.name, "district": p.district, "lat": p.lat, "lon": p.lon, "accuracy_m": p.accuracy_m}
             for p in ctx.places.search(q, limit)]
    return web.json_response({"places": found})
