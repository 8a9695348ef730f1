"""The warning reaches the airfield when the primary is dead or the console silent: SMS and e-mail, escalation,
acks on every channel. Real Mosquitto, real aiosmtpd, the real twilio client against a Twilio-shaped server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import (
    DESK1_EMAIL,
    DESK1_PHONE,
    DESK1_PHONE2,
    DESK2_PHONE,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.site import Site
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import Fault, TwilioFake
from tests.support.wait import eventually, holds_for


@pytest.fixture
async def setup(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    escalation: dict[str, Any] = getattr(request, "param", {})
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, **escalation)
    async with running_relay(cfg) as relay:
        yield Site(relay, broker, smtp, twilio)


def escalation(**kw: float) -> Any:
    return pytest.mark.parametrize("setup", [kw], indirect=True)


async def _state(relay: RunningRelay, alert_id: str, state: str) -> dict[str, Any] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == state else None


async def _metric_is(relay: RunningRelay, name: str, value: float) -> bool:
    return await relay.metric(name) == value


def _deliveries(alert: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    return [d for d in alert["deliveries"] if d["channel"] == channel]


# ---- failover and escalation ------------------------------------------------------------------------------


async def test_broker_killed_sms_and_email_go_out_within_a_second(setup: Site) -> None:
    setup.broker.kill()
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
    started = time.time()
    status, accepted = await setup.relay.post_report(report("failover-1"))
    assert status == 201
    sms = await setup.twilio.wait_for(2, timeout=1.0)  # desk 1 has two phones
    mails = await setup.smtp.wait_for(1, timeout=1.0)
    assert {m.to for m in sms} == {DESK1_PHONE, DESK1_PHONE2}
    assert mails[0].rcpt_tos == [DESK1_EMAIL]
    assert max(m.at for m in sms) - started < 1.0
    assert mails[0].at - started < 1.0
    assert accepted["short_code"] in sms[0].body
    assert "+79001234567" not in sms[0].body and "Петров" not in sms[0].body  # never the caller's data
    assert await setup.relay.metric('relay_failovers_total{reason="primary_down"}') == 1


@escalation(ack_timeout_s=1.0, repeat_s=30)
async def test_a_console_that_never_acks_gets_backups_at_ack_timeout_not_before(setup: Site) -> None:
    async with Console(setup.broker.port, "airfield-1") as console:
        _, accepted = await setup.relay.post_report(report("silent-console"))
        alert = await console.next_alert()
        await console.received(alert["alert_id"])
        created = (await setup.relay.alert(accepted["alert_id"]))["created_at"]
        sms = await setup.twilio.wait_for(2, timeout=5)
        mails = await setup.smtp.wait_for(1, timeout=5)
    accepted_at = _epoch(created)
    for at in [m.at for m in sms] + [m.at for m in mails]:
        assert at - accepted_at >= 1.0, "a backup went out before ack_timeout_s"
        assert at - accepted_at < 2.5
    assert await setup.relay.metric('relay_backup_rounds_total{reason="ack_timeout"}') == 1
    assert await setup.relay.metric("relay_failovers_total") == 0


@escalation(ack_timeout_s=0.5, repeat_s=1.0, give_up_s=3.2)
async def test_backups_repeat_every_repeat_s_and_stop_at_give_up(setup: Site) -> None:
    async with Console(setup.broker.port, "airfield-1") as console:
        posted = time.time()
        _, accepted = await setup.relay.post_report(report("repeat-me"))
        await console.next_alert()
        closed = await eventually(lambda: _state(setup.relay, accepted["alert_id"], "unacknowledged"), timeout=8,
                                  what="given up")
    to_one = [m.at - posted for m in setup.twilio.messages if m.to == DESK1_PHONE]
    assert len(to_one) == 3  # due at 0.5 s, 1.5 s, 2.5 s; give-up at 3.2 s
    # Each round leaves at its due time (never early), and reaches the provider within 0.6 s of it: the first
    # call's connection set-up can take a few hundred ms on a loaded machine, so gaps between arrivals are not
    # what is due every repeat_s; the rounds are.
    assert all(0.5 + k <= t <= 0.5 + k + 0.6 for k, t in enumerate(to_one)), to_one
    assert all(d["state"] not in ("queued", "sending") for d in closed["deliveries"])
    count = len(setup.twilio.messages)
    await holds_for(lambda: len(setup.twilio.messages) == count, seconds=1.2, what="no SMS after give-up")
    assert await setup.relay.metric("relay_alerts_unacknowledged_total") == 1


async def test_flash_fires_every_channel_at_once(setup: Site) -> None:
    async with Console(setup.broker.port, "airfield-1") as console:
        started = time.time()
        _, accepted = await setup.relay.post_report(report("flash-1", priority="flash"))
        await console.next_alert()
        sms = await setup.twilio.wait_for(2, timeout=1.0)
        await setup.smtp.wait_for(1, timeout=1.0)
    assert all(m.at - started < 1.0 for m in sms)
    assert "СРОЧНО" in sms[0].body
    assert await setup.relay.metric('relay_backup_rounds_total{reason="flash"}') == 1
    alert = await setup.relay.alert(accepted["alert_id"])
    assert {d["channel"] for d in alert["deliveries"]} == {"mqtt", "sms", "email"}


# ---- acknowledgement stops everything --------------------------------------------------------------------


@pytest.mark.parametrize("setup", [{"ack_timeout_s": 0.3, "repeat_s": 0.6}], indirect=True)
@pytest.mark.parametrize("via", ["mqtt", "http"])
async def test_an_ack_stops_every_pending_send(setup: Site, via: str) -> None:
    async with Console(setup.broker.port, "airfield-1") as console:
        _, accepted = await setup.relay.post_report(report("ack-stops"))
        alert = await console.next_alert()
        await setup.twilio.wait_for(2, timeout=3)  # the first backup round went out, SMS ...
        await setup.smtp.wait_for(1, timeout=3)  # ... and e-mail (sends already under way cannot be recalled)
        if via == "mqtt":
            await console.ack(alert["alert_id"], by="Майор Иванов")
        else:
            await setup.relay.ack(alert["alert_id"], by="Майор Иванов")
        acked = await eventually(lambda: _state(setup.relay, accepted["alert_id"], "acknowledged"), what="acked")
    assert (acked["ack"]["channel"], acked["ack"]["by"]) == (via, "Майор Иванов")
    sent, mailed = len(setup.twilio.messages), len(setup.smtp.mails)
    await holds_for(lambda: (len(setup.twilio.messages), len(setup.smtp.mails)) == (sent, mailed), seconds=1.5,
                    what="nothing sent after the ack")
    status, again = await setup.relay.ack(accepted["alert_id"], by="второй")
    assert status == 200
    assert again["ack"]["by"] == "Майор Иванов"  # first ack wins


# ---- ack by SMS reply ------------------------------------------------------------------------------------


async def _failover_alert(setup: Site, report_id: str) -> dict[str, Any]:
    setup.broker.kill()
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
    _, accepted = await setup.relay.post_report(report(report_id))
    await setup.twilio.wait_for(2)
    return accepted


async def test_an_sms_reply_with_the_code_acknowledges(setup: Site) -> None:
    accepted = await _failover_alert(setup, "sms-ack")
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE2, f"принято {accepted['short_code']}")
    assert status == 200
    assert "подтверждена" in twiml and accepted["short_code"] in twiml
    acked = await setup.relay.alert(accepted["alert_id"])
    assert acked["state"] == "acknowledged"
    assert (acked["ack"]["channel"], acked["ack"]["by"], acked["ack"]["desk_id"]) == ("sms", DESK1_PHONE2, "airfield-1")
    assert await setup.relay.metric('relay_ack_seconds_count{channel="sms"}') == 1


async def test_a_code_typed_on_a_russian_keyboard_counts(setup: Site) -> None:
    accepted = await _failover_alert(setup, "sms-cyrillic")
    code = accepted["short_code"]
    typed = code.lower().translate(str.maketrans("abcehkmptxy", "авсенкмртху"))
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE, typed)
    assert status == 200, twiml
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "acknowledged"


async def test_an_sms_from_a_number_not_on_the_alerts_desks_never_acks(setup: Site) -> None:
    accepted = await _failover_alert(setup, "sms-wrong-number")
    for phone in (DESK2_PHONE, "+79995554433"):  # another desk's phone (not routed), a stranger
        status, twiml = await TwilioFake.inbound(setup.public_url, phone, accepted["short_code"])
        assert status == 200
        assert "не принято" in twiml
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "pending"
    assert await setup.relay.metric('relay_acks_rejected_total{channel="sms",reason="not_routed"}') == 2
    _, history = await setup.relay.get(f"/api/v1/alerts/{accepted['alert_id']}/history")
    assert [e["detail"]["from"] for e in history["events"] if e["kind"] == "ack_refused"] == [
        DESK2_PHONE, "+79995554433"]


async def test_a_wrong_code_is_explained_and_acks_nothing(setup: Site) -> None:
    accepted = await _failover_alert(setup, "sms-wrong-code")
    wrong = "ZZZZ" if accepted["short_code"] != "ZZZZ" else "YYYY"
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE, wrong)
    assert status == 200
    assert f"Код {wrong} не найден" in twiml
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE, "что случилось?")
    assert "Код тревоги не найден" in twiml
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "pending"


@pytest.mark.parametrize("signature", [None, "Zm9yZ2VkIHNpZ25hdHVyZQ=="], ids=["unsigned", "forged"])
async def test_an_unsigned_or_forged_sms_webhook_is_refused(setup: Site, signature: str | None) -> None:
    accepted = await _failover_alert(setup, f"sms-{signature is None}")
    status, _ = await TwilioFake.inbound(setup.public_url, DESK1_PHONE, accepted["short_code"], signature=signature)
    assert status == 403
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "pending"
    assert await setup.relay.metric('relay_webhooks_rejected_total{webhook="twilio_sms"}') == 1


# ---- ack by e-mail link ----------------------------------------------------------------------------------


def _ack_link(mail_text: str) -> str:
    return next(word for word in mail_text.split() if "/ack/" in word)


async def test_the_email_link_shows_the_alert_on_get_and_acks_only_on_post(setup: Site) -> None:
    accepted = await _failover_alert(setup, "mail-ack")
    mail = (await setup.smtp.wait_for(1))[0]
    assert accepted["short_code"] in mail.message["Subject"]
    assert "Грязинский район" in mail.text and "Грязинский район" in mail.html
    assert "+79001234567" not in mail.text and "Петров" not in mail.html
    link = _ack_link(mail.text)
    assert link.startswith(setup.public_url + "/ack/")
    async with setup.relay.http.get(link) as r:  # a mail scanner following the link
        page = await r.text()
        assert r.status == 200
        assert "Подтвердить</button>" in page
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "pending"
    async with setup.relay.http.post(link, data={"by": "Капитан Смирнов"}) as r:
        assert r.status == 200
        assert "подтверждена" in (await r.text())
    acked = await setup.relay.alert(accepted["alert_id"])
    assert (acked["state"], acked["ack"]["channel"], acked["ack"]["by"]) == ("acknowledged", "email",
                                                                            "Капитан Смирнов")


async def test_a_forged_or_expired_email_link_is_refused(setup: Site) -> None:
    from relay.engine.ack_links import KEY_FILE, AckLinkSigner

    accepted = await _failover_alert(setup, "mail-forged")
    link = _ack_link((await setup.smtp.wait_for(1))[0].text)
    _body, _, mac = link.rpartition("/")[2].partition(".")
    altered = link.replace(mac, ("A" if mac[0] != "A" else "B") + mac[1:])
    data_dir = Path(setup.relay.relay.settings.relay.data_dir)
    key = bytes.fromhex((data_dir / KEY_FILE).read_text())
    expired = AckLinkSigner(key, ttl_s=60).token(accepted["alert_id"], "airfield-1", time.time() - 120)
    other_desk = AckLinkSigner(key, ttl_s=60).token(accepted["alert_id"], "airfield-2", time.time())
    for bad in (altered, f"{setup.public_url}/ack/{expired}", f"{setup.public_url}/ack/{other_desk}",
                f"{setup.public_url}/ack/garbage"):
        async with setup.relay.http.post(bad) as r:
            assert r.status == 403, bad
            assert "недействительна" in await r.text()
    assert (await setup.relay.alert(accepted["alert_id"]))["state"] == "pending"


# ---- provider faults -------------------------------------------------------------------------------------


async def test_twilio_500_then_429_then_success_still_delivers_one_sms(setup: Site) -> None:
    setup.twilio.faults += [Fault(500), Fault(429, 20429)]
    accepted = await _failover_alert(setup, "twilio-flaky")
    await setup.twilio.wait_for(2)
    assert setup.twilio.calls == 4  # two faults, then one SMS per phone

    async def both_sent() -> bool:  # Twilio has them a moment before the relay records the answers
        alert = await setup.relay.alert(accepted["alert_id"])
        return sorted(d["state"] for d in _deliveries(alert, "sms")) == ["sent", "sent"]

    await eventually(both_sent, what="both SMS deliveries recorded as sent")


async def test_a_permanent_twilio_error_fails_that_number_without_retrying(setup: Site) -> None:
    setup.twilio.invalid_numbers.add(DESK1_PHONE2)
    accepted = await _failover_alert_one(setup, "twilio-bad-number")

    async def failed() -> dict[str, Any] | None:
        alert = await setup.relay.alert(accepted["alert_id"])
        bad = [d for d in _deliveries(alert, "sms") if d["target"] == DESK1_PHONE2]
        return bad[0] if bad and bad[0]["state"] == "failed" else None

    bad = await eventually(failed, what="delivery to the invalid number failed")
    assert "21211" in bad["error"]
    assert bad["attempts"] == 1
    await setup.twilio.wait_for(2, to=DESK1_PHONE)  # a repeat round went out since
    assert setup.twilio.tried.count(DESK1_PHONE2) == 1  # the refused number was never tried again
    assert await setup.relay.metric('relay_channel_up{channel="sms"}') == 1  # a bad number is not a sick channel


@escalation(ack_timeout_s=0.3, repeat_s=30, retry_s=0.5)
async def test_smtp_down_then_back_the_email_still_goes_out(setup: Site) -> None:
    setup.smtp.stop()
    async with Console(setup.broker.port, "airfield-1") as console:
        _, accepted = await setup.relay.post_report(report("smtp-down"))
        await console.next_alert()

        await eventually(
            lambda: _metric_is(setup.relay, 'relay_deliveries_total{channel="email",outcome="unreachable"}', 1),
            timeout=10, what="the e-mail send gave up for now (its retries spent)",
        )
        failed = _deliveries(await setup.relay.alert(accepted["alert_id"]), "email")[0]
        assert "SMTP server unreachable" in failed["error"]
        setup.smtp.start()
        mails = await setup.smtp.wait_for(1, timeout=10)
    assert mails[0].rcpt_tos == [DESK1_EMAIL]

    async def recorded_sent() -> dict[str, Any] | None:  # the server has it a moment before the relay records it
        email = _deliveries(await setup.relay.alert(accepted["alert_id"]), "email")[0]
        return email if email["state"] == "sent" else None

    email = await eventually(recorded_sent, what="the e-mail recorded as sent")
    assert email["attempts"] == 2


async def test_status_callbacks_mark_an_sms_delivered_or_failed(setup: Site) -> None:
    accepted = await _failover_alert(setup, "sms-receipts")
    one, two = sorted(setup.twilio.messages, key=lambda m: m.to)
    assert one.status_callback.startswith(setup.public_url + "/webhooks/twilio/status?")
    assert await setup.twilio.status_callback(one, "sent") == 204
    assert await setup.twilio.status_callback(one, "delivered") == 204
    assert await setup.twilio.status_callback(two, "undelivered", error_code="30003") == 204
    assert await setup.twilio.status_callback(one, "sent") == 204  # late and out of order: changes nothing
    alert = await setup.relay.alert(accepted["alert_id"])
    by_target = {d["target"]: d for d in _deliveries(alert, "sms")}
    assert by_target[one.to]["state"] == "delivered"
    assert (by_target[two.to]["state"], by_target[two.to]["error"]) == ("failed", "twilio 30003: undelivered")
    assert alert["state"] == "delivered"
    tampered = one.status_callback.replace(one.status_callback.rpartition("=")[2], "someone-else")
    from tests.support.twilio_fake import post_signed

    assert (await post_signed(tampered, {"MessageStatus": "delivered"}, signature="AAAA"))[0] == 403


async def test_sms_to_one_phone_in_a_surge_go_out_bundled(setup: Site) -> None:
    setup.broker.kill()
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
    codes = []
    for n in range(4):
        _, accepted = await setup.relay.post_report(report(f"surge-{n}"))
        codes.append(accepted["short_code"])
    to_one = await setup.twilio.wait_for(2, to=DESK1_PHONE)
    assert codes[0] in to_one[0].body  # the first goes at once
    bodies = [m.body for m in to_one]
    assert all(code in bodies[1] for code in codes[1:]), bodies  # the rest, bundled in one SMS
    assert len(to_one[1].body) <= 134


async def test_stop_and_start_replies_switch_sms_off_and_on(setup: Site) -> None:
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE2, "STOP")
    assert status == 200 and "остановлена" in twiml
    accepted = await _failover_alert_one(setup, "after-stop")
    alert = await setup.relay.alert(accepted["alert_id"])
    stopped = next(d for d in _deliveries(alert, "sms") if d["target"] == DESK1_PHONE2)
    assert stopped["state"] == "failed" and "STOP" in stopped["error"]
    assert [m.to for m in setup.twilio.messages] == [DESK1_PHONE]
    status, twiml = await TwilioFake.inbound(setup.public_url, DESK1_PHONE2, "start")
    assert "возобновлена" in twiml


async def _failover_alert_one(setup: Site, report_id: str) -> dict[str, Any]:
    setup.broker.kill()
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
    _, accepted = await setup.relay.post_report(report(report_id))
    await setup.twilio.wait_for(1)
    await setup.smtp.wait_for(1)
    return accepted


async def test_a_dead_sms_provider_shows_as_a_sick_channel(setup: Site) -> None:
    setup.twilio.faults += [Fault(503)] * 40
    await _failover_alert_none(setup, "sick-sms")
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="sms"}', 0), timeout=10,
                     what="sms channel down")
    status, ready = await setup.relay.get("/readyz", token=None)
    assert status == 200  # e-mail is still up: the relay can still warn someone
    assert ready["channels"]["sms"]["state"] == "down"
    assert "circuit open" in ready["channels"]["sms"]["detail"]


async def _failover_alert_none(setup: Site, report_id: str) -> dict[str, Any]:
    setup.broker.kill()
    await eventually(lambda: _metric_is(setup.relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
    _, accepted = await setup.relay.post_report(report(report_id))
    return dict(accepted)


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339).timestamp()


@pytest.mark.parametrize("password", ["smtp-secret-pass", "wrong-password"], ids=["login", "bad-login"])
async def test_email_over_starttls_with_a_login(broker: Mosquitto, twilio: TwilioFake, tmp_path: Path,
                                               password: str) -> None:
    server = SmtpServer(tls_dir=tmp_path)
    server.start()
    try:
        cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=server.port,
                           twilio_url=twilio.base_url)
        cfg["email"] |= {"starttls": True, "username": "relay", "password": password, "ca_file": str(server.ca_file)}
        async with running_relay(cfg) as relay:
            setup = Site(relay, broker, server, twilio)
            accepted = await _failover_alert(setup, f"tls-{password}")
            if password == "smtp-secret-pass":
                mail = (await server.wait_for(1))[0]
                assert accepted["short_code"] in mail.message["Subject"]
                return

            async def refused() -> dict[str, Any] | None:
                found = _deliveries(await relay.alert(accepted["alert_id"]), "email")
                return found[0] if found and found[0]["state"] == "failed" else None

            failed = await eventually(refused, what="e-mail refused for the login")
            assert "login refused" in failed["error"]
            assert password not in (await relay.metrics())
    finally:
        server.stop()


async def test_a_restart_resumes_the_escalation_from_its_stored_due_times(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, ack_timeout_s=0.5, repeat_s=2.0)
    async with running_relay(cfg) as relay, Console(broker.port, "airfield-1") as console:
        _, accepted = await relay.post_report(report("survives-restart"))
        await console.next_alert()
        first = (await twilio.wait_for(1, to=DESK1_PHONE))[0]
    async with running_relay(cfg):  # stopped and started again between the first round and the repeat
        second = (await twilio.wait_for(2, to=DESK1_PHONE, timeout=6))[1]
    assert accepted["short_code"] in second.body
    assert 1.8 <= second.at - first.at <= 2.8  # the stored repeat time, not a timer started over at the restart
