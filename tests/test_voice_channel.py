"""A dispatcher's phone rings when the alert must get through: the voice channel against the Twilio-shaped server,
with the real twilio client; its webhooks reach the VoiceReceiver through a small HTTP edge built like the relay's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from channels.base import FailureReason, Outgoing, Unauthenticated, WebhookCall
from channels.voice import (
    CallStatus,
    TwilioVoiceChannel,
    VoiceReceiver,
    VoiceSettings,
    spell_code,
)
from tests.support.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, Fault, TwilioFake, post_signed
from tests.support.wait import eventually

PHONE = "+79161234567"
TEXT = "Внимание. Беспилотник. Код Альфа, Браво, семь. Курс сто восемьдесят."


@dataclass
class Sink:
    """The relay's side, as small as the test needs: what it heard, in order."""

    keys: list[tuple[str, str, str, str]] = field(default_factory=list)  # key, sender, digit, call_sid
    statuses: list[CallStatus] = field(default_factory=list)

    async def on_key(self, channel: str, key: str, sender: str, digit: str, call_sid: str) -> str | None:
        assert channel == "voice"
        self.keys.append((key, sender, digit, call_sid))
        return None

    async def on_call_status(self, channel: str, status: CallStatus) -> None:
        self.statuses.append(status)

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        raise AssertionError("no free-text replies on voice")

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        raise AssertionError("voice reports through on_call_status")

    def finals(self) -> list[CallStatus]:
        return [s for s in self.statuses if s.final]


@dataclass
class Rig:
    twilio: TwilioFake
    channel: TwilioVoiceChannel
    sink: Sink
    public_url: str

    async def call(self, key: str = "delivery-1", text: str = TEXT, to: str = PHONE):  # type: ignore[no-untyped-def]
        result = await self.channel.send(Outgoing(key=key, target=to, body=text.encode()))
        assert result.ok, result
        (call,) = await self.twilio.wait_for_calls(1, to=to)
        assert call.sid == result.provider_ref
        return call


