"""The 112 operator's page (issue 15) in a real Chromium at a workstation's 1366x768, against the relay in process:
what a caller says becomes what the relay takes, a village without coordinates comes from the gazetteer, and a
report nobody acknowledged sounds and says whom to call."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import PageErrors
from tests.support.broker import Mosquitto
from tests.support.relay import DESK_TOKEN, OPERATOR_TOKEN, RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[2]
COUNT_OSCILLATORS = """
window.__oscillators = 0;
const make = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () { window.__oscillators += 1; return make.call(this); };
"""


def config(broker: Mosquitto, data: Path, **escalation: float) -> dict[str, Any]:
    cfg = settings_dict(broker.port, data)
    cfg["consoles"] = {"gazetteer": str(REPO / "config" / "gazetteer-lipetsk.csv")}
    cfg["desks"][0] = {**cfg["desks"][0], "phone": "+74742000000"}
    cfg["tracks"] = {"enabled": True}
    if escalation:
        cfg["escalation"] = escalation
    return cfg


@pytest.fixture
async def relay(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(config(broker, tmp_path / "data")) as r:
        yield r


async def operator_page(browser: Browser, relay: RunningRelay, errors: PageErrors, *, init: str = "") -> Page:
    context = await browser.new_context(viewport={"width": 1366, "height": 768}, locale="ru-RU")
    if init:
        await context.add_init_script(init)
    page = errors.watch(await context.new_page())
    await page.goto(f"{relay.url}/console/operator")
    await page.get_by_label("Токен доступа").fill(OPERATOR_TOKEN)
    await page.get_by_label("Токен доступа").press("Enter")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    return page


async def latest_report(relay: RunningRelay) -> dict[str, Any]:
    status, body = await relay.get("/api/v1/alerts?limit=1")
    assert status == 200 and body["alerts"], body
    return dict(body["alerts"][0]["report"])


async def send(page: Page) -> str:
    await page.locator("#send").click()
    status = page.locator("#form-status")
    await expect(status).to_contain_text("Принято. Код")
    code = re.search(r"Код (\w+)", await status.inner_text())
    assert code is not None
    return code.group(1)


CONVERSIONS: list[tuple[str, str, object]] = [
    ("headingDegrees", "сз", 315), ("headingDegrees", "СЗ", 315), ("headingDegrees", "северо-запад", 315),
    ("headingDegrees", "Ю", 180), ("headingDegrees", "ЮВ", 135), ("headingDegrees", "ВЮВ", 113),
    ("headingDegrees", "NW", 315), ("headingDegrees", "C", 0), ("headingDegrees", "90°", 90),
    ("headingDegrees", "360", 0), ("headingDegrees", "400", None), ("headingDegrees", "вверх", None),
    ("coordinate", "52,61", 52.61), ("coordinate", "52°36'36\"", 52.61), ("coordinate", "52 36 36", 52.61),
    ("coordinate", "52°36.6'", 52.61), ("coordinate", "39°35′24″ в.д.", 39.59), ("coordinate", "N52 36 36", 52.61),
    ("coordinate", "52°36'36\"S", -52.61), ("coordinate", "52 61 00", None), ("coordinate", "abc", None),
    ("phoneNumber", "8 900 765-43-21", "+79007654321"), ("phoneNumber", "+7 (900) 765 43 21", "+79007654321"),
    ("phoneNumber", "12345", None),
]


async def test_what_a_caller_says_becomes_what_the_relay_takes(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page = await operator_page(browser, relay, page_errors)
    got = await page.evaluate(
        "async (cases) => { const m = await import('/console/static/operator_input.js');"
        " return cases.map(([fn, text]) => m[fn](text)); }", [[fn, text] for fn, text, _ in CONVERSIONS])
    assert list(zip(CONVERSIONS, got, strict=True)) == [(c, c[2]) for c in CONVERSIONS]


@pytest.mark.parametrize(("text", "lat", "lon"), [
    ("52,61, 39,59", 52.61, 39.59), ("52.61 39.59", 52.61, 39.59), ("52,61 39,59", 52.61, 39.59),
    ("52°36'36\"N 39°35'24\"E", 52.61, 39.59), ("N52 36 36 E39 35 24", 52.61, 39.59), ("52.61;39.59", 52.61, 39.59),
])
async def test_a_pasted_pair_of_coordinates_fills_both_fields(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors, text: str, lat: float, lon: float
) -> None:
    page = await operator_page(browser, relay, page_errors)
    await page.locator("#f-lat").fill(text)
    await page.locator("#f-lat").press("Tab")
    assert float(await page.locator("#f-lat").input_value()) == pytest.approx(lat, abs=1e-6)
    assert float(await page.locator("#f-lon").input_value()) == pytest.approx(lon, abs=1e-6)


async def test_a_compass_heading_and_a_range_of_drones_go_as_degrees_and_the_larger_count(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page = await operator_page(browser, relay, page_errors)
    await page.locator("#f-lat").fill("52.61, 39.59")
    await page.locator("#f-heading_deg").fill("сз")
    await page.locator("#f-heading_deg").press("Tab")
    await expect(page.locator("#f-heading_deg")).to_have_value("315")
    await expect(page.locator("#h-heading_deg")).to_have_text("сз = 315°")
    await page.locator("#f-count").fill("3-4")
    await page.locator("#f-notes").fill("над лесом")
    await send(page)
    sent = await latest_report(relay)
    assert sent["heading_deg"] == 315 and sent["count"] == 4
    assert sent["notes"] == "над лесом; количество со слов заявителя: 3-4"
    assert sent["location"] == {"lat": 52.61, "lon": 39.59}
    assert page_errors.errors == []


async def test_a_phone_in_the_wrong_form_is_named_with_the_form_expected_and_nothing_is_sent(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page = await operator_page(browser, relay, page_errors)
    await page.locator("#f-lat").fill("52.61, 39.59")
    await page.locator("#f-phone").fill("12-34")
    await page.locator("#f-heading_deg").fill("вверх")
    await page.locator("#send").click()
    await expect(page.locator("#e-phone")).to_have_text("телефон: ожидается +79001234567 или 89001234567")
    await expect(page.locator("#e-heading_deg")).to_contain_text("С, СЗ, ЮВ")
    await expect(page.locator("#f-phone")).to_have_attribute("aria-invalid", "true")
    status, body = await relay.get("/api/v1/alerts?limit=5")
    assert status == 200 and body["alerts"] == []


async def test_a_village_from_the_gazetteer_fills_approximate_coordinates(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page = await operator_page(browser, relay, page_errors)
    place = page.get_by_role("combobox", name="Населённый пункт")
    await expect(place).to_be_visible()
    await place.type("лебед")
    option = page.get_by_role("option", name="Лебедянь, Лебедянский район")
    await expect(option).to_be_visible()
    await place.press("Enter")  # picks the highlighted place, does not send the form
    await expect(page.locator("#f-lat")).to_have_value("53.0156")
    await expect(page.locator("#f-lon")).to_have_value("39.1436")
    await expect(page.locator("#f-district")).to_have_value("Лебедянский район")
    await expect(page.locator("#approximate")).to_have_text("Координаты приблизительные: Лебедянь (±3 км)")
    await expect(page.locator("#form-status")).to_have_text("")
    await send(page)
    sent = await latest_report(relay)
    assert sent["location"] == {"lat": 53.0156, "lon": 39.1436, "accuracy_m": 3000.0,
                                "district": "Лебедянский район", "address": "Лебедянь"}


async def test_recent_reports_are_in_view_beside_the_form_at_1366x768(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    for n in range(3):
        await relay.post_report(report(f"seen-{n}"))
    page = await operator_page(browser, relay, page_errors)
    items = page.locator("#recent li")
    await expect(items).to_have_count(3)
    for i in range(3):
        box = await items.nth(i).bounding_box()
        assert box is not None and box["y"] + box["height"] <= 768, box
    assert await page.evaluate("window.scrollY") == 0
    form_box, recent_box = await page.locator("#report").bounding_box(), await page.locator(".recent").bounding_box()
    assert form_box is not None and recent_box is not None and recent_box["x"] >= form_box["x"] + form_box["width"]
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_the_ack_names_the_desk_and_its_clock_time_and_the_track_a_report_joined(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    _, first = await relay.post_report(report("same-1"))
    _, second = await relay.post_report(report("same-2"))  # the same drone, the same place: one track
    page = await operator_page(browser, relay, page_errors)
    joined = page.locator("#recent li").filter(has_text=second["short_code"])
    await expect(joined.locator(".track")).to_contain_text("тот же объект")
    status, _ = await relay.ack(first["alert_id"], DESK_TOKEN, by="Майор Иванов")
    assert status == 200
    acked = page.locator("#recent li").filter(has_text=first["short_code"])
    await expect(acked.locator(".detail").first).to_have_text(
        re.compile(r"^Майор Иванов \(Аэродром-1, веб-консоль\) в \d\d:\d\d:\d\d, через \d+(,\d)? с$"))
    await expect(joined.locator(".detail").first).to_have_text(
        re.compile(r"^Майор Иванов \(Аэродром-1\) подтвердил этот объект \(трек\) в \d\d:\d\d:\d\d$"))


async def test_a_report_nobody_acknowledged_sounds_and_says_whom_to_call(
    broker: Mosquitto, browser: Browser, page_errors: PageErrors, tmp_path: Path
) -> None:
    cfg = config(broker, tmp_path / "data", ack_timeout_s=0.5, repeat_s=1, give_up_s=2, retry_s=0.5)
    async with running_relay(cfg) as relay:
        page = await operator_page(browser, relay, page_errors, init=COUNT_OSCILLATORS)
        await page.locator("#f-lat").fill("52.61, 39.59")
        code = await send(page)
        mine = page.locator("#recent li").filter(has_text=code)
        await expect(mine).to_have_class(re.compile("is-unacknowledged"), timeout=15_000)
        box = page.locator("#call-desk")
        await expect(box).to_be_visible()
        await expect(box).to_contain_text("позвоните дежурному — Аэродром-1: +74742000000")
        await expect(box).to_contain_text(code)
        await eventually(lambda: page.evaluate("window.__oscillators >= 1"), what="a sound")
        assert await page.evaluate("document.body.dataset.unacknowledged") == "1"
        box_at = await box.bounding_box()
        assert box_at is not None and box_at["y"] + box_at["height"] <= 768  # seen without scrolling
