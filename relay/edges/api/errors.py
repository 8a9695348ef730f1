"""Errors are JSON: {"error": "<code>", "detail": ...}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from relay.edges.api.context import CONTEXT
from relay.engine.jobs import JobKind, Jobs
from relay.store.base import StoreUnavailable

log = logging.getLogger("relay.api")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(code)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def json_error(status: int, code: str, detail: Any = None, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ApiError as exc:
        response = json_error(exc.status, exc.code, exc.detail, exc.headers)
    except StoreUnavailable as exc:
        log.error("store unavailable", extra={"event": "api_store_unavailable", "error": str(exc)})
        response = json_error(503, "store_unavailable", "the store cannot be written now; nothing was changed")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text)
    except Exception as exc:  # noqa: BLE001 - this request fails alone (a 500), counted and logged once
        Jobs(request.app[CONTEXT].metrics).failed(JobKind.REQUEST, exc, path=request.path[:200])
        response = json_error(500, "internal_error", "the relay hit an unexpected error; it is logged")
    if not response.prepared:
        for name, value in SAFE_HEADERS.items():
            response.headers.setdefault(name, value)
    return response
