"""Query parameters shared by the API's lists."""

from __future__ import annotations

from aiohttp import web

from relay.edges.api.errors import ApiError

MAX_LIST = 1000


def limit(request: web.Request, default: int = 100, maximum: int = MAX_LIST) -> int:
    """`?limit=`: 1..maximum, else 422 naming it."""
    try:
        value = int(request.query.get("limit", str(default)))
        if not 1 <= value <= maximum:
            raise ValueError
    except ValueError:
        raise ApiError(422, "invalid_query", [{"field": "limit", "problem": f"an integer 1..{maximum}"}]) from None
    return value
