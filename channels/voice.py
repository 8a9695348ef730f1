"""Voice calls through Twilio Programmable Voice, with the official client in its asyncio form.

A call reads the rendered text (Russian) slowly, twice, and asks for one key inside a <Gather>; Twilio posts the
key to the Gather's action, signed. `1` acknowledges, anything else hears the message again. Status callbacks
say how the call ended (busy, no-answer, failed, ...) so the relay can try the desk's next number at once.
The relay sees `SendResult`, `VoiceSink.on_key` and `VoiceSink.on_call_status`; never TwiML or a Twilio field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

from channels.base import (
    ChannelHealth,
    FailureReason,
    HealthState,
    Outgoing,
    ReplySink,
    SendResult,
    Unauthenticated,
    WebhookAnswer,
    WebhookCall,
)
from channels.breaker import CircuitBreaker
from channels.sms import (
    SIGNATURE_HEADER,
    SignatureError,
    TwilioSession,
    check_signature,
    create_with_translation,
    created_or_failed,
)

log = logging.getLogger("channels.voice")

ACK_DIGIT = "1"
PROMPT = "Нажмите 1, чтобы подтвердить."
CONFIRMED = "Подтверждено. Спасибо."
# Twilio refuses a `Twiml` parameter longer than 4000 characters (error 21232 family): say so before sending.
MAX_TWIML_CHARS = 4000
# Errors about the number, not about Twilio: no retry helps. https://www.twilio.com/docs/api/errors
PERMANENT_CODES = {
    21211: "invalid 'To' number",
    21214: "'To' number cannot be reached",
    21215: "no permission to call this region",
    21216: "number blocked",
    21210: "'From' number not verified for calls",
    21212: "invalid 'From' number",
}
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
# Ended without anyone hearing it: the relay tries the desk's next number at once.
UNREACHED_STATUSES = frozenset({"busy", "no-answer", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    account_sid: str
    auth_token: str
    from_number: str
    api_base_url: str
    public_url: str  # the relay's, as Twilio reaches it: webhooks under {public_url}/webhooks/twilio/voice/
    timeout_s: float = 10.0  # each API call (the client's own timeout is ignored, twilio-python#925)
    repeat: int = 2  # how many times the text is read before the prompt
    machine_detection: bool = True
    # In the background: the message starts the moment the phone is picked up, and the verdict comes to the `amd`
    # hook a few seconds later (blocking detection leaves a person listening to silence until it has decided).
    async_amd: bool = True
    ring_timeout_s: int = 30  # how long Twilio lets it ring before `no-answer`
    voice: str = "Polly.Tatyana"  # a ru-RU voice; Twilio applies SSML <prosody> to Polly and Google voices only
    rate: str = "slow"  # <prosody rate>: x-slow, slow, medium or a percentage
    attempts: int = 3
    retry_budget_s: float = 10.0

    @property
    def webhook_base(self) -> str:
        return f"{self.public_url.rstrip('/')}/webhooks/twilio/voice"


@dataclass(frozen=True, slots=True)
class CallStatus:
    """How a call stands, as its status callback said (at most one final report per call reaches the sink)."""

    key: str  # the Outgoing.key the call was placed with
    call_sid: str
    to: str
    status: str  # Twilio's word: ringing, in-progress, completed, busy, no-answer, failed, canceled
    final: bool
    reached: bool | None  # someone or something took it (completed); False: busy/no-answer/failed/canceled
    answered_by: str  # human, machine_start, machine_end_beep, fax, unknown, or "" without detection
    error_code: str

    @property
    def machine(self) -> bool:
        return is_machine(self.answered_by)


@runtime_checkable
class VoiceSink(Protocol):
    """The relay's side of voice calls (the relay implements it; the channel only calls it)."""

    async def on_key(self, channel: str, key: str, sender: str, digit: str, call_sid: str) -> str | None:
        """A person pressed `digit` (always ACK_DIGIT: other keys only repeat the message) on the call placed for
        `key`. Called once per call_sid by this process; the relay still dedups on call_sid (another relay, a
        restart). Returns a sentence to say before hanging up, or None for the default confirmation."""
        ...

    async def on_call_status(self, channel: str, status: CallStatus) -> None:
        """A call's progress; busy, no-answer, failed and canceled mean: try the next number now."""
        ...


