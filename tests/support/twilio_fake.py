"""The tests use the demo's Twilio-shaped server (relay/demo/twilio_sink.py), plus waiting for what it received,
plus voice calls placed the way Twilio places them (modelled on GoAlert's devtools/mocktwilio).

A call is created with `POST /2010-04-01/Accounts/{sid}/Calls.json`; the test then plays the far end: `answer`
(a human or a machine) fetches the TwiML (from `Url`, POSTed and signed, or the inline `Twiml`) and "speaks" it
into `call.transcript`; `press` posts `Digits` to the Gather's action, signed, and follows the TwiML it gets back;
`ring_out` ends a call unanswered (busy, no-answer, failed). Status callbacks are signed too. Every webhook post
can be repeated (`repost`) or sent out of order (`post_status`) to play Twilio's retries and reordering.
"""

from __future__ import annotations

import itertools
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from relay.operations.demo.twilio_sink import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    Fault,
    Sms,
    TwilioSink,
    _error,
    post_signed,
)
from tests.support.wait import eventually

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "FROM_NUMBER", "Fault", "Sms", "TwilioFake", "VoiceCall", "Webhook",
           "post_signed"]


@dataclass
class Webhook:
    """One request the fake made to the relay, and what it got back."""

    url: str
    params: dict[str, str]
    status: int
    answer: str


@dataclass
class VoiceCall:
    sid: str
    to: str
    from_: str
    url: str
    twiml: str
    status_callback: str
    status_events: list[str]
    machine_detection: str
    at: float
    async_amd_callback: str = ""  # AsyncAmd=true: where the verdict is posted, after the call has started
    status: str = "queued"
    answered_by: str = ""
    transcript: list[str] = field(default_factory=list)  # every <Say> heard, in order
    gather_action: str = ""  # the action of the Gather the call waits in ("" when none)
    hung_up: bool = False
    posts: list[Webhook] = field(default_factory=list)  # every webhook about this call, in order
    sequence: itertools.count[int] = field(default_factory=itertools.count)


