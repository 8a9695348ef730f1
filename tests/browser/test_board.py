"""The dispatcher's board (issue 15) in a real Chromium against the relay in process, tracks on: a raid of ten
tracks around the airfield, triaged, plotted, acknowledged by keyboard; the alarm as a state machine; a lost relay;
corrections from a track's history; map tiles from a (local) tile server."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import PageErrors
from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)
from tests.support.wait import eventually, free_port

AIRFIELD = (52.60, 39.60)
RADIUS_KM = 50
KM_LAT = 1 / 111.2  # degrees of latitude per km
KM_LON = 1 / (111.32 * math.cos(math.radians(AIRFIELD[0])))  # degrees of longitude per km here
EARTH_KM = 40075.016686
COMPASS = ["С", "СВ", "В", "ЮВ", "Ю", "ЮЗ", "З", "СЗ"]
SIZES = [pytest.param((1366, 768), id="1366x768"), pytest.param((1920, 1080), id="1920x1080")]


def board_config(broker: Mosquitto, data: Path, **overrides: Any) -> dict[str, Any]:
    cfg = settings_dict(broker.port, data, **overrides)
    cfg["desks"][0]["area"] = {"lat": AIRFIELD[0], "lon": AIRFIELD[1], "radius_km": RADIUS_KM}
    cfg["tracks"] = {"enabled": True}
    return cfg


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(board_config(broker, tmp_path / "data")) as r:
        yield r


def sighting(report_id: str, *, ago_s: float, east_km: float, north_km: float, **fields: Any) -> dict[str, Any]:
    """A caller's report of something seen `ago_s` seconds ago, `east_km`/`north_km` from the airfield."""
    seen = datetime.now(UTC) - timedelta(seconds=ago_s)
    body = report(report_id, observed_at=seen.isoformat(),
                  location={"lat": round(AIRFIELD[0] + north_km * KM_LAT, 5),
                            "lon": round(AIRFIELD[1] + east_km * KM_LON, 5), "district": "Грязинский район"})
    body.update(fields)
    return body


# Lone sightings far enough from each other (more than the gate: 250 km/h x a minute or two + 4 km) to stay apart.
OTHERS = [
    ("ne", 25, 25, "multirotor"), ("e", 35, 0, "helicopter"), ("s", 0, -20, "multirotor"),
    ("sw", -35, -25, "fixed_wing"), ("nw", -25, 25, "helicopter"), ("n", 0, 40, "fixed_wing"),
    ("ese", 12, -8, "helicopter"),
]


def raid_reports(prefix: str = "raid") -> list[dict[str, Any]]:
    """Ten tracks: a drone 20 km west flying east at ~170 km/h (seven callers), a flash one 15 km north, one last
    seen 15 minutes ago, and seven lone sightings around."""
    bodies = [sighting(f"{prefix}-app-{n}", ago_s=200 - 30 * n, east_km=-20 + 170 / 3600 * 30 * n, north_km=0,
                       heading_deg=90, speed="fast", uav_type="fixed_wing") for n in range(7)]
    bodies.append(sighting(f"{prefix}-flash", ago_s=60, east_km=0, north_km=15, priority="flash",
                           uav_type="multirotor", heading_deg=180, movement="hovering", altitude_m=150))
    bodies.append(sighting(f"{prefix}-stale", ago_s=15 * 60, east_km=21, north_km=-21, uav_type="helicopter"))
    for n, (name, east, north, kind) in enumerate(OTHERS):
        bodies.append(sighting(f"{prefix}-{name}", ago_s=90 - 5 * n, east_km=east, north_km=north, uav_type=kind,
                               movement="unknown", speed="unknown"))
    return bodies


