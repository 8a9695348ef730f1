"""A CAP consumer against a real relay (real HTTP, real store, a private Mosquitto): every alert as a valid CAP 1.2
document, to those who may read the alert only; a raid's later calls as Updates of its track; and an Atom feed
that a poller follows to see every alert once. Every document fetched here is validated against the XSD
(tests.support.cap_schema)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.broker import Mosquitto
from tests.support.cap_schema import NS, parameters, text, valid_cap, valid_feed
from tests.support.relay import (
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)
from tests.support.wait import eventually

FEED_DELAY_S = 0.2


def config(broker: Mosquitto, data: Path) -> dict[str, Any]:
    return settings_dict(broker.port, data, tracks={"enabled": True},
                         cap={"sender": "uav-relay@test.example", "feed_delay_s": FEED_DELAY_S})


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(config(broker, tmp_path / "data")) as r:
        yield r


async def fetch(relay: RunningRelay, path: str, token: str | None = DESK_TOKEN,
                params: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with relay.http.get(f"{relay.url}{path}", headers=headers, params=params) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


async def cap_of(relay: RunningRelay, alert_id: str, token: str = DESK_TOKEN) -> Any:
    status, content_type, body = await fetch(relay, f"/api/v1/alerts/{alert_id}/cap", token)
    assert status == 200, body[:500]
    assert content_type == "application/cap+xml; charset=utf-8"
    return valid_cap(body)


async def post(relay: RunningRelay, body: dict[str, Any], token: str = OPERATOR_TOKEN) -> dict[str, Any]:
    status, accepted = await relay.post_report(body, token)
    assert status == 201, accepted
    return dict(accepted)


def seen(ago_s: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago_s)).isoformat()


# ---- one alert ---------------------------------------------------------------------------------------------------

async def test_the_desk_and_the_operator_get_the_alert_as_the_same_valid_cap_document(relay: RunningRelay) -> None:
    accepted = await post(relay, report("cap-1"))
    doc = await cap_of(relay, accepted["alert_id"])
    assert text(doc, "cap:identifier") == f"uav-relay.alert.{accepted['alert_id']}"
    assert text(doc, "cap:sender") == "uav-relay@test.example"
    assert text(doc, "cap:status") == "Actual" and text(doc, "cap:msgType") == "Alert"
    assert text(doc, "cap:incidents") == (await relay.alert(accepted["alert_id"]))["track_id"]
    assert text(doc, "cap:info/cap:web") == f"http://127.0.0.1:8080/api/v1/alerts/{accepted['alert_id']}"
    assert parameters(doc)["short_code"] == accepted["short_code"]
    _, _, as_desk = await fetch(relay, f"/api/v1/alerts/{accepted['alert_id']}/cap", DESK_TOKEN)
    _, _, as_operator = await fetch(relay, f"/api/v1/alerts/{accepted['alert_id']}/cap", OPERATOR_TOKEN)
    assert as_desk == as_operator  # the caller's phone and name are in neither
    assert "Петров".encode() not in as_desk and b"+79001234567" not in as_desk


async def test_only_those_who_may_read_the_alert_get_its_cap_document(relay: RunningRelay) -> None:
    accepted = await post(relay, report("cap-access"))  # routed to airfield-1 only (airfield-2 is far away)
    path = f"/api/v1/alerts/{accepted['alert_id']}/cap"
    assert (await fetch(relay, path, DESK2_TOKEN))[0] == 403
    assert (await fetch(relay, path, OPERATOR2_TOKEN))[0] == 403
    assert (await fetch(relay, path, None))[0] == 401
    assert (await fetch(relay, path, "not-a-token-at-all-000000"))[0] == 401
    status, content_type, body = await fetch(relay, "/api/v1/alerts/01NOTHINGHERE0000000000000/cap")
    assert status == 404 and content_type.startswith("application/json")
    assert b'"not_found"' in body and b"01NOTHINGHERE0000000000000" in body
    for hostile in ("%00%01", "%E2%80%AE" * 50, "x" * 2000, "..%2F..%2Fetc"):
        assert (await fetch(relay, f"/api/v1/alerts/{hostile}/cap"))[0] == 404


async def test_exercises_tests_and_stale_reports_are_marked_in_their_documents(relay: RunningRelay) -> None:
    exercise = await post(relay, report("cap-exercise", status="exercise"))
    test = await post(relay, report("cap-test", status="test", location={"lat": 55.0, "lon": 37.0}))
    stale = await post(relay, report("cap-stale", observed_at=seen(11 * 60), location={"lat": 50.0, "lon": 30.0}))
    assert text(await cap_of(relay, exercise["alert_id"]), "cap:status") == "Exercise"
    assert text(await cap_of(relay, test["alert_id"]), "cap:status") == "Test"
    doc = await cap_of(relay, stale["alert_id"])
    assert parameters(doc)["stale"] == "true" and text(doc, "cap:info/cap:urgency") == "Expected"


async def test_the_document_is_the_same_after_a_restart(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = config(broker, tmp_path / "data")
    async with running_relay(cfg) as relay:
        first = await post(relay, report("cap-restart-1", observed_at=seen(90)))
        second = await post(relay, report("cap-restart-2", observed_at=seen(30)))
        before = [(await fetch(relay, f"/api/v1/alerts/{a['alert_id']}/cap"))[2] for a in (first, second)]
    async with running_relay(cfg) as relay:
        after = [(await fetch(relay, f"/api/v1/alerts/{a['alert_id']}/cap"))[2] for a in (first, second)]
    assert before == after
    assert text(valid_cap(after[1]), "cap:msgType") == "Update"


# ---- a track: Alert, then Updates; a dispatcher's merge and split -----------------------------------------------

async def test_a_raid_is_one_incident_whose_later_calls_are_updates_referencing_the_earlier(
        relay: RunningRelay) -> None:
    calls = [await post(relay, report(f"raid-{n}", observed_at=seen(120 - 30 * n),
                                      location={"lat": 52.61, "lon": 39.59 + 0.02 * n, "district": "Грязинский район"}))
             for n in range(3)]
    docs = [await cap_of(relay, c["alert_id"]) for c in calls]
    assert [text(d, "cap:msgType") for d in docs] == ["Alert", "Update", "Update"]
    assert len({text(d, "cap:incidents") for d in docs}) == 1
    triplet = ",".join(text(docs[0], f"cap:{k}") for k in ("sender", "identifier", "sent"))
    assert text(docs[1], "cap:references") == triplet
    assert text(docs[2], "cap:references").split(" ") == [
        triplet, ",".join(text(docs[1], f"cap:{k}") for k in ("sender", "identifier", "sent"))]
    assert text(docs[2], "cap:info/cap:certainty") == "Observed"  # three callers saw it

    # the dispatcher splits the last call off: a new incident of its own, so an Alert again
    async with relay.http.post(f"{relay.url}/api/v1/alerts/{calls[2]['alert_id']}/split",
                               headers={"Authorization": f"Bearer {DESK_TOKEN}"}, json={}) as r:
        assert r.status == 200, await r.text()
        new_track = (await r.json())["track_id"]
    split = await cap_of(relay, calls[2]["alert_id"])
    assert text(split, "cap:msgType") == "Alert" and text(split, "cap:incidents") == new_track
    assert split.find("cap:references", NS) is None

    # ... and merges it back: an Update of the first incident again
    async with relay.http.post(f"{relay.url}/api/v1/tracks/{new_track}/merge",
                               headers={"Authorization": f"Bearer {DESK_TOKEN}"},
                               json={"into": text(docs[0], "cap:incidents")}) as r:
        assert r.status == 200, await r.text()
    merged = await cap_of(relay, calls[2]["alert_id"])
    assert text(merged, "cap:msgType") == "Update"
    assert text(merged, "cap:incidents") == text(docs[0], "cap:incidents")
    assert len(text(merged, "cap:references").split(" ")) == 2


# ---- the Atom feed --------------------------------------------------------------------------------------------

async def read_feed(relay: RunningRelay, token: str = DESK_TOKEN, **params: str) -> tuple[Any, list[Any]]:
    status, content_type, body = await fetch(relay, "/api/v1/cap", token, params=params)
    assert status == 200, body[:500]
    assert content_type == "application/atom+xml; charset=utf-8"
    return valid_feed(body)


def next_params(feed: Any) -> dict[str, str]:
    link = feed.find("atom:link[@rel='next']", NS)
    assert link is not None
    return {k: v[0] for k, v in parse_qs(urlsplit(link.get("href")).query).items()}


VARIANTS: list[dict[str, Any]] = [
    {"uav_type": "fixed_wing", "count": 1, "heading_deg": 0},
    {"uav_type": "multirotor", "count": 1000, "heading_deg": None, "status": "exercise"},
    {"uav_type": "helicopter", "location": {"lat": 52.0, "lon": 38.0, "accuracy_m": 50, "address": "ул. Мира, 1"}},
    {"uav_type": "missile_like", "priority": "flash", "location": {"lat": 51.0, "lon": 37.0}},
    {"uav_type": "unknown", "status": "test", "priority": "routine",
     "location": {"lat": 53.0, "lon": 40.0, "district": "Район\u202e\u2028 <&> ]]>", "accuracy_m": 999_999}},
    {"notes": "строка 1\nстрока 2\u0000\u001b[31m \ufeff\ufffd <b>&amp;</b>", "movement": "circling",
     "altitude": "high", "altitude_m": 300, "bearing_deg": 45, "perception": "heard",
     "location": {"lat": 54.0, "lon": 41.0, "district": "Ж" * 100, "address": "А" * 200}},
    {"observed_at": None, "location": {"lat": 55.5, "lon": 42.5}},  # stale: observed 11 minutes ago
]


async def test_a_poller_following_next_links_sees_every_alert_once_each_valid(relay: RunningRelay) -> None:
    posted = []
    for n, variant in enumerate(VARIANTS):
        body = report(f"feed-{n}", **{k: v for k, v in variant.items() if k != "observed_at"})
        if "observed_at" in variant:
            body["observed_at"] = seen(11 * 60)
        posted.append((await post(relay, body))["alert_id"])
    seen_ids: list[str] = []
    params = {"since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(), "limit": "3"}

    async def caught_up() -> bool:
        nonlocal params
        feed, alerts = await read_feed(relay, **params)
        seen_ids.extend(text(a, "cap:identifier").removeprefix("uav-relay.alert.") for a in alerts)
        params = next_params(feed)
        assert params["limit"] == "3" and len(alerts) <= 3
        return set(seen_ids) >= set(posted)

    await eventually(caught_up, timeout=10, interval=0.05, what="every alert in the feed")
    assert sorted(seen_ids) == sorted(posted)  # each once
    assert seen_ids == sorted(seen_ids)  # oldest first
    feed, alerts = await read_feed(relay, **params)  # caught up: nothing new, the same next link
    assert alerts == [] and next_params(feed) == params


async def test_the_feed_shows_each_reader_only_the_alerts_it_may_read(relay: RunningRelay) -> None:
    mine = await post(relay, report("feed-op1"))
    theirs = await post(relay, report("feed-op2", location={"lat": 43.1, "lon": 131.9}), OPERATOR2_TOKEN)

    async def ids(token: str) -> set[str]:
        _, alerts = await read_feed(relay, token)
        return {text(a, "cap:identifier").removeprefix("uav-relay.alert.") for a in alerts}

    await eventually(lambda: ids(DESK_TOKEN), what="the feed past its delay")
    assert await ids(DESK_TOKEN) == {mine["alert_id"], theirs["alert_id"]}  # airfield-1 has no area: everything
    assert await ids(DESK2_TOKEN) == {theirs["alert_id"]}  # airfield-2: only what is in its area
    assert await ids(OPERATOR_TOKEN) == {mine["alert_id"]}
    assert await ids(OPERATOR2_TOKEN) == {theirs["alert_id"]}
    assert (await fetch(relay, "/api/v1/cap", None))[0] == 401


@pytest.mark.parametrize(("query", "field"), [
    ({"since": "garbage"}, "since"),
    ({"since": "2026-11-30T10:24:56"}, "since"),
    ({"since": "2026-11-30T10:24:56Z\u0000"}, "since"),
    ({"since": "2026-11-30T10:24:56Z\u202e"}, "since"),
    ({"since": "9" * 4000}, "since"),
    ({"since": "2999-01-01T00:00:00Z"}, "since"),
    ({"since": "2026-02-30T00:00:00Z"}, "since"),
    ({"after": "not-an-id"}, "after"),
    ({"after": "01NOTHINGHERE00000000000000"}, "after"),  # 27 characters
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "ten"}, "limit"),
])
async def test_a_bad_feed_query_is_refused_naming_the_field(relay: RunningRelay, query: dict[str, str],
                                                            field: str) -> None:
    status, _, body = await fetch(relay, "/api/v1/cap", DESK_TOKEN, params=query)
    assert status == 422, body[:300]
    answer = json.loads(body)
    assert answer["error"] == "invalid_query"
    assert [p["field"] for p in answer["detail"]] == [field]
    assert answer["detail"][0]["problem"]


async def test_since_takes_far_past_and_an_unescaped_plus(relay: RunningRelay) -> None:
    accepted = await post(relay, report("feed-since"))

    async def listed(**params: str) -> bool:
        _, alerts = await read_feed(relay, **params)
        return any(accepted["alert_id"] in text(a, "cap:identifier") for a in alerts)

    await eventually(lambda: listed(since="1970-01-01T00:00:00Z"), what="the alert in the feed")
    a_minute_ahead = (datetime.now(UTC) + timedelta(minutes=1)).astimezone().isoformat()
    assert not await listed(since=a_minute_ahead)
    # curl "...?since=2026-11-30T13:24:56+03:00": the '+' arrives as a space, and is still read as the offset
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    async with relay.http.get(f"{relay.url}/api/v1/cap?since={an_hour_ago}",
                              headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        _, alerts = valid_feed(await r.read())
    assert any(accepted["alert_id"] in text(a, "cap:identifier") for a in alerts)
