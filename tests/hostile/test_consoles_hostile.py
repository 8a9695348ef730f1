"""The consoles' new input paths under attack (issue 15): the place search, the gazetteer file a site loads, the
web console's "received" flooded, and config values that would let a page load from elsewhere."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from relay.domain.config import ConfigError, Settings, load_settings
from relay.domain.gazetteer import Gazetteer
from relay.domain.text import normalise
from tests.support.broker import Mosquitto
from tests.support.relay import DESK_TOKEN, OPERATOR_TOKEN, RunningRelay, report, running_relay, settings_dict

CONTROLS = "\u202e\n\x00\x1b[31m\u2028\u2066\t\x85"


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    places = tmp_path / "places.csv"
    with places.open("w", encoding="utf-8", newline="") as f:  # a quoted cell may hold a line break in CSV
        csv.writer(f).writerows([["name", "district", "lat", "lon"],
                                 [f"Сен{CONTROLS}цово", f"Липецкий{CONTROLS} район", "52.55", "39.45"],
                                 ["Липецк", "", "52.6031", "39.5708"]])
    cfg = settings_dict(broker.port, tmp_path / "data")
    cfg["consoles"] = {"gazetteer": str(places)}
    async with running_relay(cfg) as r:
        yield r


@pytest.mark.parametrize("q", [CONTROLS, "\x00", "%", "'; DROP TABLE alerts; --", "\ud7ff" * 100, "Л" * 100,
                               "\U0001f681", " " * 50, "л\u0301"])
async def test_hostile_place_searches_answer_plainly_and_never_fail(relay: RunningRelay, q: str) -> None:
    status, body = await relay.get(f"/api/v1/places?q={quote(q)}", OPERATOR_TOKEN)
    assert status in (200, 422), body
    if status == 200:
        for place in body["places"]:
            assert not any(c in place["name"] + place["district"] for c in "\u202e\n\x00\x1b\u2028\u2066\t\x85")


async def test_a_place_name_with_controls_in_the_file_is_served_plain(relay: RunningRelay) -> None:
    status, body = await relay.get(f"/api/v1/places?q={quote('сен')}", OPERATOR_TOKEN)
    assert status == 200
    (place,) = body["places"]
    # line breaks, tabs and separators became spaces, the other controls and the bidi marks are gone
    assert place["name"] == normalise(f"Сен{CONTROLS}цово") == "Сен [31m   цово"
    assert place["district"] == normalise(f"Липецкий{CONTROLS} район")


async def test_a_flood_of_received_for_one_alert_makes_one_web_delivery(relay: RunningRelay) -> None:
    _, accepted = await relay.post_report(report("flood-received"))
    alert_id = accepted["alert_id"]

    async def one() -> int:
        async with relay.http.post(f"{relay.url}/api/v1/alerts/{alert_id}/received",
                                   headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
            return r.status

    statuses = await asyncio.gather(*(one() for _ in range(300)))
    assert set(statuses) == {200}
    alert = await relay.alert(alert_id)
    assert [d["channel"] for d in alert["deliveries"]].count("web") == 1
    assert await relay.metric('relay_deliveries_total{channel="web",outcome="delivered"}') == 1


@pytest.mark.parametrize(("content", "problem"), [
    (b"\xff\xfe\x00n\x00a", "not UTF-8"),
    (b"name,district,lat,lon\nX,,nan,39\n", "lat is not a finite number"),
    (b"name,district,lat,lon\nX,,1e999,39\n", "lat is not a finite number"),
    ("name,district,lat,lon\n" + "X" * 201 + ",,52,39\n", "name: 1..200 characters"),
    ("name,district,lat,lon\n\u202e,,52,39\n", "name: 1..200 characters"),  # nothing left once the controls go
    ("name,district,lat,lon\nX,,52,39,-5\n", "accuracy_m must be above 0"),
])
def test_a_hostile_gazetteer_file_is_refused_naming_the_line(tmp_path: Path, content: bytes | str,
                                                             problem: str) -> None:
    places = tmp_path / "places.csv"
    if isinstance(content, str):
        places.write_text(content, encoding="utf-8")
    else:
        places.write_bytes(content)
    config = tmp_path / "relay.toml"
    config.write_text(f'[consoles]\ngazetteer = "{places}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_gazetteer_of_too_many_places_is_refused(tmp_path: Path) -> None:
    places = tmp_path / "places.csv"
    with places.open("w", encoding="utf-8") as f:
        f.write("name,district,lat,lon\n")
        f.writelines(f"p{n},,52,39\n" for n in range(200_001))
    with pytest.raises(ValueError, match="more than 200000 places"):
        Gazetteer.load(places)


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "https://tiles.local/{z}/{x}.png", "https://tiles.local/{z}/{x}/{y}.png'; script-src *",
    "https://tiles.local/{z}/{x}/{y}.png\n", "//tiles.local/{z}/{x}/{y}.png", "https://a b/{z}/{x}/{y}.png",
    "data:image/png;base64,{z}{x}{y}", "https://tiles.local/{z}/{x}/{y}.png\r\nX-Evil: 1",
    "https://tiles.local/{z}/{x}/{y}.png#\u202e", "https://tiles.local:99999999/{z}/{x}/{y}.png",
])
def test_a_tile_url_that_would_open_the_pages_policy_is_a_config_error(url: str) -> None:
    with pytest.raises(ValueError, match="tile_url"):
        Settings(consoles={"tile_url": url})
