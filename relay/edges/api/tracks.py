"""Tracks over HTTP: read them, acknowledge one as a whole, and a desk's corrections (merge, split)."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.domain.clock import to_datetime
from relay.domain.model import AckRequest, MergeRequest, SplitRequest, TrackView
from relay.domain.records import TrackRecord
from relay.domain.states import AlertState
from relay.domain.track_summary import desk_json, track_json, track_state
from relay.edges.api import query
from relay.edges.api.access import authenticate
from relay.edges.api.context import CONTEXT, ApiContext
from relay.edges.api.errors import ApiError
from relay.edges.auth import Principal, Role, may_see
from relay.engine.engine import TrackRefused
from relay.engine.intake import field_problems

STATES = ("open", "acknowledged", "closed", "all")
TRAIL = 20  # reports' positions shown as the track's trail

_B = TypeVar("_B", bound=BaseModel)


def track_view(ctx: ApiContext, t: TrackRecord, now: float) -> TrackView:
    window = ctx.engine.tracks.params.join_window_s
    state = track_state([a.state for a in t.alerts], bool(t.acks), t.estimate.last_seen, now, window)
    desks: list[str] = []
    for a in t.alerts:
        desks += [d for d in a.desks if d not in desks]
    shown = [desk_json(d, _airfield(ctx, d), t.estimate, _acknowledged_by(t, d), now) for d in desks]
    latest = sorted(t.alerts, key=lambda a: a.sighting.observed_at)[-TRAIL:]
    trail = [{"lat": a.sighting.lat, "lon": a.sighting.lon, "at": to_datetime(a.sighting.observed_at)} for a in latest]
    return TrackView.model_validate({**track_json(t.estimate, state, [a.alert_id for a in t.alerts]),
                                     "desks": shown, "trail": trail})


def _airfield(ctx: ApiContext, desk_id: str) -> tuple[float, float] | None:
    desk = ctx.engine.desk(desk_id)
    return None if desk is None or desk.area is None else (desk.area.lat, desk.area.lon)


def _acknowledged_by(t: TrackRecord, desk_id: str) -> bool:
    if any(a.desk_id == desk_id for a in t.acks):
        return True
    mine = [a for a in t.alerts if desk_id in a.desks]
    return bool(mine) and all(a.state is AlertState.ACKNOWLEDGED for a in mine)


def _visible(principal: Principal, t: TrackRecord) -> bool:
    return any(may_see(principal, a.operator_id, a.desks) for a in t.alerts)


async def _track(ctx: ApiContext, principal: Principal, track_id: str) -> TrackRecord:
    t = await ctx.store.get_track(track_id)
    if t is None or (t.merged_into is not None and not t.alerts):
        raise ApiError(404, "not_found", f"no track {track_id}" if t is None else
                       f"track {track_id} was merged into {t.merged_into}")
    if not _visible(principal, t):
        raise ApiError(403, "forbidden", f"this track is not visible to {principal.role.value} {principal.id}")
    return t


def _json(view: TrackView) -> web.Response:
    return web.json_response(text=view.model_dump_json())


async def _body(request: web.Request, model: type[_B]) -> _B:
    raw = await request.read()
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", [p.model_dump() for p in field_problems(exc)]) from None


async def list_tracks(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    state = request.query.get("state", "open")
    if state not in STATES:
        raise ApiError(422, "invalid_query", [{"field": "state", "problem": f"one of {', '.join(STATES)}"}])
    limit = query.limit(request)
    now = ctx.clock.now()
    # an open track had a report or an open alert within the window or the give-up time: older ones are not read
    since = None if state != "open" else now - max(ctx.engine.tracks.params.join_window_s,
                                                   ctx.engine.policy.give_up_s) - 60
    by_role = {Role.OPERATOR: {"operator_id": principal.id}, Role.DESK: {"desk_id": principal.id}}
    found = await ctx.store.list_tracks(since=since, limit=limit, **by_role.get(principal.role, {}))
    views = [track_view(ctx, t, now) for t in found]
    shown = [v for v in views if state == "all" or v.state == state]
    body = b'{"tracks":[' + b",".join(v.model_dump_json().encode() for v in shown) + b"]}"
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def get_track(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    return _json(track_view(ctx, await _track(ctx, principal, request.match_info["track_id"]), ctx.clock.now()))


async def ack_track(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.DESK)
    body = await _body(request, AckRequest)
    t = await _track(ctx, principal, request.match_info["track_id"])
    if not any(principal.id in a.desks for a in t.alerts):
        raise ApiError(403, "forbidden", f"track {t.track_id} was not sent to desk {principal.id}")
    await ctx.engine.ack_track(t.track_id, principal.id, body.by, f"http {request.remote}")
    return _json(track_view(ctx, await _track(ctx, principal, t.track_id), ctx.clock.now()))


async def merge_track(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.DESK)
    body = await _body(request, MergeRequest)
    try:
        merged = await ctx.engine.merge_tracks(request.match_info["track_id"], body.into, principal.id, body.by)
    except TrackRefused as exc:
        raise ApiError(exc.status, _CODES[exc.status], str(exc)) from None
    return _json(track_view(ctx, merged, ctx.clock.now()))


async def split_alert(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx, Role.DESK)
    body = await _body(request, SplitRequest)
    try:
        new = await ctx.engine.split_alert(request.match_info["alert_id"], principal.id, body.by)
    except TrackRefused as exc:
        raise ApiError(exc.status, _CODES[exc.status], str(exc)) from None
    return _json(track_view(ctx, new, ctx.clock.now()))


_CODES = {403: "forbidden", 404: "not_found", 409: "conflict"}
