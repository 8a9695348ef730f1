"""What once took the relay down, against the real daemon as a subprocess: odd characters in a report, an SMTP
server without what the config expects, a Twilio answer that is not Twilio's. Each now fails one delivery with a
reason; the daemon stays up, the other channels deliver, and a restart does not replay the failure."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.broker import Mosquitto
from tests.support.process import RelayProcess
from tests.support.relay import (
    DESK1_EMAIL,
    DESK1_PHONE,
    OPERATOR_TOKEN,
    report,
    settings_dict,
    with_backups,
)
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import Fault, TwilioFake
from tests.support.wait import eventually

# What a 112 system's paste or a hostile caller may put into free text.
LINE_BREAKS = ["\n", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c", "\x85"]
CONTROLS = ["\x00", "\x1b[31m", "\x07", "\x7f", "\x9b", "\u202e", "\u2066", "\t"]


def _clean(text: str) -> bool:
    return not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067"
                   "\u2068\u2069" for c in text)


@dataclass
class Site:
    relay: RelayProcess
    broker: Mosquitto
    smtp: SmtpServer
    twilio: TwilioFake

    async def post(self, body: dict[str, Any]) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.relay.url}/api/v1/reports", json=body, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        ) as r:
            return r.status, await r.json()

    async def alert(self, alert_id: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.relay.url}/api/v1/alerts/{alert_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        ) as r:
            assert r.status == 200
            return dict(await r.json())

    async def history(self, alert_id: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.relay.url}/api/v1/alerts/{alert_id}/history",
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as r:
            return list((await r.json())["events"])

    async def delivery(self, alert_id: str, channel: str, target: str, state: str) -> dict[str, Any] | None:
        alert = await self.alert(alert_id)
        found = [d for d in alert["deliveries"] if d["channel"] == channel and d["target"] == target]
        return found[0] if found and found[0]["state"] == state else None

    def alive(self) -> bool:
        return self.relay.proc is not None and self.relay.proc.poll() is None

    async def restart(self) -> None:
        self.relay.kill9()
        self.relay.start()
        await self.relay.wait_ready()


@pytest.fixture
async def site(broker: Mosquitto, twilio: TwilioFake, tmp_path: Path,
               request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    """The relay with SMS and e-mail, its broker killed: every report fails over to both backups at once."""
    param: dict[str, Any] = getattr(request, "param", {})
    email: dict[str, Any] = param.get("email", {})
    desk_email: list[str] = param.get("desk_email", [DESK1_EMAIL])
    smtp = SmtpServer(smtputf8=param.get("smtputf8", True))
    smtp.start()
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       repeat_s=120)
    cfg["email"] = {**cfg["email"], **email}
    cfg["desks"][0] = {**cfg["desks"][0], "email": desk_email}
    cfg["relay"]["log_level"] = "info"
    cfg["sms"]["bundle_window_s"] = 0.1
    broker.kill()
    relay = RelayProcess(cfg, tmp_path)
    relay.start()
    try:
        await relay.wait_ready()
        yield Site(relay, broker, smtp, twilio)
    finally:
        relay.stop()
        smtp.stop()


def site_with(**param: Any) -> Any:
    return pytest.mark.parametrize("site", [param], indirect=True)


async def test_line_breaks_and_controls_in_a_report_reach_every_backup_as_plain_text(site: Site) -> None:
    codes = {}
    for n, (brk, ctl) in enumerate(zip(LINE_BREAKS, CONTROLS + CONTROLS, strict=False)):
        body = report(f"odd-{n}", location={"lat": 52.61, "lon": 39.59, "district": f"Грязинский{brk}район{ctl}",
                                            "address": f"ул. Мира{ctl}, 1{brk}кв. 2"},
                      notes=f"летит{brk}низко{ctl}", caller={"name": f"Петров{ctl}{brk}"})
        status, accepted = await site.post(body)
        assert status == 201, accepted
        codes[accepted["alert_id"]] = accepted["short_code"]

    mails = await site.smtp.wait_for(len(codes), timeout=20)

    def every_code_by_sms() -> list[Any] | None:  # several alerts to one phone may share a bundle
        sms = [m for m in site.twilio.messages if m.to == DESK1_PHONE]
        return sms if all(any(code in m.body for m in sms) for code in codes.values()) else None

    sms = await eventually(every_code_by_sms, timeout=20, what="every code by SMS")
    for alert_id, code in codes.items():
        assert any(code in m.message["Subject"] for m in mails), code
        alert = await site.alert(alert_id)
        district = alert["report"]["location"]["district"]  # stored as normalised: the break is a space
        assert district.startswith("Грязинский район") and _clean(district), district
        assert _clean(alert["report"]["location"]["address"])
        assert alert["report"]["notes"].startswith("летит")
    assert all(_clean(str(m.message["Subject"])) for m in mails)
    assert all(_clean(s.body) for s in sms)
    assert site.alive()

    await site.restart()  # what was sent is not sent again, and nothing dies on the way up
    status, accepted = await site.post(report("after-restart"))
    assert status == 201
    await eventually(lambda: any(accepted["short_code"] in str(m.message["Subject"]) for m in site.smtp.mails),
                     timeout=20, what="e-mail after the restart")
    assert site.alive()


@site_with(email={"starttls": True})
async def test_starttls_the_server_does_not_offer_fails_e_mail_alone(site: Site) -> None:
    await _e_mail_fails_alone(site, DESK1_EMAIL, "STARTTLS")


@site_with(email={"username": "relay", "password": "smtp-secret-pass"})
async def test_a_login_the_server_does_not_offer_fails_e_mail_alone(site: Site) -> None:
    await _e_mail_fails_alone(site, DESK1_EMAIL, "AUTH")


@site_with(desk_email=["дежурный@аэродром.example", DESK1_EMAIL], smtputf8=False)
async def test_a_non_ascii_address_without_smtputf8_fails_that_address_alone(site: Site) -> None:
    alert_id = await _e_mail_fails_alone(site, "дежурный@аэродром.example", "SMTPUTF8")
    await eventually(lambda: site.delivery(alert_id, "email", DESK1_EMAIL, "sent"), timeout=20,
                     what="the ASCII address still gets the e-mail")


async def _e_mail_fails_alone(site: Site, address: str, named: str) -> str:
    status, accepted = await site.post(report("smtp-mismatch"))
    assert status == 201
    alert_id = accepted["alert_id"]
    failed = await eventually(lambda: site.delivery(alert_id, "email", address, "failed"), timeout=20,
                              what="the e-mail delivery failed")
    assert named in failed["error"], failed
    await site.twilio.wait_for(1, timeout=20, to=DESK1_PHONE)  # SMS is unaffected
    assert site.alive()

    await site.restart()
    after = await site.delivery(alert_id, "email", address, "failed")
    assert after is not None and after["attempts"] == failed["attempts"], "the failure was replayed at start"
    assert not [m for m in site.smtp.mails if address in m.rcpt_tos]
    assert site.alive()
    return alert_id


async def test_a_proxy_page_instead_of_twilio_json_fails_the_sms_alone(site: Site) -> None:
    site.twilio.faults += [Fault(200, body="<html><h1>Proxy authentication</h1></html>")] * 40
    status, accepted = await site.post(report("proxy-page"))
    assert status == 201
    alert_id = accepted["alert_id"]
    await site.smtp.wait_for(1, timeout=20)  # e-mail goes out regardless

    async def sms_failed() -> dict[str, Any] | None:
        alert = await site.alert(alert_id)
        found = [d for d in alert["deliveries"] if d["channel"] == "sms" and d["target"] == DESK1_PHONE]
        return found[0] if found and found[0]["error"] else None

    failed = await eventually(sms_failed, timeout=30, what="the SMS delivery failed")
    assert "not understood" in failed["error"], failed
    assert site.alive()
    site.twilio.faults.clear()
    await site.restart()
    await site.twilio.wait_for(1, timeout=30, to=DESK1_PHONE)  # once Twilio answers properly, the SMS goes out
    assert site.alive()
