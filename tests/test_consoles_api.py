"""What the consoles need from the relay (issue 15): the web console's "received", the gazetteer, who the token
belongs to (the airfield the plot is centred on, the desks' phones), and a policy that lets map tiles in only from
the configured server. The real relay on real sockets, with a private broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.domain.config import ConfigError, load_settings
from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)

REPO = Path(__file__).resolve().parent.parent
TILES = "https://tiles.local:8443/{z}/{x}/{y}.png"


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    cfg = settings_dict(broker.port, tmp_path / "data")
    cfg["consoles"] = {"gazetteer": str(REPO / "config" / "gazetteer-lipetsk.csv"), "tile_url": TILES}
    cfg["desks"][0] = {**cfg["desks"][0], "sms": ["+79001110001"], "phone": "+74742000000",
                       "area": {"lat": 52.6, "lon": 39.6, "radius_km": 150}}
    async with running_relay(cfg) as r:
        yield r


async def call(relay: RunningRelay, method: str, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with relay.http.request(method, f"{relay.url}{path}", headers=headers) as r:
        return r.status, await r.json() if r.content_type == "application/json" else await r.text()


async def test_the_web_console_confirms_what_it_shows_once(relay: RunningRelay) -> None:
    status, accepted = await relay.post_report(report("shown-1"))
    assert status == 201
    alert_id = accepted["alert_id"]
    status, alert = await call(relay, "POST", f"/api/v1/alerts/{alert_id}/received", DESK_TOKEN)
    assert status == 200, alert
    web = [d for d in alert["deliveries"] if d["channel"] == "web"]
    assert len(web) == 1 and web[0]["state"] == "delivered" and web[0]["desk_id"] == "airfield-1"
    assert web[0]["delivered_at"] is not None
    assert alert["state"] == "delivered"  # no MQTT console here: the page's word is the first receipt
    status, again = await call(relay, "POST", f"/api/v1/alerts/{alert_id}/received", DESK_TOKEN)
    assert status == 200 and [d for d in again["deliveries"] if d["channel"] == "web"] == web
    status, history = await relay.get(f"/api/v1/alerts/{alert_id}/history", OPERATOR_TOKEN)
    assert status == 200
    assert [e["detail"] for e in history["events"] if e["kind"] == "delivered"] == [
        {"desk_id": "airfield-1", "channel": "web"}]  # the operator sees it delivered by the web console
    assert await relay.metric('relay_deliveries_total{channel="web",outcome="delivered"}') == 1


@pytest.mark.parametrize(("token", "alert", "expected"), [
    (DESK2_TOKEN, "ours", 403), (OPERATOR_TOKEN, "ours", 403), (None, "ours", 401), (DESK_TOKEN, "nope", 404),
])
async def test_received_is_for_the_desks_the_alert_went_to(relay: RunningRelay, token: str | None, alert: str,
                                                           expected: int) -> None:
    _, accepted = await relay.post_report(report("shown-2"))
    alert_id = accepted["alert_id"] if alert == "ours" else "01HNOSUCHALERT0000000000000"
    status, _ = await call(relay, "POST", f"/api/v1/alerts/{alert_id}/received", token)
    assert status == expected


async def test_places_start_with_what_was_typed(relay: RunningRelay) -> None:
    status, body = await call(relay, "GET", "/api/v1/places?q=%D0%BB%D0%B5", OPERATOR_TOKEN)  # "ле"
    assert status == 200
    names = [p["name"] for p in body["places"]]
    assert names[:2] == ["Лебедянь", "Лев Толстой"]  # the names that start with it first
    leb = body["places"][0]
    assert leb["district"] == "Лебедянский район" and leb["accuracy_m"] == 3000
    assert abs(leb["lat"] - 53.0156) < 1e-6 and abs(leb["lon"] - 39.1436) < 1e-6
    status, body = await call(relay, "GET", "/api/v1/places?q=%D0%81%D0%9B%D0%95%D0%A6", OPERATOR_TOKEN)  # "ЁЛЕЦ"
    assert [p["name"] for p in body["places"]] == ["Елец"]  # case and ё do not matter
    status, body = await call(relay, "GET", "/api/v1/places?q=", OPERATOR_TOKEN)
    assert status == 200 and body["places"] == []


@pytest.mark.parametrize(("query", "field"), [("q=" + "x" * 101, "q"), ("q=a&limit=0", "limit"),
                                              ("q=a&limit=51", "limit"), ("q=a&limit=x", "limit")])
async def test_bad_place_queries_are_422_naming_the_field(relay: RunningRelay, query: str, field: str) -> None:
    status, body = await call(relay, "GET", f"/api/v1/places?{query}", OPERATOR_TOKEN)
    assert status == 422 and body["detail"][0]["field"] == field
    status, _ = await call(relay, "GET", "/api/v1/places?q=a", None)
    assert status == 401


async def test_the_session_tells_a_desk_its_airfield_and_an_operator_whom_to_call(relay: RunningRelay) -> None:
    status, desk = await call(relay, "GET", "/console/session", DESK_TOKEN)
    assert status == 200
    assert desk["role"] == "desk" and desk["name"] == "Аэродром-1"
    assert desk["area"] == {"lat": 52.6, "lon": 39.6, "radius_km": 150} and desk["tile_url"] == TILES
    status, op = await call(relay, "GET", "/console/session", OPERATOR_TOKEN)
    assert op["role"] == "operator" and op["gazetteer"] is True
    assert op["desks"] == [{"id": "airfield-1", "name": "Аэродром-1", "phone": "+74742000000"},
                           {"id": "airfield-2", "name": "Аэродром-2", "phone": None}]


async def test_map_tiles_may_come_from_the_configured_server_and_nowhere_else(relay: RunningRelay) -> None:
    async with relay.http.get(f"{relay.url}/console/dispatcher") as r:
        policy = r.headers["Content-Security-Policy"]
    assert "img-src 'self' https://tiles.local:8443;" in policy
    assert "connect-src 'self';" in policy and "script-src 'self';" in policy


@pytest.mark.parametrize(("name", "status"), [("icon.svg", 200), ("common.js", 200), ("console.css", 200),
                                              ("nope.js", 404), ("..%2Fconfig.py", 404), ("strings_ru.json", 404),
                                              ("dispatcher.html", 404), ("A.JS", 404)])
async def test_console_files_are_served_by_kind_and_nothing_else(relay: RunningRelay, name: str, status: int) -> None:
    async with relay.http.get(f"{relay.url}/console/static/{name}") as r:
        assert r.status == status


@pytest.mark.parametrize(("text", "problem"), [
    ("name,district,lat,lon\nЛипецк,,52.6,abc\n", "line 2: lon is not a number"),
    ("name;district;lat;lon\n", "line 1: the header must start name,district,lat,lon"),
    ("name,district,lat,lon\nX,,95,39\n", "line 2: lat/lon out of range"),
    ("name,district,lat,lon\nX,,52\n", "line 2: 3 columns"),
    ("", "empty"),
])
def test_a_gazetteer_that_cannot_be_used_is_a_config_error_naming_the_line(tmp_path: Path, text: str,
                                                                            problem: str) -> None:
    places = tmp_path / "places.csv"
    places.write_text(text, encoding="utf-8")
    config = tmp_path / "relay.toml"
    config.write_text(f'[consoles]\ngazetteer = "{places}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert any(e.startswith("consoles.gazetteer") and problem in e for e in err.value.problems), err.value.problems