async def _edge(sink: Sink) -> tuple[web.AppRunner, str, dict[str, VoiceReceiver]]:
    """The relay's webhook edge in miniature: the public URL it signed, the form as text, Unauthenticated -> 403.
    The receiver is put in the returned box once the settings (which need the edge's URL) exist."""
    box: dict[str, VoiceReceiver] = {}
    base: dict[str, str] = {}

    async def handle(request: web.Request) -> web.Response:
        receiver = box["receiver"]
        try:
            receiver.precheck(request.headers)
            form = {k: str(v) for k, v in (await request.post()).items()}
            call = WebhookCall(request.match_info["hook"], f"{base['url']}{request.path_qs}", request.headers,
                               request.query, form)
            answer = await receiver.receive(call, sink)
        except Unauthenticated as exc:
            return web.Response(status=403, text=str(exc))
        if not answer.body:
            return web.Response(status=answer.status)
        return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type)

    app = web.Application()
    app.router.add_post("/webhooks/twilio/voice/{hook}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base["url"] = f"http://127.0.0.1:{port}"
    return runner, base["url"], box


@contextlib.asynccontextmanager
async def _rig(twilio: TwilioFake, *, machine_detection: bool = True, attempts: int = 3,
               async_amd: bool = True) -> AsyncIterator[Rig]:
    sink = Sink()
    runner, public_url, box = await _edge(sink)
    settings = VoiceSettings(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, twilio.base_url, public_url,
                             timeout_s=2.0, machine_detection=machine_detection, attempts=attempts,
                             retry_budget_s=2.0, async_amd=async_amd)
    channel = TwilioVoiceChannel(settings)
    box["receiver"] = VoiceReceiver(settings, channel.scripts)
    task = asyncio.create_task(channel.run())
    try:
        await eventually(lambda: channel.twilio.client is not None, what="voice channel started")
        yield Rig(twilio, channel, sink, public_url)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


@pytest.fixture
async def rig(twilio: TwilioFake) -> AsyncIterator[Rig]:
    async with _rig(twilio) as r:
        yield r


# ---- placing the call ------------------------------------------------------------------------------------------


async def test_a_call_is_placed_with_the_number_the_twiml_and_a_status_callback(rig: Rig) -> None:
    call = await rig.call("delivery-42")
    assert call.to == PHONE and call.from_ == FROM_NUMBER
    assert call.twiml and not call.url
    assert call.status_callback == f"{rig.public_url}/webhooks/twilio/voice/status?key=delivery-42"
    assert set(call.status_events) >= {"ringing", "answered", "completed"}
    assert call.machine_detection == "Enable"  # in the background: the message starts when the phone is picked up
    assert call.async_amd_callback == f"{rig.public_url}/webhooks/twilio/voice/amd?key=delivery-42"
    assert 'language="ru-RU"' in call.twiml and 'rate="slow"' in call.twiml


async def test_the_dispatcher_hears_the_alert_twice_then_the_prompt(rig: Rig) -> None:
    call = await rig.call("delivery-7")
    await rig.twilio.answer(call)
    assert call.transcript == [TEXT, TEXT, "Нажмите 1, чтобы подтвердить."]
    assert call.gather_action == f"{rig.public_url}/webhooks/twilio/voice/gather?key=delivery-7"
    assert [s.status for s in rig.sink.statuses] == ["ringing", "in-progress"]
    # the verdict came after the message had started, and a person's needs nothing done
    assert call.posts[-1].url == call.async_amd_callback and call.posts[-1].status == 204
    assert call.posts[-1].params["AnsweredBy"] == "human"


# ---- acknowledging by a key -----------------------------------------------------------------------------------


async def test_key_1_acknowledges_once_and_the_call_ends(rig: Rig) -> None:
    call = await rig.call("delivery-1")
    await rig.twilio.answer(call)
    answer = await rig.twilio.press(call, "1")
    assert answer.status == 200
    assert rig.sink.keys == [("delivery-1", PHONE, "1", call.sid)]
    assert call.hung_up and call.transcript[-1] == "Подтверждено. Спасибо."
    await rig.twilio.repost(call, index=-2)  # Twilio retries the Digits post: still one ack
    assert len(rig.sink.keys) == 1
    finals = rig.sink.finals()
    assert [(s.status, s.reached, s.key) for s in finals] == [("completed", True, "delivery-1")]


async def test_a_wrong_key_repeats_the_message_then_1_acknowledges(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call)
    await rig.twilio.press(call, "5")
    assert rig.sink.keys == []
    assert not call.hung_up and call.gather_action
    assert call.transcript[3:] == ["Повторяю.", TEXT, TEXT, "Нажмите 1, чтобы подтвердить."]
    await rig.twilio.press(call, "1")
    assert [k[2] for k in rig.sink.keys] == ["1"]


async def test_reordered_callbacks_count_once(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call)
    await rig.twilio.post_status(call, "completed")  # the end arrives before the key it followed
    await rig.twilio.press(call, "1")
    await rig.twilio.post_status(call, "in-progress")  # a late step after the end
    await rig.twilio.repost(call)
    assert len(rig.sink.keys) == 1
    assert [s.status for s in rig.sink.finals()] == ["completed"]
    assert rig.sink.statuses[-1].status == "completed"  # nothing reported after the end


# ---- nobody there --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed"])
async def test_an_unanswered_call_is_reported_at_once(rig: Rig, status: str) -> None:
    call = await rig.call("delivery-9")
    await rig.twilio.ring_out(call, status)
    finals = rig.sink.finals()
    assert [(s.key, s.status, s.reached, s.call_sid) for s in finals] == [("delivery-9", status, False, call.sid)]
    if status == "failed":
        assert finals[0].error_code == "32009"
    assert rig.sink.keys == []


async def test_an_answering_machine_hears_the_message_but_never_acknowledges(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call, by="machine_end_beep")
    assert call.transcript.count(TEXT) == 2
    # the verdict ends the call for the relay at once: not reached, so the desk's next number is called now,
    # not when the mailbox has finished recording
    verdict = rig.sink.statuses[-1]
    assert verdict.machine and verdict.final and verdict.reached is False
    await rig.twilio.press(call, "1")  # a tone on the tape is no person
    assert rig.sink.keys == []
    await rig.twilio.post_status(call, "completed", CallDuration="40")  # the mailbox hangs up: told once only
    assert [s for s in rig.sink.statuses if s.final] == [verdict]


async def test_with_blocking_detection_a_machine_is_known_before_the_message_and_never_counts(
    twilio: TwilioFake,
) -> None:
    async with _rig(twilio, async_amd=False) as rig:
        call = await rig.call()
        assert call.machine_detection == "Enable" and call.async_amd_callback == ""
        await rig.twilio.answer(call, by="machine_start")
        assert rig.sink.statuses[-1].answered_by == "machine_start"  # on the status callbacks themselves
        await rig.twilio.press(call, "1")
        await rig.twilio.post_status(call, "completed", CallDuration="40")
        final = rig.sink.statuses[-1]
        assert final.final and final.machine and final.reached is False and rig.sink.keys == []


# ---- what a forger or a broken provider sends -----------------------------------------------------------------


async def test_a_forged_signature_is_refused(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call)
    params = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "From": FROM_NUMBER, "To": PHONE, "Digits": "1"}
    for signature in ("forged", None):
        status, _ = await post_signed(call.gather_action, params, signature=signature)
        assert status == 403
    # signed by Twilio over one key, posted for another: the URL is part of what is signed
    receiver = VoiceReceiver(rig.channel._cfg)
    from twilio.request_validator import RequestValidator

    genuine = RequestValidator(AUTH_TOKEN).compute_signature(call.gather_action, params)
    with pytest.raises(Unauthenticated):
        await receiver.receive(WebhookCall("gather", call.gather_action.replace("delivery-1", "delivery-2"),
                                           {"X-Twilio-Signature": genuine}, {"key": "delivery-2"}, params), rig.sink)
    assert rig.sink.keys == []


