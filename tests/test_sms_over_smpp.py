"""The relay with `sms.provider = "smpp"`: its SMS go to an SMSC over SMPP (the simulator in tests/support/smsc.py on a
free port) exactly as they go to Twilio: the same texts, receipts into the delivery state, reply acks by code from
the desks' numbers only, and `relay test-channels` over the bind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.domain.config import Settings
from relay.operations.channel_test import run_channel_test
from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK1_PHONE,
    DESK1_PHONE2,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smsc import Smsc
from tests.support.smtp import SmtpServer
from tests.support.wait import eventually


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    server = Smsc(system_id="relay", password="secret")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def smpp_config(broker: Mosquitto, smtp: SmtpServer, smsc: Smsc, data: Path) -> dict[str, Any]:
    cfg = with_backups(settings_dict(broker.port, data), smtp_port=smtp.port, twilio_url="http://127.0.0.1:9",
                       ack_timeout_s=0.5, repeat_s=30)
    cfg["sms"] = {"enabled": True, "provider": "smpp", "bundle_window_s": 0.2, "timeout_s": 2,
                  "smpp": {"hosts": [f"127.0.0.1:{smsc.port}"], "system_id": "relay", "password": "secret",
                           "source_addr": "UAV", "enquire_link_s": 5}}
    return cfg


@pytest.fixture
async def relay(broker: Mosquitto, smtp: SmtpServer, smsc: Smsc, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    async with running_relay(smpp_config(broker, smtp, smsc, tmp_path / "data")) as running:
        await eventually(lambda: running.metric('relay_channel_up{channel="sms"}'), timeout=10,
                         what="bound to the SMSC")
        yield running


async def _sent_to(smsc: Smsc, phone: str, needle: str) -> str | None:
    return next((text for dest, text in smsc.texts() if dest == phone and needle in text), None)


async def test_a_backup_round_goes_to_the_smsc_in_russian_and_its_receipt_marks_it_delivered(
    relay: RunningRelay, smsc: Smsc
) -> None:
    status, accepted = await relay.post_report(report("smpp-1"))
    assert status == 201
    code = accepted["short_code"]
    text = await eventually(lambda: _sent_to(smsc, DESK1_PHONE, code), timeout=10, what="the SMS at the SMSC")
    assert "БПЛА" in text  # Cyrillic, as UCS-2, whole again at the other end
    await eventually(lambda: _sent_to(smsc, DESK1_PHONE2, code), timeout=10, what="the SMS to the desk's second phone")
    assert all(s.data_coding == 8 for s in smsc.submits)

    async def delivered() -> bool:  # the SMSC's receipt (deliver_sm, esm_class 0x04) reached the delivery
        alert = await relay.alert(accepted["alert_id"])
        return any(d["channel"] == "sms" and d["target"] == DESK1_PHONE and d["state"] == "delivered"
                   for d in alert["deliveries"])

    await eventually(delivered, timeout=10, what="the receipt recorded")


async def test_a_reply_with_the_code_from_a_desks_phone_acknowledges_and_is_answered(
    relay: RunningRelay, smsc: Smsc
) -> None:
    status, accepted = await relay.post_report(report("smpp-2"))
    assert status == 201
    code = accepted["short_code"]
    await eventually(lambda: _sent_to(smsc, DESK1_PHONE, code), timeout=10, what="the SMS at the SMSC")

    await smsc.deliver("+79990000000", "UAV", code)  # a number of no desk: refused, answered
    await eventually(lambda: _sent_to(smsc, "+79990000000", code), timeout=10, what="the refusal's answer")
    assert (await relay.alert(accepted["alert_id"]))["state"] != "acknowledged"

    await smsc.deliver(DESK1_PHONE2, "UAV", f"принято {code}")

    async def acked() -> bool:
        return bool((await relay.alert(accepted["alert_id"]))["state"] == "acknowledged")

    await eventually(acked, timeout=10, what="the ack by SMS reply over SMPP")
    alert = await relay.alert(accepted["alert_id"])
    assert alert["ack"]["channel"] == "sms"
    answer = await eventually(lambda: _sent_to(smsc, DESK1_PHONE2, "подтверждена"), timeout=10,
                              what="the answer to the reply")
    assert code in answer


async def test_test_channels_proves_sms_over_smpp_with_the_smscs_receipt(
    broker: Mosquitto, smtp: SmtpServer, smsc: Smsc, tmp_path: Path
) -> None:
    cfg = smpp_config(broker, smtp, smsc, tmp_path / "data")
    results = await run_channel_test(Settings(**cfg), wait_s=5)
    sms = [r for r in results if r.channel == "sms"]
    assert {r.target for r in sms} == {DESK1_PHONE, DESK1_PHONE2, "+79002220001"}
    assert all(r.accepted and r.delivered for r in sms), sms
    assert all("ТЕСТ" in text for _, text in smsc.texts())


async def test_a_bind_lost_in_the_middle_of_a_round_loses_no_sms(relay: RunningRelay, smsc: Smsc) -> None:
    """The SMSC hangs up on the first submit of a backup round, before its submit_sm_resp: the channel binds again
    and the relay sends that SMS again under its delivery id; every phone of the round gets the alert."""
    binds = len(smsc.binds)
    smsc.drop_after = 1
    status, accepted = await relay.post_report(report("smpp-drop"))
    assert status == 201
    code = accepted["short_code"]
    for phone in (DESK1_PHONE, DESK1_PHONE2):
        await eventually(lambda phone=phone: _sent_to(smsc, phone, code), timeout=20,  # type: ignore[misc]
                         what=f"the SMS to {phone} after the bind came back")
    assert len(smsc.binds) > binds  # it did bind again
    unanswered = [s for s in smsc.submits if s.message_id is None]
    assert len(unanswered) == 1  # the one the SMSC hung up on; sent again after the rebind, with an answer

    async def recorded() -> bool:
        alert = await relay.alert(accepted["alert_id"])
        return all(d["state"] in ("sent", "delivered") for d in alert["deliveries"]
                   if d["channel"] == "sms" and d["desk_id"] == "airfield-1")

    await eventually(recorded, timeout=20, what="every SMS of the round recorded as sent")


async def test_an_smsc_that_refuses_the_login_is_said_plainly_and_nothing_is_lost(
    broker: Mosquitto, smtp: SmtpServer, smsc: Smsc, tmp_path: Path
) -> None:
    smsc.password = "another"  # the operator changed it: every bind is refused
    cfg = smpp_config(broker, smtp, smsc, tmp_path / "data")
    async with running_relay(cfg) as running:
        await eventually(lambda: len(smsc.binds) >= 1, timeout=10, what="a bind attempt")
        assert await running.metric('relay_channel_up{channel="sms"}') == 0
        status, accepted = await running.post_report(report("smpp-refused"))
        assert status == 201  # the report is taken; the SMS waits for a bind, the e-mail goes meanwhile
        smsc.password = "secret"
        await eventually(lambda: _sent_to(smsc, DESK1_PHONE, accepted["short_code"]), timeout=30,
                         what="the SMS once the SMSC took the login again")


async def test_a_flood_of_hostile_replies_over_the_bind_acknowledges_nothing_and_stops_nothing(
    relay: RunningRelay, smsc: Smsc
) -> None:
    status, accepted = await relay.post_report(report("smpp-hostile"))
    assert status == 201
    code = accepted["short_code"]
    await eventually(lambda: _sent_to(smsc, DESK1_PHONE, code), timeout=10, what="the SMS at the SMSC")
    hostile = ["\u202e" + code[::-1], code + "\u0000\u0007", "\u2028\u2029", "x" * 2000, "ZZZZ " * 30]
    for n in range(60):
        await smsc.deliver(DESK1_PHONE, "UAV", hostile[n % len(hostile)], ref=n % 250)
    await smsc.deliver_raw(b"\x00\x00\x00\x10garbage-pdu!")  # the bind drops; the channel binds again
    assert (await relay.alert(accepted["alert_id"]))["state"] != "acknowledged"
    await eventually(lambda: relay.metric('relay_channel_up{channel="sms"}'), timeout=15, what="bound again")
    await smsc.deliver(DESK1_PHONE, "UAV", code)

    async def acked() -> bool:
        return bool((await relay.alert(accepted["alert_id"]))["state"] == "acknowledged")

    await eventually(acked, timeout=15, what="the real reply acknowledging after the flood")
    assert await relay.metric('relay_job_failures_total{kind="inbound",reason="unexpected"}') == 0


async def test_a_receipt_that_comes_after_a_restart_still_marks_its_sms_delivered(
    broker: Mosquitto, smtp: SmtpServer, smsc: Smsc, tmp_path: Path
) -> None:
    """The SMSC holds the receipt (a handset out of coverage) while the relay restarts, and gives the id in decimal
    where its submit_sm_resp gave hex: the id kept with the delivery still finds it."""
    smsc.receipts, smsc.receipt_id_style = "never", "dec"
    cfg = smpp_config(broker, smtp, smsc, tmp_path / "data")
    async with running_relay(cfg) as first:
        status, accepted = await first.post_report(report("smpp-restart"))
        assert status == 201
        code = accepted["short_code"]
        await eventually(lambda: _sent_to(smsc, DESK1_PHONE, code), timeout=10, what="the SMS at the SMSC")
        sent = next(s for s in smsc.submits if s.dest == DESK1_PHONE and s.message_id)

        async def recorded_sent() -> bool:
            alert = await first.alert(accepted["alert_id"])
            return any(d["target"] == DESK1_PHONE and d["state"] == "sent" for d in alert["deliveries"])

        await eventually(recorded_sent, timeout=10, what="the SMS recorded as sent")
    assert sent.message_id is not None
    async with running_relay(cfg) as second:
        await eventually(lambda: second.metric('relay_channel_up{channel="sms"}'), timeout=10,
                         what="bound to the SMSC again")
        await smsc.send_receipt(smsc.receipt_id(sent.message_id), dest=DESK1_PHONE)

        async def delivered() -> bool:
            alert = await second.alert(accepted["alert_id"])
            return any(d["target"] == DESK1_PHONE and d["state"] == "delivered" for d in alert["deliveries"])

        await eventually(delivered, timeout=10, what="the late receipt recorded")
        # a receipt for an id nobody sent is logged and changes nothing; the bind stays up
        await smsc.send_receipt("999999999", dest=DESK1_PHONE)
        await eventually(lambda: smsc.deliver_resps.count(0) >= 2, timeout=10, what="both receipts answered")
        assert await second.metric('relay_channel_up{channel="sms"}') == 1
