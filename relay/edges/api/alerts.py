"""Reading alerts, and acknowledging one from a desk's console."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from relay.domain.clock import to_datetime
from relay.domain.model import AckRequest, AlertView
from relay.domain.records import AlertRecord
from relay.domain.states import OPEN_ALERT_STATES, AlertState
from relay.edges.api import query
from relay.edges.api.access import authenticate, check_read
from relay.edges.api.context import CONTEXT
from relay.edges.api.errors import ApiError
from relay.edges.api.views import alert_view
from relay.edges.auth import Principal, Role
from relay.engine.engine import AckRefused
from relay.engine.intake import field_problems

# Turning a list of up to query.MAX_LIST alerts into JSON takes tens of milliseconds: done in this thread, never on the
# event loop, where it would hold up intake and deliveries (the store reads the list in its own thread too). Like
# the store's reader, it rests after each list as long as it worked: the GIL it holds meanwhile is the loop's too.
_LIST_JSON = ThreadPoolExecutor(1, thread_name_prefix="relay-api-list")
_list_json_rest_until = 0.0  # touched by that one thread only
_ALERT_LIST = TypeAdapter(list[AlertView])  # serialises the whole list in one call: about 3x faster than json.dumps


def _shown(alert: AlertRecord, principal: Principal) -> AlertView:
    # the caller's phone and name stay with the 112 centre
    return alert_view(alert, caller=principal.role is Role.OPERATOR)


def _json(view: AlertView) -> web.Response:
    return web.json_response(text=view.model_dump_json())


async def _readable_alert(request: web.Request, principal: Principal) -> AlertRecord:
    alert = await request.app[CONTEXT].store.get_alert(request.match_info["alert_id"])
    if alert is None:
        raise ApiError(404, "not_found", "no such alert")
    check_read(principal, alert)
    return alert


async def get_alert(request: web.Request) -> web.Response:
    principal = authenticate(request, request.app[CONTEXT])
    return _json(_shown(await _readable_alert(request, principal), principal))


async def list_alerts(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    state = request.query.get("state", "all")
    states: list[AlertState] | None
    if state == "open":
        states = sorted(OPEN_ALERT_STATES)
    elif state == "all":
        states = None
    else:
        try:
            states = [AlertState(state)]
        except ValueError:
            allowed = ", ".join(["open", "all", *(s.value for s in AlertState)])
            raise ApiError(422, "invalid_query", [{"field": "state", "problem": f"one of {allowed}"}]) from None
    limit = query.limit(request)
    by_role = {Role.OPERATOR: {"operator_id": principal.id}, Role.DESK: {"desk_id": principal.id}}
    alerts = await ctx.store.list_alerts(states=states, limit=limit, **by_role.get(principal.role, {}))
    body = await asyncio.get_running_loop().run_in_executor(_LIST_JSON, _list_json, alerts, principal)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _list_json(alerts: list[AlertRecord], principal: Principal) -> bytes:
    global _list_json_rest_until
    time.sleep(max(0.0, _list_json_rest_until - time.monotonic()))
    started = time.monotonic()
    encoded = b'{"alerts":' + _ALERT_LIST.dump_json([_shown(a, principal) for a in alerts]) + b"}"
    done = time.monotonic()
    _list_json_rest_until = done + (done - started)
    return encoded


async def ack_alert(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.DESK)
    raw = await request.read()
    try:
        body = AckRequest.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        raise ApiError(422, "invalid_ack", [p.model_dump() for p in field_problems(exc)]) from None
    alert = await ctx.store.get_alert(request.match_info["alert_id"])
    if alert is None:
        raise ApiError(404, "not_found", "no such alert")
    try:
        # a desk the alert did not go to is refused by the engine, which writes the refusal down
        await ctx.engine.acknowledge(alert.alert_id, principal.id, "http", body.by, f"http {request.remote}")
    except AckRefused as exc:
        raise ApiError(403, "forbidden", str(exc)) from None
    after = await ctx.store.get_alert(alert.alert_id)
    assert after is not None
    return _json(_shown(after, principal))


async def received(request: web.Request) -> web.Response:
    """The desk's browser console has put the alert on screen (CONTRACT.md, "The web console confirms what it
    shows"): delivered over `web` for that desk; a second call changes nothing."""
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.DESK)
    alert = await ctx.store.get_alert(request.match_info["alert_id"])
    if alert is None:
        raise ApiError(404, "not_found", "no such alert")
    if principal.id not in alert.desks:
        raise ApiError(403, "forbidden", f"alert {alert.alert_id} was not sent to desk {principal.id}")
    await ctx.engine.shown(alert.alert_id, principal.id)
    after = await ctx.store.get_alert(alert.alert_id)
    assert after is not None
    return _json(_shown(after, principal))


async def alert_history(request: web.Request) -> web.Response:
    """Everything that happened to one alert, oldest first: accepted, delivered, acks (also duplicate ones)."""
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    alert = await _readable_alert(request, principal)
    events = [
        {"at": to_datetime(e.at).isoformat(), "kind": e.kind, "detail": e.detail}
        for e in await ctx.store.events(alert.alert_id)
    ]
    return web.json_response(text=json.dumps({"alert_id": alert.alert_id, "events": events}, ensure_ascii=False))


async def audit(request: web.Request) -> web.Response:
    """Acks (with where they came from), refused acks, refused webhooks and links: for the on-call engineer."""
    ctx = request.app[CONTEXT]
    authenticate(request, ctx, Role.ENGINEER)
    limit = query.limit(request)
    events = [
        {"alert_id": e.alert_id or None, "at": to_datetime(e.at).isoformat(), "kind": e.kind, "detail": e.detail}
        for e in await ctx.store.audit_log(limit)
    ]
    return web.json_response(text=json.dumps({"events": events}, ensure_ascii=False))