async def test_a_forged_or_garbled_machine_verdict_ends_no_call(rig: Rig) -> None:
    """The `amd` hook decides whether the desk's next number is called: only Twilio, about a real call, may."""
    call = await rig.call()
    await rig.twilio.answer(call, by="human")
    verdict = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "AnsweredBy": "machine_end_beep"}
    for signature in ("forged", None):
        status, _ = await post_signed(call.async_amd_callback, verdict, signature=signature)
        assert status == 403
    for garbled in ({"CallSid": call.sid, "AnsweredBy": "hu\x00man\u2028\u202e"}, {"CallSid": call.sid},
                    {"CallSid": call.sid, "AnsweredBy": "x" * 10_000}, {"AnsweredBy": "machine_start"},
                    {"CallSid": "\x00", "AnsweredBy": "fax"}):
        status, _ = await post_signed(call.async_amd_callback, garbled)
        assert status == 204
    assert not any(s.final for s in rig.sink.statuses)  # still a person's call: nothing ended, nothing moved on
    await rig.twilio.press(call, "1")
    assert len(rig.sink.keys) == 1


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault(500), FailureReason.UNREACHABLE),
    (Fault(429, 20429), FailureReason.RATE_LIMITED),
    (Fault(200, body="<html>proxy</html>"), FailureReason.UNREACHABLE),
    (Fault(401, 20003), FailureReason.AUTH),
    (Fault(400, 21215), FailureReason.REJECTED),
])
async def test_the_api_failing_is_a_failed_send_not_a_crash(twilio: TwilioFake, fault: Fault,
                                                            reason: FailureReason) -> None:
    async with _rig(twilio, attempts=1) as rig:
        twilio.faults.append(fault)
        result = await rig.channel.send(Outgoing(key="k", target=PHONE, body=TEXT.encode()))
        assert not result.ok and result.reason is reason, result
        assert twilio.phone_calls == []
        twilio.faults.clear()
        assert (await rig.channel.send(Outgoing(key="k2", target=PHONE, body=TEXT.encode()))).ok or \
            reason is FailureReason.AUTH  # the breaker may hold off after a refused credential


