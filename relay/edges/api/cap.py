"""Alerts as CAP 1.2 documents over HTTP: one alert's document, and the Atom feed a CAP consumer polls.

Who may read what is the alerts' rule (relay.edges.api.access): an operator its own reports' alerts, a desk
those sent to it, an engineer every one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aiohttp import web

from relay.domain.cap import CAP_MEDIA_TYPE, CapSource, Earlier, cap_alert, to_bytes
from relay.domain.cap_feed import (
    ALERT_ID_PATTERN,
    ATOM_MEDIA_TYPE,
    FeedEntry,
    FeedPage,
    atom_feed,
    first_id_at,
    id_before,
    parse_since,
    stable_iri,
)
from relay.domain.cap_schema import check_cap
from relay.domain.records import AlertRecord, TrackRecord
from relay.domain.render import Renderer
from relay.edges.api import query
from relay.edges.api.access import authenticate, check_read
from relay.edges.api.context import CONTEXT, ApiContext
from relay.edges.api.errors import ApiError
from relay.edges.auth import Principal, Role

FEED_LIMIT = 50
FEED_MAX = 200  # each entry holds a whole document and costs a read of its track
FEED_WINDOW_S = 24 * 3600  # without `since` or `after`: the alerts of the last day (a report's own age limit)

# A document takes about half a millisecond to build, check and write, a full page 130 ms: done in this one thread,
# never on the event loop, where it would hold up intake and deliveries (as the alert list's JSON is, in
# relay.edges.api.alerts). One thread also keeps the schema, which lxml does not share between threads, to itself.
_CAP_WORK = ThreadPoolExecutor(1, thread_name_prefix="relay-api-cap")
_T = TypeVar("_T")


async def _off_loop(fn: Callable[..., _T], *args: object) -> _T:
    return await asyncio.get_running_loop().run_in_executor(_CAP_WORK, functools.partial(fn, *args))


def cap_source(ctx: ApiContext) -> CapSource:
    params = ctx.engine.tracks.params
    return CapSource(sender=ctx.cap.sender, sender_name=ctx.cap.sender_name, public_url=ctx.public_url,
                     timezone=ctx.renderer.timezone, expires_after_s=params.join_window_s,
                     default_radius_km=params.position_error_km)


def cap_url(public_url: str, alert_id: str) -> str:
    return f"{public_url}/api/v1/alerts/{alert_id}/cap"


async def get_cap(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    alert_id = request.match_info["alert_id"]
    alert = await ctx.store.get_alert(alert_id)
    if alert is None:
        raise ApiError(404, "not_found", f"no alert {alert_id[:64]}")
    check_read(principal, alert)
    body = await _off_loop(_document, alert, await _earlier(ctx, alert, {}), cap_source(ctx), ctx.renderer)
    return web.Response(body=body, content_type=CAP_MEDIA_TYPE, charset="utf-8")


def _document(alert: AlertRecord, earlier: list[Earlier], source: CapSource, renderer: Renderer) -> bytes:
    document = cap_alert(alert, earlier, source, renderer)
    check_cap(document)
    return to_bytes(document)


async def cap_feed(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    principal = authenticate(request, ctx)
    limit = query.limit(request, default=FEED_LIMIT, maximum=FEED_MAX)
    now = ctx.clock.now()
    after = _after(request, now)
    # Not the last moments: an alert committed a little after a later-numbered one (a report being placed on its
    # track, another relay's clock slightly behind) would otherwise fall behind a consumer's `after` for good.
    before = first_id_at(now - ctx.cap.feed_delay_s)
    by_role = {Role.OPERATOR: {"operator_id": principal.id}, Role.DESK: {"desk_id": principal.id}}
    alerts = await ctx.store.list_alerts(states=None, limit=limit, after_id=after, before_id=before,
                                         **by_role.get(principal.role, {}))
    tracks: dict[str, TrackRecord | None] = {}
    earlier = [await _earlier(ctx, alert, tracks) for alert in alerts]
    base = f"{ctx.public_url}/api/v1/cap"
    page = FeedPage(
        feed_id=stable_iri(f"cap-feed/{ctx.cap.sender}/{_reader(principal)}"),
        title=f"{ctx.cap.sender_name}: обнаружения БПЛА (CAP 1.2)",
        author=ctx.cap.sender_name,
        # both built from the checked values only: nothing a caller sent goes into the document as it came
        self_url=f"{base}?after={after}&limit={limit}",
        next_url=f"{base}?after={alerts[-1].alert_id if alerts else after}&limit={limit}",
        updated=now,
    )
    body = await _off_loop(_feed, page, alerts, earlier, cap_source(ctx), ctx.renderer)
    return web.Response(body=body, content_type=ATOM_MEDIA_TYPE, charset="utf-8")


def _feed(page: FeedPage, alerts: Sequence[AlertRecord], earlier: Sequence[list[Earlier]], source: CapSource,
          renderer: Renderer) -> bytes:
    entries = []
    for alert, before in zip(alerts, earlier, strict=True):
        document = cap_alert(alert, before, source, renderer)
        check_cap(document)
        entries.append(FeedEntry(alert.alert_id, document, cap_url(source.public_url, alert.alert_id),
                                 alert.created_at))
    return to_bytes(atom_feed(page, entries))


def _after(request: web.Request, now: float) -> str:
    """The page's lower bound (exclusive): `after` (an alert id, as the next link gives it), else `since`."""
    problems = []
    after = request.query.get("after")
    if after is not None and not ALERT_ID_PATTERN.fullmatch(after):
        problems.append({"field": "after", "problem": "an alert id (26 characters), as the feed's next link gives"})
    since = None if after is not None else now - FEED_WINDOW_S  # a next link goes on however long ago it was
    if "since" in request.query:
        try:
            since = parse_since(request.query["since"], now)
        except ValueError as exc:
            problems.append({"field": "since", "problem": str(exc)})
    if problems:
        raise ApiError(422, "invalid_query", problems)
    return max(after or "", "" if since is None else id_before(since))


def _reader(principal: Principal) -> str:
    return f"{principal.role.value}/{principal.id}"


async def _earlier(ctx: ApiContext, alert: AlertRecord, tracks: dict[str, TrackRecord | None]) -> list[Earlier]:
    """The alerts of its track accepted before it (`tracks`: those read already for this request)."""
    track_id = alert.track_id or alert.alert_id
    if track_id not in tracks:
        tracks[track_id] = await ctx.store.get_track(track_id)
    track = tracks[track_id]
    if track is None:
        return []
    return [Earlier(a.alert_id, a.created_at) for a in track.alerts if a.alert_id < alert.alert_id]