def is_machine(answered_by: str) -> bool:
    return answered_by.startswith("machine") or answered_by == "fax"


class Scripts:
    """What each recent call says, so a wrong key can hear it again. Bounded; a call placed by another relay
    (or before a restart) gets the prompt only."""

    def __init__(self, limit: int = 2048) -> None:
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def put(self, key: str, text: str) -> None:
        self._texts[key] = text
        self._texts.move_to_end(key)
        while len(self._texts) > self._limit:
            self._texts.popitem(last=False)

    def get(self, key: str) -> str | None:
        return self._texts.get(key)


class TwilioVoiceChannel:
    name = "voice"

    def __init__(self, settings: VoiceSettings, clock: Callable[[], float] | None = None,
                 scripts: Scripts | None = None) -> None:
        self._cfg = settings
        self.scripts = scripts or Scripts()  # share it with the VoiceReceiver
        self.health = ChannelHealth(self.name, clock=clock or time.time)
        self.health.set(HealthState.UP, "no call yet")
        self.breaker = CircuitBreaker(self.health, clock=clock or time.monotonic)
        self.twilio = TwilioSession(settings.account_sid, settings.auth_token, settings.api_base_url)

    async def run(self) -> None:
        await self.twilio.run()

    async def send(self, msg: Outgoing) -> SendResult:
        client = self.twilio.client
        if client is None:
            return SendResult.failed(FailureReason.UNREACHABLE, "voice channel not started")
        text = msg.body.decode(errors="replace")
        document = call_twiml(self._cfg, msg.key, text)
        if len(document) > MAX_TWIML_CHARS:
            return SendResult.failed(FailureReason.REJECTED, f"message too long for a call ({len(document)} "
                                     f"TwiML characters, Twilio takes {MAX_TWIML_CHARS})", permanent=True)
        if not self.breaker.allow():
            return SendResult.failed(FailureReason.UNREACHABLE, f"circuit open: {self.health.detail}")
        self.scripts.put(msg.key, text)
        return await created_or_failed(
            lambda: self._create(client, msg, document), attempts=self._cfg.attempts,
            budget_s=self._cfg.retry_budget_s, breaker=self.breaker, event="voice_retry", codes=PERMANENT_CODES,
            logger=log,
        )

    @property
    def detects_machines(self) -> bool:
        """Whether a call's AnsweredBy will say who took it."""
        return self._cfg.machine_detection

    async def fetch_status(self, sid: str) -> tuple[str, str]:
        """Twilio's current status of a placed call (queued, ringing, in-progress, completed, busy, no-answer,
        failed, canceled) and who answered it ("" when machine detection is off or nobody has yet)."""
        client = self.twilio.client
        if client is None:
            raise RuntimeError("voice channel not started")
        async with asyncio.timeout(self._cfg.timeout_s):
            call = await client.calls(sid).fetch_async()
        return str(call.status), str(call.answered_by or "")

    async def _create(self, client: Any, msg: Outgoing, document: str) -> str:
        extra: dict[str, Any] = {}
        if self._cfg.machine_detection:
            extra["machine_detection"] = "Enable"
            if self._cfg.async_amd:
                extra["async_amd"] = "true"
                extra["async_amd_status_callback"] = f"{self._cfg.webhook_base}/amd?{urlencode({'key': msg.key})}"
                extra["async_amd_status_callback_method"] = "POST"
        return await create_with_translation(
            lambda: client.calls.create_async(
                to=msg.target,
                from_=self._cfg.from_number,
                twiml=document,
                status_callback=f"{self._cfg.webhook_base}/status?{urlencode({'key': msg.key})}",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
                timeout=self._cfg.ring_timeout_s,
                **extra,
            ),
            self._cfg.timeout_s, "call",
        )

# ---- TwiML ---------------------------------------------------------------------------------------------------