class TwilioFake(TwilioSink):
    phone_calls: list[VoiceCall]

    async def start(self) -> None:
        self.phone_calls = []
        self.call_fetches: list[str] = []  # every GET of a call's status, by sid
        self._call_sids = itertools.count(1)
        await super().start()

    def _routes(self, app: web.Application) -> None:
        super()._routes(app)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._create_call)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Calls/{call}.json", self._fetch_call)

    async def wait_for(self, count: int, timeout: float = 5.0, to: str | None = None) -> list[Sms]:
        def got() -> list[Sms] | None:
            mine = [m for m in self.messages if to is None or m.to == to]
            return mine if len(mine) >= count else None

        return await eventually(got, timeout=timeout, what=f"{count} SMS at the Twilio-shaped server")

    async def wait_for_calls(self, count: int, timeout: float = 5.0, to: str | None = None) -> list[VoiceCall]:
        def got() -> list[VoiceCall] | None:
            mine = [c for c in self.phone_calls if to is None or c.to == to]
            return mine if len(mine) >= count else None

        return await eventually(got, timeout=timeout, what=f"{count} calls at the Twilio-shaped server")

    # ---- the REST side ------------------------------------------------------------------------------------

    async def _create_call(self, request: web.Request) -> web.Response:
        self.calls += 1
        if not self._authorized(request) or request.match_info["sid"] != ACCOUNT_SID:
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        to = str(form.get("To", ""))
        self.tried.append(to)
        if self.faults:
            fault = self.faults.pop(0)
            if fault.body is not None:
                return web.Response(text=fault.body, status=fault.status, content_type="text/html")
            return _error(fault.status, fault.code or fault.status, "scripted fault")
        if to in self.invalid_numbers:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not to or not form.get("From") or not (form.get("Url") or form.get("Twiml")):
            return _error(400, 21205, "A 'To', a 'From' and a 'Url' or 'Twiml' are required.")
        call = VoiceCall(
            sid=f"CA{next(self._call_sids):032d}", to=to, from_=str(form["From"]), url=str(form.get("Url", "")),
            twiml=str(form.get("Twiml", "")), status_callback=str(form.get("StatusCallback", "")),
            status_events=[str(v) for v in form.getall("StatusCallbackEvent", [])],
            machine_detection=str(form.get("MachineDetection", "")), at=time.time(),
            async_amd_callback=str(form.get("AsyncAmdStatusCallback", "")) if form.get("AsyncAmd") == "true" else "",
        )
        self.phone_calls.append(call)
        return web.json_response(self._call_json(call), status=201)

    async def _fetch_call(self, request: web.Request) -> web.Response:
        if not self._authorized(request) or request.match_info["sid"] != ACCOUNT_SID:
            return _error(401, 20003, "Authenticate")
        call = next((c for c in self.phone_calls if c.sid == request.match_info["call"]), None)
        self.call_fetches.append(request.match_info["call"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._call_json(call))

    @staticmethod
    def _call_json(call: VoiceCall) -> dict[str, Any]:
        return {"sid": call.sid, "account_sid": ACCOUNT_SID, "to": call.to, "from": call.from_,
                "status": call.status, "answered_by": call.answered_by or None,
                "direction": "outbound-api", "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call.sid}.json"}

    # ---- the far end, played by the test ------------------------------------------------------------------

    async def answer(self, call: VoiceCall, by: str = "human") -> None:
        """The phone rings and is picked up (`by`: human, machine_start, machine_end_beep, fax); the TwiML is
        fetched and spoken. Blocking detection: its verdict (AnsweredBy) is known before the TwiML runs and comes
        with every later webhook; in the background (AsyncAmd): the TwiML runs at once and the verdict is posted
        to the AsyncAmdStatusCallback after it."""
        await self.post_status(call, "ringing")
        if call.machine_detection and not call.async_amd_callback:
            call.answered_by = by
        await self.post_status(call, "in-progress")
        if call.url:
            webhook = await self._post(call, call.url, self._params(call, CallStatus="in-progress"))
            self._speak(call, webhook.answer)
        else:
            self._speak(call, call.twiml)
        if call.machine_detection and call.async_amd_callback:
            call.answered_by = by
            await self._post(call, call.async_amd_callback, {
                "CallSid": call.sid, "AccountSid": ACCOUNT_SID, "AnsweredBy": by, "MachineDetectionDuration": "2400"})

    async def press(self, call: VoiceCall, digits: str) -> Webhook:
        """Keys pressed while the call waits in a Gather: posted to its action; the answer is spoken in turn."""
        assert call.gather_action, "the call waits in no Gather"
        webhook = await self._post(call, call.gather_action, self._params(call, CallStatus="in-progress",
                                                                         Digits=digits))
        self._speak(call, webhook.answer)
        if call.hung_up:
            await self.post_status(call, "completed", CallDuration="20")
        return webhook

    async def ring_out(self, call: VoiceCall, status: str) -> None:
        """The call ends without an answer: busy, no-answer or failed (failed never rings)."""
        if status != "failed":
            await self.post_status(call, "ringing")
        await self.post_status(call, status, **({"ErrorCode": "32009"} if status == "failed" else {}))

    async def post_status(self, call: VoiceCall, status: str, **extra: str) -> Webhook:
        call.status = status
        return await self._post(call, call.status_callback, self._params(
            call, CallStatus=status, SequenceNumber=str(next(call.sequence)), Timestamp=time.ctime(), **extra))

    async def repost(self, call: VoiceCall, index: int = -1) -> Webhook:
        """A webhook sent again, exactly as before (Twilio retrying it)."""
        before = call.posts[index]
        return await self._post(call, before.url, dict(before.params))

    def _params(self, call: VoiceCall, **extra: str) -> dict[str, str]:
        params = {"CallSid": call.sid, "AccountSid": ACCOUNT_SID, "From": call.from_, "To": call.to,
                  "Direction": "outbound-api", "ApiVersion": "2010-04-01", "Caller": call.from_, "Called": call.to}
        if call.answered_by:
            params["AnsweredBy"] = call.answered_by
        return {**params, **extra}

    async def _post(self, call: VoiceCall, url: str, params: dict[str, str]) -> Webhook:
        status, text = await post_signed(url, params) if url else (0, "")
        webhook = Webhook(url, params, status, text)
        call.posts.append(webhook)
        return webhook

    @staticmethod
    def _speak(call: VoiceCall, twiml: str) -> None:
        """What a phone would hear: each Say's text; a Gather leaves the call waiting for keys."""
        call.gather_action = ""
        if not twiml:
            return
        root = ET.fromstring(twiml)  # the TwiML comes from the code under test, on loopback
        for element in root:
            if element.tag == "Say":
                call.transcript.append("".join(element.itertext()))
            elif element.tag == "Gather":
                call.transcript.extend("".join(say.itertext()) for say in element.iter("Say"))
                call.gather_action = element.get("action", "")
                return  # waits here for a key
            elif element.tag == "Hangup":
                call.hung_up = True
                return
