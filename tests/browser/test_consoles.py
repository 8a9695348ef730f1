"""The two browser consoles in a real Chromium against the relay in process, a private Mosquitto and real HTTP."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import PageErrors
from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import (
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
)
from tests.support.wait import eventually, free_port

# Counts the oscillators the page starts: the alarm is a Web Audio oscillator, and a test cannot hear.
COUNT_OSCILLATORS = """
window.__oscillators = 0;
const make = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () { window.__oscillators += 1; return make.call(this); };
"""

FORM_ORDER = ["lat", "lon", "district", "address", "observed_at", "count", "uav_type", "sound", "perception",
              "heading_deg", "movement", "speed", "altitude", "altitude_m", "priority", "status", "notes", "phone",
              "name"]


async def open_console(browser: Browser, url: str, token: str, errors: PageErrors, *, init: str = "") -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="ru-RU")
    if init:
        await context.add_init_script(init)
    page = errors.watch(await context.new_page())
    await page.goto(url)
    token_field = page.get_by_label("Токен доступа")
    await expect(token_field).to_be_focused()
    await token_field.fill(token)
    await token_field.press("Enter")  # one field, Enter submits
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    return page


async def test_operator_report_reaches_the_dispatcher_live_and_the_ack_comes_back(
    relay: RunningRelay, broker: Mosquitto, browser: Browser, page_errors: PageErrors
) -> None:
    dispatcher = await open_console(browser, f"{relay.url}/console/dispatcher", DESK_TOKEN, page_errors,
                                    init=COUNT_OSCILLATORS)
    await dispatcher.get_by_label("Кто подтверждает").fill("Майор Иванов")
    await expect(dispatcher.get_by_text("Неподтверждённых треков нет.")).to_be_visible()
    assert await dispatcher.evaluate("document.querySelector('#sound').hidden"), "the login key unlocks the sound"
    await expect(dispatcher.locator("body")).to_have_attribute("data-alarm", "off")
    await dispatcher.evaluate("window.__sameDocument = true")
    operator = await open_console(browser, f"{relay.url}/console/operator", OPERATOR_TOKEN, page_errors)

    async with Console(broker.port, "airfield-1") as mqtt_console:
        # keyboard only, in the order the call is heard: the cursor starts in the latitude
        await expect(operator.locator("input[name=lat]")).to_be_focused()
        await operator.keyboard.type("52,61")  # a Russian keyboard's decimal comma
        for name, text in [("lon", "39.59"), ("district", "Грязинский район"), ("address", "у элеватора")]:
            await operator.keyboard.press("Tab")
            await expect(operator.locator(f"[name={name}]")).to_be_focused()
            await operator.keyboard.type(text)
        await operator.keyboard.press("Tab")  # observed_at: left as it is, meaning now
        await operator.keyboard.press("Tab")
        await expect(operator.locator("[name=count]")).to_be_focused()
        await operator.keyboard.press("Control+A")
        await operator.keyboard.type("2")
        await operator.locator("[name=uav_type]").select_option("fixed_wing")
        await operator.locator("[name=heading_deg]").fill("315")
        await operator.locator("[name=altitude]").select_option("low")
        await operator.locator("[name=altitude_m]").fill("300")
        await operator.locator("[name=phone]").fill("8 900 765-43-21")

        started = time.monotonic()
        await operator.locator("[name=altitude_m]").press("Enter")  # Enter in any input submits
        status = operator.locator("#form-status")
        await expect(status).to_contain_text("Принято. Код")
        code = re.search(r"Код (\w+)", await status.inner_text())
        assert code, await status.inner_text()
        short_code = code.group(1)

        # tracks are off here: the report is a track of its own, one card
        card = dispatcher.locator("#tracks li.track").filter(has_text=short_code)
        await expect(card).to_be_visible(timeout=1000)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"the dispatcher showed the alert {elapsed:.2f} s after Enter"
        assert await dispatcher.evaluate("window.__sameDocument === true"), "the dispatcher page was reloaded"

        await expect(card).to_have_class(re.compile(r"\bfresh\b"))  # flashing: new, nobody looked at it yet
        await expect(dispatcher.locator("body")).to_have_attribute("data-alarm", "ringing")
        await expect(card.locator(".t-place")).to_have_text("Грязинский район, у элеватора")
        await expect(card.locator(".coords")).to_have_text("52.6100, 39.5900")
        await expect(card.locator(".t-reports")).to_have_text("1 сообщение")
        await expect(card.locator(".t-type")).to_have_text("самолётного типа ×2")
        await expect(card).to_contain_text("курс 315° (СЗ)")
        await expect(card).to_contain_text("низко, ~300 м")
        await expect(card.locator(".ago")).to_have_text(re.compile(r"^\d+ с назад$"))
        await expect(card.locator(".t-dist")).to_have_count(0)  # this desk has no area: no airfield to measure from
        mark = dispatcher.locator("#plot .track").filter(has_text=short_code)
        await expect(mark.locator(".heading")).to_have_attribute("transform", "rotate(315)")
        assert await dispatcher.evaluate("window.__oscillators") >= 1, "no alarm sounded"
        assert "+79007654321" not in await dispatcher.content()  # the caller stays with the 112 centre

        # the operator sees it go out, then reach the desk's MQTT console
        mine = operator.locator("#recent li").filter(has_text=short_code)
        await expect(mine.locator(".state")).to_have_text(re.compile("Отправлено|Доставлено"))
        alert = await mqtt_console.next_alert()
        assert alert["short_code"] == short_code
        assert alert["report"]["location"]["lat"] == 52.61
        await mqtt_console.received(alert["alert_id"])
        await expect(mine.locator(".state")).to_have_text("Доставлено")
        await expect(mine).to_have_class(re.compile("is-delivered"))

        ack = card.get_by_role("button", name=f"Подтвердить {short_code}", exact=True)
        await expect(ack).to_have_text("Подтвердить")
        await ack.click()
        await expect(card).to_have_count(0)
        done = dispatcher.locator("#acked li.track").filter(has_text=short_code)
        await expect(done).to_contain_text("Подтверждено: Майор Иванов")
        await expect(dispatcher.get_by_text("Неподтверждённых треков нет.")).to_be_visible()
        await expect(dispatcher.locator("body")).to_have_attribute("data-alarm", "off")

        await expect(mine.locator(".state")).to_have_text("Подтверждено")
        await expect(mine).to_have_class(re.compile("is-acknowledged"))
        await expect(mine.locator(".detail")).to_contain_text("Майор Иванов")

    stored = await relay.alert(alert["alert_id"])
    assert stored["ack"]["by"] == "Майор Иванов" and stored["ack"]["channel"] == "web"  # the board acks the track
    assert any(d["channel"] == "web" and d["state"] == "delivered" for d in stored["deliveries"])  # shown there
    assert stored["report"]["caller"] == {"phone": "+79007654321"}
    assert stored["report"]["count"] == 2 and stored["report"]["heading_deg"] == 315
    assert await dispatcher.evaluate("localStorage.getItem('uav-relay.desk.by')") == "Майор Иванов"
    assert page_errors.errors == []


async def test_the_form_is_keyboard_only_in_the_order_of_the_call(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    operator = await open_console(browser, f"{relay.url}/console/operator", OPERATOR_TOKEN, page_errors)
    await expect(operator.locator("[name=lat]")).to_be_focused()
    seen = [await operator.evaluate("document.activeElement.name")]
    for _ in FORM_ORDER[1:]:
        await operator.keyboard.press("Tab")
        seen.append(await operator.evaluate("document.activeElement.name"))
    assert seen == FORM_ORDER
    await operator.keyboard.press("Tab")
    await expect(operator.get_by_role("button", name="Отправить дежурным")).to_be_focused()

    # sane defaults: now, one, unknown, immediate, actual
    assert re.fullmatch(r"\d\d:\d\d:\d\d", await operator.locator("[name=observed_at]").input_value())
    assert await operator.locator("[name=count]").input_value() == "1"
    for name in ("uav_type", "sound", "perception", "movement", "speed", "altitude"):
        assert await operator.locator(f"[name={name}]").input_value() == "unknown", name
    assert await operator.locator("[name=priority]").input_value() == "immediate"
    assert await operator.locator("[name=status]").input_value() == "actual"

    # a pasted pair of coordinates fills both; Enter on a select submits too
    await operator.locator("[name=lat]").fill("43.12, 131.88")
    await operator.locator("[name=status]").select_option("exercise")
    await operator.locator("[name=status]").press("Enter")
    await expect(operator.locator("#form-status")).to_contain_text("Принято")
    _, listed = await relay.get("/api/v1/alerts")
    (only,) = listed["alerts"]
    assert only["report"]["location"] == {"lat": 43.12, "lon": 131.88}
    assert only["report"]["status"] == "exercise"
    assert re.fullmatch(r"op-\d+-[0-9a-z]+", only["report_id"])
    # the form is ready for the next call, the cursor back at the top
    await expect(operator.locator("[name=lat]")).to_be_focused()
    assert await operator.locator("[name=lat]").input_value() == ""
    assert await operator.locator("[name=status]").input_value() == "actual"
    assert page_errors.errors == []


async def test_the_relays_validation_errors_show_next_to_their_fields(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page_errors.expect("status of 422")  # the relay's answer to the bad form
    operator = await open_console(browser, f"{relay.url}/console/operator", OPERATOR_TOKEN, page_errors)
    await operator.locator("[name=lat]").fill("95")
    await operator.locator("[name=lon]").fill("39.59")
    await operator.locator("[name=heading_deg]").fill("400")
    await operator.locator("[name=count]").fill("два")
    await operator.locator("[name=lon]").press("Enter")
    # a heading and a count the page can read itself are marked before anything is sent
    await expect(operator.locator("#e-heading_deg")).not_to_have_text("")
    await expect(operator.locator("#e-count")).not_to_have_text("")
    await operator.locator("[name=heading_deg]").fill("90")
    await operator.locator("[name=count]").fill("3")
    await operator.locator("[name=lon]").press("Enter")

    # the relay's 422 names the latitude
    await expect(operator.locator("#e-lat")).to_have_text("не больше 90")
    await expect(operator.locator("[name=lat]")).to_have_attribute("aria-invalid", "true")
    await expect(operator.locator("[name=lat]")).to_be_focused()  # the first bad field, ready to fix
    await expect(operator.locator("#e-heading_deg")).to_have_text("")
    await expect(operator.locator("#e-lon")).to_have_text("")
    await expect(operator.locator("#form-status")).to_have_text("Исправьте отмеченные поля: 1.")
    # the message is announced with its field: the input points at it
    assert "e-lat" in (await operator.locator("[name=lat]").get_attribute("aria-describedby") or "")
    _, listed = await relay.get("/api/v1/alerts")
    assert listed["alerts"] == []

    # fixing a field clears its mark; the corrected form goes through
    await operator.locator("[name=lat]").fill("52.61")
    await expect(operator.locator("#e-lat")).to_have_text("")
    await expect(operator.locator("[name=lat]")).not_to_have_attribute("aria-invalid", "true")
    await operator.locator("[name=observed_at]").fill("25:99")
    await operator.locator("[name=count]").press("Enter")
    await expect(operator.locator("#e-observed_at")).to_have_text("время как ЧЧ:ММ или ЧЧ:ММ:СС")
    await operator.locator("[name=observed_at]").fill("")
    await operator.locator("[name=count]").press("Enter")
    await expect(operator.locator("#form-status")).to_contain_text("Принято")
    _, listed = await relay.get("/api/v1/alerts")
    assert [a["report"]["count"] for a in listed["alerts"]] == [3]
    assert page_errors.errors == []


async def test_the_dispatcher_shows_a_lost_relay_and_recovers_by_itself(
    broker: Mosquitto, tmp_path: Path, browser: Browser, page_errors: PageErrors
) -> None:
    port = free_port()
    settings = settings_dict(broker.port, tmp_path / "data",
                             http={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    async with running_relay(settings) as first:
        dispatcher = await open_console(browser, f"{first.url}/console/dispatcher", DESK_TOKEN, page_errors)
        status, before = await first.post_report(report("before-restart"))
        assert status == 201, before
        await expect(dispatcher.locator("#tracks li.track").filter(has_text=before["short_code"])).to_be_visible()

    offline = dispatcher.locator("#offline")
    await expect(offline).to_be_visible()
    await expect(offline).to_contain_text("НЕТ СВЯЗИ")
    await expect(dispatcher.locator("#conn")).to_have_text("Нет связи")
    await dispatcher.screenshot(path=tmp_path / "dispatcher-offline.png")

    async with running_relay(settings) as second:
        await expect(offline).to_be_hidden(timeout=15_000)  # the backoff is capped at 5 s
        await expect(dispatcher.locator("#conn")).to_have_text("Связь восстановлена")
        await expect(dispatcher.locator("#tracks li.track").filter(has_text=before["short_code"])).to_be_visible()
        # the stream is live again: a report filed now shows without a reload
        status, after = await second.post_report(report("after-restart"))
        assert status == 201, after
        await expect(dispatcher.locator("#tracks li.track").filter(has_text=after["short_code"])).to_be_visible(
            timeout=1000)
        # and an ack from elsewhere (the API) moves it to the acknowledged ones
        await second.ack(before["alert_id"], by="по телефону")
        await expect(dispatcher.locator("#acked li.track").filter(has_text=before["short_code"])).to_contain_text(
            "по телефону")
        await expect(dispatcher.locator("#tracks li.track")).to_have_count(1)
    assert page_errors.errors == []


async def test_login_takes_one_token_of_the_right_role(
    relay: RunningRelay, browser: Browser, page_errors: PageErrors
) -> None:
    page_errors.expect("status of 401")  # the wrong token's answer
    context = await browser.new_context()
    page = page_errors.watch(await context.new_page())
    await page.goto(f"{relay.url}/console/dispatcher")
    token = page.get_by_label("Токен доступа")
    await token.fill("not-a-token-at-all-0000")
    await token.press("Enter")
    await expect(page.locator("#login-error")).to_have_text("Токен не принят. Проверьте его и введите снова.")
    await token.fill(OPERATOR_TOKEN)
    await page.get_by_role("button", name="Войти", exact=True).click()
    await expect(page.locator("#login-error")).to_contain_text("Это не токен дежурного")
    await expect(page.locator("#app")).to_be_hidden()
    await token.fill(DESK_TOKEN)
    await token.press("Enter")
    await expect(page.locator("#who")).to_have_text("Пост: airfield-1 (Аэродром-1)")  # its name from the session
    # kept for this tab only: a reload stays logged in, "Выйти" forgets the token
    await page.reload()
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    await expect(page.get_by_role("button", name="Включить звук")).to_be_visible()  # no gesture since the reload
    await page.get_by_role("button", name="Выйти").click()
    await expect(page.get_by_label("Токен доступа")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert page_errors.errors == []


async def test_pages_are_served_from_the_package_with_a_strict_policy(relay: RunningRelay) -> None:
    for path in ("/console/dispatcher", "/console/operator"):
        async with relay.http.get(f"{relay.url}{path}") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            csp = r.headers["Content-Security-Policy"]
            body = await r.text()
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "{{" not in body  # every slot filled from the strings file
        scripts = re.findall(r"<script([^>]*)>", body)
        assert all('src="/console/static/' in s or 'type="application/json"' in s for s in scripts), scripts
        assert "http://" not in body and "https://" not in body  # nothing from elsewhere: works offline
    for name, kind in [("common.js", "text/javascript"), ("console.css", "text/css")]:
        async with relay.http.get(f"{relay.url}/console/static/{name}") as r:
            assert r.status == 200 and r.content_type == kind
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("strings_ru.json", "..%2fconsoles.py", "nope.js"):
        async with relay.http.get(f"{relay.url}/console/static/{name}") as r:
            assert r.status == 404
    async with relay.http.get(f"{relay.url}/console/", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/console/operator"
    status, desk = await relay.get("/console/session", token=DESK_TOKEN)
    assert status == 200 and (desk["role"], desk["id"]) == ("desk", "airfield-1")
    status, operator = await relay.get("/console/session", token=OPERATOR_TOKEN)
    assert status == 200 and (operator["role"], operator["id"]) == ("operator", "op-1")
    status, _ = await relay.get("/console/session", token="wrong-token-0000000000")
    assert status == 401


async def test_screenshots_of_both_consoles(
    relay: RunningRelay, broker: Mosquitto, browser: Browser, page_errors: PageErrors, screenshot_dir: Path
) -> None:
    """Both consoles with alerts in every state; CONSOLE_SCREENSHOTS=docs writes docs/console-*.png."""
    async with Console(broker.port, "airfield-1") as mqtt_console:
        filed = []
        for rid, extra in [
            ("s-acked", {"location": {"lat": 52.58, "lon": 39.52, "district": "Липецк, Советский округ"},
                         "uav_type": "multirotor", "count": 1, "heading_deg": 90}),
            ("s-delivered", {"location": {"lat": 52.70, "lon": 39.75, "district": "Добровский район"},
                             "uav_type": "fixed_wing", "count": 3, "heading_deg": 20, "altitude_m": 150}),
            ("s-flash", {"location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район",
                                      "address": "с. Казинка, у элеватора"},
                         "priority": "flash", "count": 2, "heading_deg": 315, "altitude": "low",
                         "notes": "летит низко, звук мопеда, двое очевидцев"}),
        ]:
            status, body = await relay.post_report(report(rid, **extra))
            assert status == 201, body
            filed.append(body)
            alert = await mqtt_console.next_alert()
            if rid != "s-flash":
                await mqtt_console.received(alert["alert_id"])
        await relay.ack(filed[0]["alert_id"], by="Капитан Петров")
        await eventually(lambda: _state(relay, filed[1]["alert_id"], "delivered"), what="delivered")

        page_errors.expect("status of 422")  # the operator's form, shown with an error
        dispatcher = await open_console(browser, f"{relay.url}/console/dispatcher", DESK_TOKEN, page_errors)
        await dispatcher.get_by_label("Кто подтверждает").fill("Майор Иванов")
        await expect(dispatcher.locator("#tracks li.track")).to_have_count(2)
        await expect(dispatcher.locator("#acked li.track")).to_have_count(1)
        await _no_overflow(dispatcher)  # (the board's picture is test_board's: a raid, tracks on)

        operator = await open_console(browser, f"{relay.url}/console/operator", OPERATOR_TOKEN, page_errors)
        await expect(operator.locator("#recent li")).to_have_count(3)
        await expect(operator.locator("#recent li.is-acknowledged")).to_have_count(1)
        await operator.locator("[name=lat]").fill("95")
        await operator.locator("[name=lon]").fill("39.6")
        await operator.locator("[name=district]").fill("Усманский район")
        await operator.locator("[name=lon]").press("Enter")
        await expect(operator.locator("#e-lat")).to_have_text("не больше 90")
        await operator.screenshot(path=screenshot_dir / "console-operator.png", full_page=True)
        await _no_overflow(operator)
    assert page_errors.errors == []


async def _state(relay: RunningRelay, alert_id: str, state: str) -> bool:
    return (await relay.alert(alert_id))["state"] == state


async def _no_overflow(page: Page) -> None:
    wide = await page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    assert not wide, "the page scrolls sideways"