def call_twiml(cfg: VoiceSettings, key: str, text: str, *, intro: str = "") -> str:
    """The text `cfg.repeat` times, slowly, then the prompt, all inside a one-key Gather (a key may interrupt it);
    no key: the call ends, unacknowledged, and the relay's next round calls again."""
    from twilio.twiml.voice_response import VoiceResponse

    response = VoiceResponse()
    gather = response.gather(num_digits=1, action=f"{cfg.webhook_base}/gather?{urlencode({'key': key})}",
                             method="POST", timeout=8)
    if intro:
        _say(gather, cfg, intro)
    for _ in range(max(1, cfg.repeat)):
        _say(gather, cfg, text)
        gather.pause(length=1)
    _say(gather, cfg, PROMPT)
    response.hangup()
    return str(response)


def answer_twiml(cfg: VoiceSettings, text: str) -> str:
    from twilio.twiml.voice_response import VoiceResponse

    response = VoiceResponse()
    _say(response, cfg, text)
    response.hangup()
    return str(response)


def _say(parent: Any, cfg: VoiceSettings, text: str) -> None:
    say = parent.say(voice=cfg.voice, language="ru-RU")
    say.prosody(text, rate=cfg.rate)


# ---- what Twilio tells us --------------------------------------------------------------------------------------


class VoiceReceiver:
    """Twilio's voice webhooks, each signed over the URL it called and every posted field: `gather` (the key a
    person pressed, ?key= names the call's Outgoing.key) and `status` (the call's progress). The relay mounts it
    as provider "twilio/voice", so the paths are /webhooks/twilio/voice/gather and /webhooks/twilio/voice/status.
    The sink is the VoiceSink given here, or the one the relay passes to `receive` if that implements VoiceSink."""

    hooks = frozenset({"gather", "status", "amd"})
    channel = "voice"

    def __init__(self, settings: VoiceSettings, scripts: Scripts | None = None, sink: VoiceSink | None = None,
                 memory: int = 4096) -> None:
        self._cfg = settings
        self._scripts = scripts or Scripts()
        self._sink = sink
        # Twilio retries a webhook it got no answer to and does not order them: an ack and a final status count
        # once per CallSid here (the relay dedups again on call_sid: other relays, restarts).
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._machines: OrderedDict[str, None] = OrderedDict()
        self._memory = memory

    def precheck(self, call_headers: Mapping[str, str]) -> None:
        if not call_headers.get(SIGNATURE_HEADER):
            raise Unauthenticated(f"no {SIGNATURE_HEADER} header")

    async def receive(self, call: WebhookCall, sink: ReplySink) -> WebhookAnswer:
        try:
            check_signature(self._cfg.auth_token, call.url, call.form, call.headers.get(SIGNATURE_HEADER))
        except SignatureError as exc:
            raise Unauthenticated(str(exc)) from None
        voice = sink if isinstance(sink, VoiceSink) else self._sink
        if voice is None:
            raise RuntimeError("VoiceReceiver has no VoiceSink")
        if call.hook == "gather":
            return await self._gather(call, voice)
        if call.hook == "status":
            await self._status(call, voice)
            return WebhookAnswer(204)
        if call.hook == "amd":
            await self._amd(call, voice)
            return WebhookAnswer(204)
        return WebhookAnswer(404, "no such voice webhook")

    async def _gather(self, call: WebhookCall, sink: VoiceSink) -> WebhookAnswer:
        key = _clean(call.query.get("key", ""))
        digit = _clean(call.form.get("Digits", ""))[:8]
        call_sid = _clean(call.form.get("CallSid", ""))
        answered_by = _clean(call.form.get("AnsweredBy", ""))
        if is_machine(answered_by):
            self._remember(self._machines, call_sid)
        if digit == ACK_DIGIT and key and call_sid and call_sid not in self._machines:
            said: str | None = None
            if call_sid not in self._acked:
                self._remember(self._acked, call_sid)
                said = await sink.on_key(self.channel, key, _clean(call.form.get("To", "")), digit, call_sid)
            return WebhookAnswer(200, answer_twiml(self._cfg, said or CONFIRMED), "text/xml")
        text = self._scripts.get(key) or ""
        document = call_twiml(self._cfg, key, text, intro="Повторяю.") if text else call_twiml_prompt(self._cfg, key)
        return WebhookAnswer(200, document, "text/xml")

    async def _amd(self, call: WebhookCall, sink: VoiceSink) -> None:
        """Background detection's verdict. A machine: the call ends for the relay here (the message still plays
        into the mailbox, and no key from it counts); a person or no verdict: the call goes on."""
        report = parse_call_status(call.query, {**call.form, "CallStatus": "in-progress"})
        if not report.machine or not report.call_sid or not report.key or report.call_sid in self._ended:
            return  # a person, no verdict, or a verdict about no call: the call goes on
        self._remember(self._machines, report.call_sid)
        self._remember(self._ended, report.call_sid)
        await sink.on_call_status(self.channel, replace(report, status="answered-by-machine", final=True,
                                                        reached=False))

    async def _status(self, call: WebhookCall, sink: VoiceSink) -> None:
        report = parse_call_status(call.query, call.form)
        if report.machine:
            self._remember(self._machines, report.call_sid)
        if report.call_sid in self._ended:
            return  # a final status was reported already: a retry, or a step that arrived late
        if report.final:
            self._remember(self._ended, report.call_sid)
        await sink.on_call_status(self.channel, report)

    def _remember(self, seen: OrderedDict[str, None], call_sid: str) -> None:
        seen[call_sid] = None
        while len(seen) > self._memory:
            seen.popitem(last=False)