async def test_unicode_controls_in_posted_fields_do_no_harm(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call)
    nasty = "\u202e1\x00\x1b[2J\u2066"
    params = {"CallSid": call.sid + "\u202e", "AccountSid": ACCOUNT_SID, "From": FROM_NUMBER, "To": PHONE + nasty,
              "Digits": nasty, "AnsweredBy": "\x00human"}
    status, text = await post_signed(call.gather_action, params)
    assert status == 200 and ("<Gather" in text or "<Hangup" in text)
    status, _ = await post_signed(call.status_callback, {**params, "CallStatus": "busy\u202e\x00"})
    assert status == 204
    for s in rig.sink.statuses:
        assert s.status.isprintable() and s.call_sid.isprintable()
    assert all(k[1].isprintable() for k in rig.sink.keys)


async def test_a_call_before_the_channel_runs_fails_cleanly() -> None:
    settings = VoiceSettings(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, "http://127.0.0.1:9", "http://127.0.0.1:9")
    result = await TwilioVoiceChannel(settings).send(Outgoing(key="k", target=PHONE, body=b"x"))
    assert not result.ok and result.reason is FailureReason.UNREACHABLE


def test_codes_are_spelled_sign_by_sign() -> None:
    assert spell_code("AB-7") == "Альфа, Браво, тире, семь"
    assert spell_code("жz09") == "Ж, Зулу, ноль, девять"


async def test_a_machine_known_from_the_status_callback_cannot_ack_without_answered_by(rig: Rig) -> None:
    call = await rig.call()
    await rig.twilio.answer(call, by="machine_start")
    params = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "From": FROM_NUMBER, "To": PHONE, "Digits": "1"}
    status, _ = await post_signed(call.gather_action, params)  # this post does not repeat AnsweredBy
    assert status == 200 and rig.sink.keys == []


async def test_without_machine_detection_no_amd_is_asked_for(twilio: TwilioFake) -> None:
    async with _rig(twilio, machine_detection=False) as rig:
        call = await rig.call()
        assert call.machine_detection == ""
        await rig.twilio.answer(call)
        await rig.twilio.press(call, "1")
        assert len(rig.sink.keys) == 1 and rig.sink.statuses[-1].answered_by == ""


async def test_the_relay_may_choose_what_is_said_after_the_ack(rig: Rig) -> None:
    async def already(channel: str, key: str, sender: str, digit: str, call_sid: str) -> str | None:
        return "Уже подтверждено другим диспетчером."

    rig.sink.on_key = already  # type: ignore[method-assign]
    call = await rig.call()
    await rig.twilio.answer(call)
    await rig.twilio.press(call, "1")
    assert call.transcript[-1] == "Уже подтверждено другим диспетчером." and call.hung_up


async def test_the_fake_fetches_twiml_from_a_url_signed_like_twilio(twilio: TwilioFake) -> None:
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.request_validator import RequestValidator
    from twilio.rest import Client

    fetched: list[dict[str, str]] = []

    async def twiml(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not RequestValidator(AUTH_TOKEN).validate(str(request.url), form,
                                                     request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        fetched.append(form)
        return web.Response(text="<Response><Say>Привет</Say><Hangup/></Response>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/twiml", twiml)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http = AsyncTwilioHttpClient()
    try:
        client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
        client.api.base_url = twilio.base_url
        created = await client.calls.create_async(to=PHONE, from_=FROM_NUMBER, url=f"http://127.0.0.1:{port}/twiml")
        assert created.sid.startswith("CA")
        (call,) = await twilio.wait_for_calls(1)
        await twilio.answer(call)
        assert call.transcript == ["Привет"] and call.hung_up
        assert fetched[0]["CallSid"] == call.sid and fetched[0]["To"] == PHONE
    finally:
        await http.close()
        await runner.cleanup()
