"""The HTTP floor: a trivial aiohttp server that reads the body and answers 201 with a small JSON.

Run as its own process (`python -m bench.floor_server PORT`) so it is comparable with the relay's process.
"""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = b'{"alert_id":"floor","report_id":"floor","state":"pending"}'


async def post_report(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=201, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.add_routes([web.post("/api/v1/reports", post_report), web.get("/readyz", ready)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