def call_twiml_prompt(cfg: VoiceSettings, key: str) -> str:
    """A wrong key on a call whose text this process does not hold: the prompt again."""
    from twilio.twiml.voice_response import VoiceResponse

    response = VoiceResponse()
    gather = response.gather(num_digits=1, action=f"{cfg.webhook_base}/gather?{urlencode({'key': key})}",
                             method="POST", timeout=8)
    _say(gather, cfg, PROMPT)
    response.hangup()
    return str(response)


def parse_call_status(query: Mapping[str, str], form: Mapping[str, str]) -> CallStatus:
    status = _clean(form.get("CallStatus", ""))[:32] or "unknown"
    answered_by = _clean(form.get("AnsweredBy", ""))[:32]
    final = status in FINAL_STATUSES
    return CallStatus(
        key=_clean(query.get("key", "")),
        call_sid=_clean(form.get("CallSid", "")),
        to=_clean(form.get("To", "")),
        status=status,
        final=final,
        # a mailbox took it: no person heard it, so the desk's next number is called as for no answer
        reached=(status not in UNREACHED_STATUSES and not is_machine(answered_by)) if final else None,
        answered_by=answered_by,
        error_code=_clean(form.get("ErrorCode", ""))[:16],
    )


def _clean(value: str) -> str:
    """Twilio's fields are ASCII; anything else (controls, bidi marks) is dropped rather than carried on."""
    return "".join(ch for ch in value if " " < ch < "\x7f").strip()[:256]


# ---- speaking codes -----------------------------------------------------------------------------------------

_LATIN = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (
    "Альфа", "Браво", "Чарли", "Дельта", "Эхо", "Фокстрот", "Гольф", "Отель", "Индия", "Джульетта", "Кило", "Лима",
    "Майк", "Ноябрь", "Оскар", "Папа", "Квебек", "Ромео", "Сьерра", "Танго", "Юниформ", "Виктор", "Виски",
    "Икс-рэй", "Янки", "Зулу"), strict=True))
_DIGITS = dict(zip("0123456789", ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь",
                                   "девять"), strict=True))
_MARKS = {"-": "тире", "/": "дробь", ".": "точка"}


def spell_code(code: str) -> str:
    """A code read out sign by sign: Latin letters by the phonetic alphabet (Альфа, Браво, ...), digits as words,
    Cyrillic letters as they are; so a listener writes down exactly what is on the screen."""
    words = []
    for ch in code.strip():
        up = ch.upper()
        if up in _LATIN:
            words.append(_LATIN[up])
        elif ch in _DIGITS:
            words.append(_DIGITS[ch])
        elif ch in _MARKS:
            words.append(_MARKS[ch])
        elif ch.isalpha():
            words.append(up)
    return ", ".join(words)
