"""Calls as a backup, through the relay: at `voice_after_s` each desk's first number is called (the real `twilio`
client against the Twilio-shaped server, which fetches nothing and "speaks" the inline TwiML into a transcript), the
alert read in Russian with its code spelled, key 1 acknowledges (channel `voice`, once whatever Twilio repeats), a
busy or unanswered number passes the call to the desk's next one at once, a forged signature is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.voice import spell_code
from tests.support.broker import Mosquitto
from tests.support.relay import RunningRelay, report, running_relay, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import FROM_NUMBER, TwilioFake, post_signed
from tests.support.wait import eventually

DESK1_VOICE, DESK1_VOICE2 = "+79005550001", "+79005550002"


@pytest.fixture
async def relay(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
                ) -> AsyncIterator[RunningRelay]:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, ack_timeout_s=0.5, repeat_s=60, voice_after_s=1.0)
    cfg["voice"] = {"enabled": True, "from_number": FROM_NUMBER}
    cfg["desks"][0] = {**cfg["desks"][0], "voice": [DESK1_VOICE, DESK1_VOICE2]}
    async with running_relay(cfg) as running:
        yield running


async def test_an_unacknowledged_alert_calls_the_desk_and_key_1_acknowledges_it_once(
    relay: RunningRelay, twilio: TwilioFake
) -> None:
    status, accepted = await relay.post_report(report("call-1"))
    assert status == 201
    call = (await twilio.wait_for_calls(1, timeout=10, to=DESK1_VOICE))[0]
    assert not [c for c in twilio.phone_calls if c.to == DESK1_VOICE2]  # one call per desk at a time
    await twilio.answer(call)
    heard = " ".join(call.transcript)
    assert spell_code(accepted["short_code"]) in heard and "Беспилотник" in heard
    assert heard.count(spell_code(accepted["short_code"])) == 2  # read twice
    assert "нажмите 1" in heard.lower()

    await twilio.press(call, "7")  # a wrong key: read again, nothing acknowledged
    assert (await relay.alert(accepted["alert_id"]))["state"] != "acknowledged"
    pressed = await twilio.press(call, "1")
    assert pressed.status == 200

    async def acked() -> bool:
        return bool((await relay.alert(accepted["alert_id"]))["state"] == "acknowledged")

    await eventually(acked, timeout=10, what="the ack by key 1")
    alert = await relay.alert(accepted["alert_id"])
    assert alert["ack"]["channel"] == "voice" and alert["ack"]["by"] == DESK1_VOICE
    again = await twilio.repost(call, index=-2)  # Twilio retries the key's webhook: still one ack
    assert again.status == 200
    _, history = await relay.get(f"/api/v1/alerts/{accepted['alert_id']}/history")
    kinds = [e["kind"] for e in history["events"]]
    assert kinds.count("acknowledged") == 1 and "duplicate_ack" not in kinds


async def test_a_busy_number_passes_the_call_to_the_desks_next_number_at_once(
    relay: RunningRelay, twilio: TwilioFake
) -> None:
    status, accepted = await relay.post_report(report("call-2"))
    assert status == 201
    first = (await twilio.wait_for_calls(1, timeout=10, to=DESK1_VOICE))[0]
    await twilio.ring_out(first, "busy")
    second = (await twilio.wait_for_calls(1, timeout=10, to=DESK1_VOICE2))[0]
    assert second.at - first.at < 5
    await twilio.answer(second)
    await twilio.press(second, "1")

    async def acked() -> bool:
        return bool((await relay.alert(accepted["alert_id"]))["state"] == "acknowledged")

    await eventually(acked, timeout=10, what="the ack from the second number")
    alert = await relay.alert(accepted["alert_id"])
    calls = {d["target"]: d for d in alert["deliveries"] if d["channel"] == "voice"}
    assert calls[DESK1_VOICE]["state"] == "failed" and "busy" in (calls[DESK1_VOICE]["error"] or "")


async def test_a_machine_hears_the_alert_but_cannot_acknowledge_and_a_forged_key_is_refused(
    relay: RunningRelay, twilio: TwilioFake
) -> None:
    status, accepted = await relay.post_report(report("call-3"))
    assert status == 201
    call = (await twilio.wait_for_calls(1, timeout=10, to=DESK1_VOICE))[0]
    await twilio.answer(call, by="machine_end_beep")
    assert any(spell_code(accepted["short_code"]) in said for said in call.transcript)
    if call.gather_action:
        await twilio.press(call, "1")
    forged, _ = await post_signed(call.gather_action or f"{relay.url}/webhooks/twilio/voice/gather?key=x",
                                  {"CallSid": "CA" + "9" * 32, "Digits": "1", "To": DESK1_VOICE},
                                  signature="bm90IGEgc2lnbmF0dXJl")
    assert forged == 403
    assert (await relay.alert(accepted["alert_id"]))["state"] != "acknowledged"
    # a mailbox is no person: the desk's next number is called at once, and the first call says why it failed
    second = (await twilio.wait_for_calls(1, timeout=10, to=DESK1_VOICE2))[0]
    assert second.at - call.at < 5
    calls = {d["target"]: d for d in (await relay.alert(accepted["alert_id"]))["deliveries"] if d["channel"] == "voice"}
    assert calls[DESK1_VOICE]["state"] == "failed" and "machine" in (calls[DESK1_VOICE]["error"] or "")


async def test_test_channels_places_a_marked_test_call_to_every_number(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    from relay.domain.config import Settings
    from relay.operations.channel_test import run_channel_test

    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url)
    cfg["voice"] = {"enabled": True, "from_number": FROM_NUMBER}
    cfg["desks"][0] = {**cfg["desks"][0], "voice": [DESK1_VOICE, DESK1_VOICE2]}

    async def far_end() -> None:
        # no daemon runs here to take the status callbacks: the phones' fate is set on the server, which is what
        # the command reads back
        placed = {c.to: c for c in await twilio.wait_for_calls(2, timeout=10)}
        placed[DESK1_VOICE].answered_by, placed[DESK1_VOICE].status = "human", "in-progress"
        placed[DESK1_VOICE2].status = "busy"

    async with asyncio.TaskGroup() as tg:
        test = tg.create_task(run_channel_test(Settings(**cfg), wait_s=5))
        tg.create_task(far_end())
    calls = {r.target: r for r in test.result() if r.channel == "voice"}
    assert set(calls) == {DESK1_VOICE, DESK1_VOICE2} and all(r.accepted for r in calls.values()), calls
    assert calls[DESK1_VOICE].delivered is True and "answered by human" in calls[DESK1_VOICE].detail
    assert calls[DESK1_VOICE2].delivered is False and calls[DESK1_VOICE2].detail.endswith("busy")
    assert all("ТЕСТ" in call.twiml for call in twilio.phone_calls)  # what the phones read out


async def test_test_channels_says_no_when_a_machine_answers_the_test_call(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    from relay.domain.config import Settings
    from relay.operations.channel_test import run_channel_test

    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url)
    cfg["voice"] = {"enabled": True, "from_number": FROM_NUMBER}
    cfg["desks"][0] = {**cfg["desks"][0], "voice": [DESK1_VOICE]}

    async def far_end() -> None:
        (call,) = await twilio.wait_for_calls(1, timeout=10)
        # picked up: in progress at once, the background detection's verdict only later
        call.status = "in-progress"
        asked = len(twilio.call_fetches)
        await eventually(lambda: len(twilio.call_fetches) > asked, what="the command seeing it in progress")
        call.answered_by = "machine_end_beep"

    async with asyncio.TaskGroup() as tg:
        test = tg.create_task(run_channel_test(Settings(**cfg), wait_s=5))
        tg.create_task(far_end())
    (call,) = [r for r in test.result() if r.channel == "voice"]
    assert call.accepted and call.delivered is False and "machine_end_beep" in call.detail