async def post_all(relay: RunningRelay, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    accepted = []
    for body in bodies:
        status, answer = await relay.post_report(body)
        assert status == 201, answer
        accepted.append(answer)
    return accepted


async def api(relay: RunningRelay, method: str, path: str, token: str = DESK_TOKEN, body: Any = None) -> Any:
    async with relay.http.request(method, f"{relay.url}{path}", json=body,
                                  headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def open_tracks(relay: RunningRelay) -> list[dict[str, Any]]:
    return list((await api(relay, "GET", "/api/v1/tracks?state=open&limit=100"))["tracks"])


async def open_board(browser: Browser, relay: RunningRelay, errors: PageErrors, size: tuple[int, int] = (1366, 768),
                     *, by: str = "Майор Иванов") -> Page:
    context = await browser.new_context(viewport={"width": size[0], "height": size[1]}, locale="ru-RU")
    page = errors.watch(await context.new_page())
    await page.goto(f"{relay.url}/console/dispatcher")
    token = page.get_by_label("Токен доступа")
    await token.fill(DESK_TOKEN)
    await token.press("Enter")  # the login's key press is the gesture that lets the page sound
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    if by:
        await page.get_by_label("Кто подтверждает").fill(by)
    await page.mouse.move(size[0] - 5, 5)  # the pointer rests on the header, not on a card
    return page


# ---- what the page should show, computed here from the API's track JSON -------------------------------------------

def mine(track: dict[str, Any]) -> dict[str, Any]:
    (desk,) = [d for d in track["desks"] if d["desk_id"] == "airfield-1"]
    return dict(desk)


def is_stale(track: dict[str, Any]) -> bool:
    return datetime.now(UTC) - datetime.fromisoformat(track["last_seen"]) > timedelta(minutes=10)


def triage_key(track: dict[str, Any]) -> tuple[Any, ...]:
    """Flash first, then approaching by ETA, then the rest by latest activity; stale last."""
    eta = mine(track)["eta_s"]
    last_seen = datetime.fromisoformat(track["last_seen"]).timestamp()
    return (is_stale(track), track["priority"] != "flash", eta is None, eta if eta is not None else 0, -last_seen)


def distance_text(desk: dict[str, Any]) -> str:
    km = desk["distance_km"]
    shown = str(round(km)) if km >= 10 else f"{km:.1f}".replace(".", ",")
    return f"{shown} км {COMPASS[round(desk['bearing_deg'] / 45) % 8]}"


def merc(lat: float, lon: float) -> tuple[float, float]:
    phi = math.radians(lat)
    return (lon + 180) / 360, (1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2


def projected(plot: dict[str, str], lat: float, lon: float) -> tuple[float, float]:
    """Where a point belongs on the plot: Web Mercator around the airfield, the outer ring `km` at `r` px."""
    lat0, lon0 = float(plot["lat0"]), float(plot["lon0"])
    scale = float(plot["r"]) * EARTH_KM * math.cos(math.radians(lat0)) / float(plot["km"])
    (x0, y0), (x, y) = merc(lat0, lon0), merc(lat, lon)
    return float(plot["cx"]) + (x - x0) * scale, float(plot["cy"]) + (y - y0) * scale


async def card_ids(page: Page, list_id: str = "tracks") -> list[str]:
    return list(await page.locator(f"#{list_id} > li.track").evaluate_all("ns => ns.map(n => n.dataset.trackId)"))


def exercise_ring(prefix: str = "ex") -> list[dict[str, Any]]:
    """Eight exercise sightings on a 48-km ring (never joining the raid's actual tracks, 37 km from each other)."""
    return [sighting(f"{prefix}-{n}", ago_s=50, east_km=48 * math.sin(math.radians(45 * n + 22)),
                     north_km=48 * math.cos(math.radians(45 * n + 22)), status="exercise", uav_type="multirotor")
            for n in range(8)]


async def fully_visible(page: Page) -> int:
    """Cards wholly inside the list's visible part (and the window)."""
    return int(await page.evaluate("""() => {
        const list = document.getElementById('board-list').getBoundingClientRect();
        const head = document.getElementById('board-head').getBoundingClientRect();
        return [...document.querySelectorAll('#tracks > li.track')].filter((card) => {
            const r = card.getBoundingClientRect();
            const bottom = Math.min(list.bottom, innerHeight);
            return r.top >= head.bottom - 1 && r.bottom <= bottom + 1 && r.right <= innerWidth;
        }).length;
    }"""))


async def no_sideways_scroll(page: Page) -> None:
    wide = await page.evaluate("""() => [document.documentElement, document.getElementById('board-list')]
        .filter((n) => n.scrollWidth > n.clientWidth).map((n) => n.id || n.tagName)""")
    assert wide == [], f"scrolls sideways: {wide}"


@pytest.mark.parametrize("size", SIZES)
async def test_a_raid_is_one_card_per_track_triaged_beside_the_plot_and_acknowledged_by_keyboard(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors, size: tuple[int, int]
) -> None:
    accepted = await post_all(relay, raid_reports())
    page = await open_board(browser, relay, page_errors, size)
    cards = page.locator("#tracks > li.track")
    await expect(cards).to_have_count(10)
    tracks = await open_tracks(relay)
    assert len(tracks) == 10

    # one card per track, in the order of triage: flash, approaching by ETA, the rest by latest activity, stale last
    ordered = sorted(tracks, key=triage_key)
    assert await card_ids(page) == [t["track_id"] for t in ordered]
    assert ordered[0]["priority"] == "flash" and is_stale(ordered[-1])
    approaching = [t for t in tracks if mine(t)["eta_s"] is not None]
    assert approaching and approaching[0]["reports"] == 7, "the drone flying at the airfield approaches it"
    labels = await page.locator("#tracks button.ack").evaluate_all("bs => bs.map(b => b.getAttribute('aria-label'))")
    for alert in accepted:  # every code on exactly one card's button, which names its codes
        assert sum(alert["short_code"] in label for label in labels) == 1, (alert["short_code"], labels)

    # what each card says, against the API's track JSON
    for track in tracks:
        card = page.locator(f"#tracks > li[data-track-id='{track['track_id']}']")
        desk = mine(track)
        await expect(card.locator(".t-reports")).to_have_text(
            "7 сообщений" if track["reports"] == 7 else "1 сообщение")
        shown = await card.locator(".t-dist").inner_text()
        km, direction = re.fullmatch(r"([\d,]+) км (\S+)", shown).groups()  # type: ignore[union-attr]
        assert abs(float(km.replace(",", ".")) - desk["distance_km"]) <= 1, (shown, desk)
        if track["speed_kmh"] is None:  # standing still, the relay's distance is the page's to the kilometre
            assert shown == distance_text(desk)
        assert direction == COMPASS[round(desk["bearing_deg"] / 45) % 8]
        if desk["eta_s"] is None:
            await expect(card.locator(".t-eta")).to_have_count(0)
        else:
            eta = await card.locator(".t-eta").inner_text()
            minutes = int(re.fullmatch(r"подлёт ≈ (\d+) мин", eta).group(1))  # type: ignore[union-attr]
            assert abs(minutes - desk["eta_s"] / 60) <= 1, (minutes, desk)
    flash_card = page.locator(f"#tracks > li[data-track-id='{ordered[0]['track_id']}']")
    await expect(flash_card).to_contain_text("СРОЧНО")
    await expect(flash_card).to_contain_text("мультикоптер ×2")
    await expect(flash_card).to_contain_text("~150 м")
    await expect(flash_card).to_have_class(re.compile(r"\bfresh\b"))  # new: nobody has looked at it yet
    await expect(page.locator(f"#tracks > li[data-track-id='{ordered[-1]['track_id']}']")).to_have_class(
        re.compile(r"\bstale\b"))

    # the plot: the airfield in the middle, rings of 10/25/50 km, each track where Web Mercator puts it
    plot = await page.locator("#plot").evaluate("s => ({...s.dataset})")
    box = await page.locator("#plot").bounding_box()
    assert box is not None
    assert plot["centred"] == "airfield" and plot["km"] == "50"
    assert abs(float(plot["cx"]) - box["width"] / 2) < 1 and abs(float(plot["cy"]) - box["height"] / 2) < 1
    rings = await page.locator("#plot circle.ring").evaluate_all("cs => cs.map(c => c.dataset.km)")
    assert rings == ["10", "25", "50"]
    for track in tracks:
        x, y = projected(plot, track["position"]["lat"], track["position"]["lon"])
        mark = page.locator(f"#plot .track[data-track-id='{track['track_id']}']")
        assert abs(float(await mark.get_attribute("data-x") or "nan") - x) < 1.5
        assert abs(float(await mark.get_attribute("data-y") or "nan") - y) < 1.5
        dot = await mark.locator(".dot").bounding_box()
        assert dot is not None
        assert abs(dot["x"] + dot["width"] / 2 - (box["x"] + x)) < 3, track["track_id"]
        assert abs(dot["y"] + dot["height"] / 2 - (box["y"] + y)) < 3, track["track_id"]
    # and independently of the formula: the flash drone, 15 km north, is 15/50 of the outer ring above the centre
    fx, fy = projected(plot, ordered[0]["position"]["lat"], ordered[0]["position"]["lon"])
    assert abs(fx - float(plot["cx"])) < 2 and abs(float(plot["cy"]) - fy - float(plot["r"]) * 15 / 50) < 2
    heading = await page.locator(f"#plot .track[data-track-id='{approaching[0]['track_id']}'] .heading") \
        .get_attribute("transform")
    assert heading == f"rotate({approaching[0]['heading_deg']})"
    trail = page.locator(f"#plot .trail[data-track-id='{approaching[0]['track_id']}'] circle")
    await expect(trail).to_have_count(7)

    # hovering a card points its track out on the plot
    await cards.nth(3).hover()
    await expect(page.locator(f"#plot .track[data-track-id='{ordered[3]['track_id']}']")).to_have_class(
        re.compile(r"\bhl\b"))

    # compact: every one of the ten tracks in view beside the plot, nothing scrolls sideways
    assert await fully_visible(page) >= 8
    await no_sideways_scroll(page)

    # shown is confirmed: the operator sees each alert delivered by the web console
    async def web_delivered(alert_id: str) -> bool:
        got = await relay.alert(alert_id, OPERATOR_TOKEN)
        return any(d["channel"] == "web" and d["desk_id"] == "airfield-1" and d["state"] == "delivered"
                   for d in got["deliveries"])
    for alert in accepted:
        await eventually(lambda a=alert: web_delivered(a["alert_id"]), what=f"{alert['short_code']} delivered")

    # more tracks than fit: scrolled to the bottom, a new one still shows in the sticky header
    await post_all(relay, exercise_ring())
    await expect(cards).to_have_count(18)
    listing = page.locator("#board-list")
    await listing.evaluate("l => { l.scrollTop = l.scrollHeight; }")
    assert await listing.evaluate("l => l.scrollTop") > 0
    await expect(page.locator("#count-waiting")).to_have_text("Не подтверждено: 18")
    (newcomer,) = await post_all(relay, [sighting("late", ago_s=5, east_km=-42, north_km=0, uav_type="multirotor")])
    await expect(page.locator("#count-waiting")).to_have_text("Не подтверждено: 19")
    jump = page.locator("#jump-new")
    await expect(jump).to_contain_text(newcomer["short_code"])
    await expect(jump).to_be_in_viewport()
    head, top = await page.locator("#board-head").bounding_box(), await listing.bounding_box()
    assert head is not None and top is not None and abs(head["y"] - top["y"]) < 2, "the header stays on top"
    await expect(page.locator("#announce")).to_contain_text(newcomer["short_code"])
    await jump.click()
    arrival = cards.filter(has_text=newcomer["short_code"])
    await expect(arrival).to_be_focused()  # looked at now: no longer new
    await expect(arrival).not_to_have_class(re.compile(r"\bfresh\b"))
    await expect(arrival).to_be_in_viewport()

    # the keyboard: Enter acknowledges the top track; j/k move, Enter acknowledges the chosen one
    await page.locator("#open-h").focus()
    top_id = (await card_ids(page))[0]
    await page.keyboard.press("Enter")
    await expect(page.locator(f"#acked > li[data-track-id='{top_id}']")).to_have_count(1)
    await page.locator("#open-h").focus()
    await page.keyboard.press("j")
    await page.keyboard.press("j")
    second = (await card_ids(page))[1]
    await expect(page.locator(f"#tracks > li[data-track-id='{second}']")).to_be_focused()
    await page.keyboard.press("k")
    await page.keyboard.press("j")
    await page.keyboard.press("Enter")
    await expect(page.locator(f"#acked > li[data-track-id='{second}']")).to_contain_text("Подтверждено: Майор Иванов")
    for track_id in (top_id, second):
        acked = await api(relay, "GET", f"/api/v1/tracks/{track_id}")
        assert mine(acked)["acknowledged"], acked
        for alert_id in acked["alert_ids"]:
            got = await relay.alert(alert_id, OPERATOR_TOKEN)
            assert got["state"] == "acknowledged" and got["ack"]["by"] == "Майор Иванов", got
    await expect(cards).to_have_count(17)
    await no_sideways_scroll(page)
    assert page_errors.errors == []


async def acknowledge_on_page(page: Page, code: str) -> None:
    await page.get_by_role("button", name=re.compile(rf"^Подтвердить .*\b{code}\b")).click()
    await expect(page.locator("#acked li.track").filter(has_text=code)).to_have_count(1)


async def settled(page: Page) -> None:
    """Until the page has run what its last answers queued (their parsing, a render after them)."""
    for _ in range(3):
        await page.evaluate("() => new Promise((done) => setTimeout(() => requestAnimationFrame(() => done()), 0))")


async def test_a_press_acknowledges_the_card_under_it_though_the_board_changes_meanwhile(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    await post_all(relay, [sighting("p-1", ago_s=30, east_km=-12, north_km=3),
                           sighting("p-2", ago_s=30, east_km=12, north_km=-20)])
    page = await open_board(browser, relay, page_errors)
    cards = page.locator("#tracks > li.track")
    await expect(cards).to_have_count(2)
    await expect(page.locator("#jump-new")).to_be_visible()
    finished: list[str] = []
    page.on("requestfinished", lambda request: finished.append(request.url))

    # pressed, the new card is seen (its mark and the banner go) and a flash track arrives on top of the list;
    # the release still lands on the button pressed: the board waited for it
    target = cards.nth(1)
    target_id = await target.get_attribute("data-track-id")
    box = await target.locator("button.ack").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    (flash,) = await post_all(relay, [sighting("p-flash", ago_s=5, east_km=0, north_km=30, priority="flash",
                                               uav_type="helicopter")])

    def read_after_the_flash() -> bool:
        named = [n for n, url in enumerate(finished) if flash["alert_id"] in url]
        return bool(named) and any("/api/v1/tracks?state=open" in url for url in finished[named[0]:])

    await eventually(read_after_the_flash, what="the page read the list again after the flash alert")
    await settled(page)
    await page.mouse.up()
    await expect(page.locator(f"#acked > li[data-track-id='{target_id}']")).to_contain_text(
        "Подтверждено: Майор Иванов")
    await expect(cards).to_have_count(2)
    await expect(cards.first).to_contain_text(flash["short_code"])

    # the last new tracks seen: the banner's line stays, so nothing on the list moves
    boxes = [await cards.nth(n).bounding_box() for n in range(2)]
    for n in range(2):
        await cards.nth(n).focus()
    await expect(page.locator("#jump-new")).to_be_hidden()
    await expect(page.locator("#tracks > li.track.fresh")).to_have_count(0)
    assert [await cards.nth(n).bounding_box() for n in range(2)] == boxes
    assert page_errors.errors == []


async def test_one_alarm_rings_until_every_track_is_acknowledged_sharper_for_flash_and_waits_for_a_gesture(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page = await open_board(browser, relay, page_errors)
    body = page.locator("body")
    await expect(body).to_have_attribute("data-alarm", "off")
    await expect(page.locator("#sound-banner")).to_be_hidden()

    # a burst: three drones at once are one alarm, one loop, not three sounds
    burst = await post_all(relay, [
        sighting("b-1", ago_s=40, east_km=-30, north_km=0, uav_type="multirotor"),
        sighting("b-2", ago_s=40, east_km=30, north_km=0, uav_type="multirotor"),
        sighting("b-3", ago_s=40, east_km=0, north_km=-30, uav_type="multirotor"),
    ])
    await expect(page.locator("#tracks > li.track")).to_have_count(3)
    await expect(body).to_have_attribute("data-alarm", "ringing")
    assert await body.get_attribute("data-alarm-plays") == "1", "one loop started, not one sound per arrival"
    await expect(page.locator("#announce")).to_contain_text(burst[-1]["short_code"])

    # a flash track makes it the sharper, faster one while it waits
    (flash,) = await post_all(relay, [sighting("b-flash", ago_s=20, east_km=0, north_km=30, priority="flash",
                                               uav_type="helicopter")])
    await expect(body).to_have_attribute("data-alarm", "ringing-flash")
    await expect(page.locator("#announce")).to_contain_text(f"СРОЧНО! Новый трек {flash['short_code']}")
    await acknowledge_on_page(page, flash["short_code"])
    await expect(body).to_have_attribute("data-alarm", "ringing")
    for alert in burst[:2]:
        await acknowledge_on_page(page, alert["short_code"])
    await expect(body).to_have_attribute("data-alarm", "ringing")  # one still waits
    await acknowledge_on_page(page, burst[2]["short_code"])
    await expect(body).to_have_attribute("data-alarm", "off")
    assert await body.get_attribute("data-conn-alarm") == "off"

    # a reload: the browser lets the page sound only after a gesture; until then the banner says so
    (later,) = await post_all(relay, [sighting("b-later", ago_s=10, east_km=-10, north_km=-40,
                                               uav_type="fixed_wing")])
    await expect(body).to_have_attribute("data-alarm", "ringing")
    await page.reload()
    await expect(page.locator("#tracks > li.track")).to_have_count(1)
    await expect(body).to_have_attribute("data-alarm", "blocked")
    banner = page.locator("#sound-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("ВКЛЮЧИТЕ ЗВУК")
    await page.mouse.click(5, 60)  # anywhere
    await expect(body).to_have_attribute("data-alarm", "ringing")
    await expect(banner).to_be_hidden()

    # a key does it too, and that first key only lets the page sound: it acknowledges nothing
    await page.reload()
    await expect(body).to_have_attribute("data-alarm", "blocked")
    await page.locator("#open-h").focus()
    await page.keyboard.press("Enter")
    await expect(body).to_have_attribute("data-alarm", "ringing")
    await expect(page.locator("#tracks > li.track")).to_have_count(1)
    track = await api(relay, "GET", f"/api/v1/tracks/{(await relay.alert(later['alert_id']))['track_id']}")
    assert not mine(track)["acknowledged"]
    await page.keyboard.press("Enter")  # the next one does
    await expect(page.locator("#tracks > li.track")).to_have_count(0)
    await expect(body).to_have_attribute("data-alarm", "off")
    assert page_errors.errors == []


async def test_a_lost_relay_sounds_its_own_alarm_and_the_board_comes_back_by_itself(
    broker: Mosquitto, tmp_path: Path, browser: Browser, page_errors: PageErrors
) -> None:
    port = free_port()
    settings = board_config(broker, tmp_path / "data", http={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    async with running_relay(settings) as first:
        (before,) = await post_all(first, [sighting("o-1", ago_s=30, east_km=-12, north_km=3)])
        page = await open_board(browser, first, page_errors)
        await expect(page.locator("#tracks > li.track")).to_have_count(1)
        await acknowledge_on_page(page, before["short_code"])
        body = page.locator("body")
        await expect(body).to_have_attribute("data-alarm", "off")
        await expect(body).to_have_attribute("data-conn-alarm", "off")

    await expect(page.locator("#offline")).to_contain_text("НЕТ СВЯЗИ")
    await expect(body).to_have_attribute("data-conn-alarm", "ringing")  # nothing new can arrive: that is heard too
    await expect(page.locator("#conn")).to_have_text("Нет связи")

    async with running_relay(settings) as second:
        await expect(page.locator("#offline")).to_be_hidden(timeout=15_000)  # the backoff is capped at 5 s
        await expect(body).to_have_attribute("data-conn-alarm", "off")
        await expect(page.locator("#acked li.track").filter(has_text=before["short_code"])).to_have_count(1)
        (after,) = await post_all(second, [sighting("o-2", ago_s=5, east_km=25, north_km=-20, uav_type="multirotor")])
        await expect(page.locator("#tracks > li.track").filter(has_text=after["short_code"])).to_be_visible(
            timeout=1000)
        await expect(body).to_have_attribute("data-alarm", "ringing")

        # a reload keeps the session, the board and what was looked at; the sound waits for a gesture
        await page.locator("#tracks > li.track").first.focus()
        await expect(page.locator("#tracks > li.track").first).not_to_have_class(re.compile(r"\bfresh\b"))
        await page.reload()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
        await expect(page.locator("#tracks > li.track")).to_have_count(1)
        await expect(page.locator("#tracks > li.track").first).not_to_have_class(re.compile(r"\bfresh\b"))
        await expect(page.locator("#acked li.track")).to_have_count(1)
        await expect(body).to_have_attribute("data-alarm", "blocked")
    assert page_errors.errors == []


async def test_a_track_is_merged_and_a_report_split_out_from_its_history_each_after_a_confirmation(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page_errors.expect("status of 404")  # the merged-away track, read once more
    lone, first, second = await post_all(relay, [
        sighting("m-a", ago_s=120, east_km=-20, north_km=10, uav_type="multirotor"),
        sighting("m-b1", ago_s=100, east_km=20, north_km=-10, uav_type="multirotor"),
        sighting("m-b2", ago_s=70, east_km=21, north_km=-10, uav_type="multirotor"),
    ])
    tracks = await open_tracks(relay)
    assert sorted(t["reports"] for t in tracks) == [1, 2]
    (a_id,) = [t["track_id"] for t in tracks if t["reports"] == 1]
    (b_id,) = [t["track_id"] for t in tracks if t["reports"] == 2]
    page = await open_board(browser, relay, page_errors)
    await expect(page.locator("#tracks > li.track")).to_have_count(2)

    # the card opens the track's history: the report, what each channel did, the delivery to this console
    await page.locator(f"#tracks > li[data-track-id='{a_id}'] .t-codes").click()
    dialog = page.locator("#timeline")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#tl-h")).to_have_text(f"История трека {lone['short_code']}")
    await expect(dialog.locator(".tl-item.kind-report")).to_contain_text("мультикоптер ×2")
    await expect(dialog.locator(".tl-item.kind-delivered")).to_contain_text("веб-консоль: доставлено")

    # merge: asked first; "Отмена" changes nothing
    await page.get_by_label("Это тот же объект, что и трек").select_option(b_id)
    await page.get_by_role("button", name="Объединить…").click()
    confirm = page.locator("#tl-confirm")
    await expect(confirm).to_contain_text(f"Объединить трек {lone['short_code']} с треком")
    await expect(page.get_by_role("button", name="Да, объединить")).to_be_focused()
    await page.get_by_role("button", name="Отмена").click()
    await expect(confirm).to_be_hidden()
    assert len(await open_tracks(relay)) == 2
    await page.get_by_role("button", name="Объединить…").click()
    await page.get_by_role("button", name="Да, объединить").click()
    await expect(page.locator("#tl-status")).to_have_text("Треки объединены.")
    await expect(page.locator("#tracks > li.track")).to_have_count(1)
    merged = await api(relay, "GET", f"/api/v1/tracks/{b_id}")
    assert merged["reports"] == 3 and lone["alert_id"] in merged["alert_ids"]
    await expect(page.locator(f"#tracks > li[data-track-id='{b_id}'] .t-reports")).to_have_text("3 сообщения")
    await expect(dialog.locator(".tl-item.kind-track_merged")).to_contain_text("Майор Иванов")

    # split: the lone report is another drone after all
    await page.get_by_role("button", name=f"Выделить сообщение {lone['short_code']} в отдельный трек").click()
    await expect(confirm).to_contain_text(f"Выделить сообщение {lone['short_code']} в отдельный трек")
    await page.get_by_role("button", name="Да, выделить").click()
    await expect(page.locator("#tl-status")).to_have_text("Сообщение выделено в отдельный трек.")
    await expect(page.locator("#tracks > li.track")).to_have_count(2)
    split = (await relay.alert(lone["alert_id"], OPERATOR_TOKEN))["track_id"]
    assert split not in (a_id, b_id)
    assert (await api(relay, "GET", f"/api/v1/tracks/{split}"))["alert_ids"] == [lone["alert_id"]]
    assert (await api(relay, "GET", f"/api/v1/tracks/{b_id}"))["alert_ids"] == [first["alert_id"], second["alert_id"]]
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    assert page_errors.errors == []


def _png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A plain square PNG, made here (a tile server's answer, nothing from elsewhere)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture
async def tile_server() -> AsyncIterator[tuple[str, list[tuple[int, int, int]]]]:
    """A tile server on 127.0.0.1: `{z}/{x}/{y}.png`, recording what was asked."""
    asked: list[tuple[int, int, int]] = []
    tile = _png((200, 220, 200))

    async def serve(request: web.Request) -> web.Response:
        z, x, y = (int(request.match_info[k]) for k in ("z", "x", "y"))
        asked.append((z, x, y))
        return web.Response(body=tile, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{z}/{x}/{y}.png", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png", asked
    finally:
        await runner.cleanup()


async def test_map_tiles_from_the_sites_tile_server_lie_under_the_plot_where_the_markers_are(
    broker: Mosquitto, tmp_path: Path, browser: Browser, page_errors: PageErrors,
    tile_server: tuple[str, list[tuple[int, int, int]]],
) -> None:
    tile_url, asked = tile_server
    async with running_relay(board_config(broker, tmp_path / "data", consoles={"tile_url": tile_url})) as relay:
        (alert,) = await post_all(relay, [sighting("t-1", ago_s=30, east_km=18, north_km=-7)])
        page = await open_board(browser, relay, page_errors, (1920, 1080))
        await expect(page.locator("#tracks > li.track")).to_have_count(1)
        images = page.locator("#plot .tiles image")
        await expect(images.first).to_be_attached()
        plot = await page.locator("#plot").evaluate("s => ({...s.dataset})")
        tiles = await images.evaluate_all("""is => is.map(i => ({z: +i.dataset.z, x: +i.dataset.x, y: +i.dataset.y,
            href: i.getAttribute('href'), left: +i.getAttribute('x'), top: +i.getAttribute('y'),
            size: +i.getAttribute('width'), loaded: i.getBBox().width > 0}))""")
        zoom = tiles[0]["z"]
        n = 2 ** zoom
        width, height = 2 * float(plot["cx"]), 2 * float(plot["cy"])
        for tile in tiles:  # each tile where the markers' projection puts its north-west corner
            assert tile["href"] == tile_url.format(z=zoom, x=tile["x"], y=tile["y"])
            corner_lon = tile["x"] / n * 360 - 180
            corner_lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * tile["y"] / n))))
            x, y = projected(plot, corner_lat, corner_lon)
            assert abs(tile["left"] - x) < 1 and abs(tile["top"] - y) < 1, tile
        # the tiles cover the whole plot, and the track lies on the tile that holds its position
        assert min(t["left"] for t in tiles) <= 0 and min(t["top"] for t in tiles) <= 0
        assert max(t["left"] + t["size"] for t in tiles) >= width and max(t["top"] + t["size"] for t in tiles) >= height
        (track,) = await open_tracks(relay)
        mx, my = merc(track["position"]["lat"], track["position"]["lon"])
        under = next(t for t in tiles if (t["x"], t["y"]) == (math.floor(mx * n), math.floor(my * n)))
        mark = page.locator(f"#plot .track[data-track-id='{track['track_id']}']")
        x, y = float(await mark.get_attribute("data-x") or "nan"), float(await mark.get_attribute("data-y") or "nan")
        assert under["left"] <= x <= under["left"] + under["size"] and under["top"] <= y <= under["top"] + under["size"]
        await eventually(lambda: {(t["z"], t["x"], t["y"]) for t in tiles} <= set(asked), what="tiles fetched")
        assert alert["short_code"] in (await mark.text_content() or "")
    assert page_errors.errors == []


async def test_screenshot_of_the_board_in_a_raid(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors, screenshot_dir: Path
) -> None:
    """The board at 1920x1080 in a raid; CONSOLE_SCREENSHOTS=docs writes docs/console-dispatcher.png."""
    accepted = await post_all(relay, raid_reports())
    east = next(a for a, body in zip(accepted, raid_reports(), strict=True) if body["report_id"] == "raid-e")
    await relay.ack(east["alert_id"], by="Капитан Петров")
    page = await open_board(browser, relay, page_errors, (1920, 1080))
    await expect(page.locator("#tracks > li.track")).to_have_count(9)
    await expect(page.locator("#acked > li.track")).to_have_count(1)
    await page.locator("#open-h").focus()
    for _ in range(4):  # the dispatcher has looked at the first four; the rest are still new
        await page.keyboard.press("j")
    await page.locator("#tracks > li.track").nth(1).hover()  # and points at the approaching one
    await expect(page.locator("#plot .track.hl")).to_have_count(1)
    await page.screenshot(path=screenshot_dir / "console-dispatcher.png")
    await no_sideways_scroll(page)
    assert page_errors.errors == []
