"""SMS through Twilio's REST API, with the official client in its asyncio form.

Everything Twilio-specific is here: the send and how its errors are sorted, the signature on its webhooks, and
what its status callbacks and inbound messages mean. The relay sees `SendResult`, `StatusReport`, `InboundSms`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

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
from channels.retry import Transient, with_retries

log = logging.getLogger("channels.sms")

# Errors that are about the message or the number, not about Twilio: no retry will help, and they say
# nothing about the provider's health. https://www.twilio.com/docs/api/errors
PERMANENT_CODES = {
    21211: "invalid 'To' number",
    21408: "no permission to send to this region",
    21610: "recipient replied STOP (opted out)",
    21612: "cannot route to this number",
    21614: "'To' is not a mobile number",
    21606: "'From' number cannot send SMS",
    21212: "invalid 'From' number",
    21617: "body too long",
}
# Twilio drops a message it could not hand over within ValidityPeriod; it accepts 1..36000 s.
MAX_VALIDITY_S = 36000


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    account_sid: str
    auth_token: str
    from_number: str
    api_base_url: str
    status_callback_url: str  # {public_url}/webhooks/twilio/status
    validity_period_s: int = 60
    timeout_s: float = 10.0  # each API call; the client's own timeout argument is ignored (twilio-python#925)
    attempts: int = 4
    retry_budget_s: float = 15.0


class Refused(Exception):
    """Twilio answered 4xx: about this message or number, or the credentials; never retried."""

    def __init__(self, error: Any) -> None:
        super().__init__(str(error))
        self.error = error


class TwilioSmsChannel:
    name = "sms"

    def __init__(self, settings: TwilioSettings, clock: Callable[[], float] | None = None) -> None:
        """`clock`: the relay's (seconds since the epoch), so health times agree with what it stores."""
        self._cfg = settings
        self.health = ChannelHealth(self.name, clock=clock or time.time)
        self.health.set(HealthState.UP, "no send yet")
        self.breaker = CircuitBreaker(self.health, clock=clock or time.monotonic)
        self.twilio = TwilioSession(settings.account_sid, settings.auth_token, settings.api_base_url)

    async def run(self) -> None:
        await self.twilio.run()

    async def send(self, msg: Outgoing) -> SendResult:
        client = self.twilio.client
        if client is None:
            return SendResult.failed(FailureReason.UNREACHABLE, "SMS channel not started")
        if not self.breaker.allow():
            return SendResult.failed(FailureReason.UNREACHABLE, f"circuit open: {self.health.detail}")
        callback = f"{self._cfg.status_callback_url}?{urlencode({'key': msg.key})}"
        return await created_or_failed(
            lambda: self._create(client, msg, callback), attempts=self._cfg.attempts,
            budget_s=self._cfg.retry_budget_s, breaker=self.breaker, event="sms_retry", codes=PERMANENT_CODES,
            logger=log,
        )

    async def _create(self, client: Any, msg: Outgoing, callback: str) -> str:
        return await create_with_translation(
            lambda: client.messages.create_async(
                to=msg.target,
                from_=self._cfg.from_number,
                body=msg.body.decode(),
                status_callback=callback,
                validity_period=min(MAX_VALIDITY_S, max(1, msg.expiry_s or self._cfg.validity_period_s)),
            ),
            self._cfg.timeout_s, "message",
        )

    async def fetch_status(self, sid: str) -> str:
        """Twilio's current status of a sent message (queued, sent, delivered, undelivered, failed, ...)."""
        client = self.twilio.client
        if client is None:
            raise RuntimeError("SMS channel not started")
        async with asyncio.timeout(self._cfg.timeout_s):
            message = await client.messages(sid).fetch_async()
        return str(message.status)


class TwilioSession:
    """The SDK's client on its asyncio HTTP session, for SMS and calls alike: `client` is there while `run` runs
    (the session binds to the running loop) and None before and after; the session is closed when `run` is
    cancelled."""

    def __init__(self, account_sid: str, auth_token: str, api_base_url: str) -> None:
        self._account_sid, self._auth_token, self._api_base_url = account_sid, auth_token, api_base_url
        self.client: Any = None  # twilio.rest.Client, imported when the channel starts (it is slow to import)

    async def run(self) -> None:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        http = AsyncTwilioHttpClient()
        client = Client(self._account_sid, self._auth_token, http_client=http)
        client.api.base_url = self._api_base_url.rstrip("/")  # a gateway that speaks Twilio's API, or the tests'
        self.client = client
        try:
            await asyncio.Event().wait()
        finally:
            self.client = None
            await http.close()


async def created_or_failed(
    create: Callable[[], Awaitable[str]], *, attempts: int, budget_s: float, breaker: CircuitBreaker, event: str,
    codes: Mapping[int, str], logger: logging.Logger,
) -> SendResult:
    """A Twilio create call (an SMS, a call) with its retries, as a send's result: the resource's sid, or why not.
    The breaker hears how it went."""
    try:
        sid = await with_retries(create, attempts=attempts, budget_s=budget_s, first_wait_s=0.2, max_wait_s=2.0,
                                 breaker=breaker, log=logger, event=event)
    except Transient as exc:
        breaker.failed(str(exc))
        return SendResult.failed(exc.reason, str(exc))
    except Refused as exc:
        return refused_result(exc.error, breaker, codes)
    except Exception as exc:  # noqa: BLE001 - whatever else the client raises is this send's failure alone
        breaker.failed(f"{type(exc).__name__}: {exc}")
        return SendResult.failed(FailureReason.UNEXPECTED, f"{type(exc).__name__}: {exc}")
    breaker.succeeded()
    return SendResult.accepted(provider_ref=sid)


async def create_with_translation(create: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> str:
    """One create call of the twilio client, its errors sorted: Transient (worth another try) or Refused (4xx).
    Returns the created resource's sid."""
    from twilio.base.exceptions import TwilioException, TwilioRestException

    try:
        async with asyncio.timeout(timeout_s):
            created = await create()
    except TimeoutError:
        # Twilio may still act on it: a duplicate SMS or call about the same alert is harmless, a missing one is not.
        raise Transient(FailureReason.TIMEOUT, f"no answer from Twilio within {timeout_s} s") from None
    except aiohttp.ClientError as exc:
        raise Transient(FailureReason.UNREACHABLE, f"Twilio unreachable: {exc}") from None
    except TwilioRestException as exc:
        if exc.status == 429:
            raise Transient(FailureReason.RATE_LIMITED, f"Twilio 429 (code {exc.code})") from None
        if exc.status >= 500:
            raise Transient(FailureReason.UNREACHABLE, f"Twilio {exc.status} (code {exc.code})") from None
        raise Refused(exc) from None
    except (TwilioException, ValueError, KeyError, TypeError, AttributeError) as exc:
        # An answer the client could not read (a proxy's HTML page with 200, JSON of another shape): a server
        # fault, worth another try. Twilio may have acted all the same: a duplicate is harmless.
        raise Transient(FailureReason.UNREACHABLE, f"Twilio answer not understood: {type(exc).__name__}") from None
    sid = getattr(created, "sid", None)
    if not isinstance(sid, str) or not sid:
        raise Transient(FailureReason.UNREACHABLE, f"Twilio answer not understood: no {what} sid")
    return sid


def refused_result(exc: Any, breaker: CircuitBreaker, codes: Mapping[int, str]) -> SendResult:
    """A 4xx from Twilio: the credentials (auth, the provider's fault) or this message or number (rejected)."""
    code = int(exc.code) if isinstance(exc.code, int) else exc.status
    if exc.status in (401, 403):
        breaker.failed(f"Twilio refused the credentials (code {code})")
        return SendResult.failed(FailureReason.AUTH, f"twilio {code}: credentials refused", permanent=True)
    breaker.failed(str(code), provider_fault=False)
    what = codes.get(code, exc.msg or "rejected")
    return SendResult.failed(FailureReason.REJECTED, f"twilio {code}: {what}", permanent=True)


# ---- what Twilio tells us -------------------------------------------------------------------------------


class TwilioReceiver:
    """Twilio's webhooks: an inbound SMS (`sms`) and a message's status callback (`status`), both signed with the
    account's auth token over the URL Twilio called and every field it posted. Behind the Receiver protocol: the
    relay hands in the call as it came and gets the answer to send; it never sees a Twilio field name."""

    hooks = frozenset({"sms", "status"})
    channel = "sms"

    def __init__(self, auth_token: str) -> None:
        self._token = auth_token

    def precheck(self, call_headers: Mapping[str, str]) -> None:
        if not call_headers.get(SIGNATURE_HEADER):
            raise Unauthenticated(f"no {SIGNATURE_HEADER} header")

    async def receive(self, call: WebhookCall, sink: ReplySink) -> WebhookAnswer:
        try:
            check_signature(self._token, call.url, call.form, call.headers.get(SIGNATURE_HEADER))
        except SignatureError as exc:
            raise Unauthenticated(str(exc)) from None
        if call.hook == "sms":
            sms = parse_inbound(call.form)
            answer = await sink.on_reply(self.channel, sms.sender, sms.body, call.form.get("MessageSid", ""))
            return WebhookAnswer(200, twiml(answer), "text/xml")
        report = parse_status_callback(call.query, call.form)
        final = {Delivery.DELIVERED: True, Delivery.FAILED: False}.get(report.delivery)
        await sink.on_receipt(
            self.channel, [k for k in report.key.split(",") if k], final, report.status,
            f"twilio {report.error_code}: undelivered" if final is False else None,
        )
        return WebhookAnswer(204)


SIGNATURE_HEADER = "X-Twilio-Signature"


class SignatureError(Exception):
    pass


def check_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> None:
    """Twilio signs the full URL it called (as configured: scheme, host, path, query) and every POST field."""
    if not signature:
        raise SignatureError("no X-Twilio-Signature header")
    from twilio.request_validator import RequestValidator

    if not RequestValidator(auth_token).validate(url, dict(params), signature):
        raise SignatureError("X-Twilio-Signature does not match")


class Delivery(enum.StrEnum):
    SENT = "sent"  # handed to the carrier
    DELIVERED = "delivered"  # the handset got it
    FAILED = "failed"  # undelivered or failed
    PENDING = "pending"  # queued, sending, accepted, scheduled: nothing to record yet


_STATUS = {
    "delivered": Delivery.DELIVERED, "read": Delivery.DELIVERED, "sent": Delivery.SENT,
    "undelivered": Delivery.FAILED, "failed": Delivery.FAILED, "canceled": Delivery.FAILED,
}


@dataclass(frozen=True, slots=True)
class StatusReport:
    key: str  # the Outgoing.key the message was sent with
    message_sid: str
    delivery: Delivery
    error_code: str
    status: str  # Twilio's own word


def parse_status_callback(query: Mapping[str, str], form: Mapping[str, str]) -> StatusReport:
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    return StatusReport(
        key=query.get("key", ""),
        message_sid=form.get("MessageSid", ""),
        delivery=_STATUS.get(status, Delivery.PENDING),
        error_code=form.get("ErrorCode", ""),
        status=status[:32] or "unknown",
    )


@dataclass(frozen=True, slots=True)
class InboundSms:
    sender: str
    body: str


def parse_inbound(form: Mapping[str, str]) -> InboundSms:
    return InboundSms(sender=form.get("From", "").strip(), body=form.get("Body", ""))


# Twilio's own opt-out keywords (its Advanced Opt-Out defaults), plus the Russian a dispatcher might type.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "СТОП"})
START_WORDS = frozenset({"START", "UNSTOP", "YES", "СТАРТ"})


def opt_keyword(body: str) -> str | None:
    """'stop' or 'start' when the whole reply is one of those keywords, else None."""
    word = body.strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None


def twiml(message: str | None) -> str:
    """The answer to an inbound SMS: a reply text, or none."""
    from twilio.twiml.messaging_response import MessagingResponse

    response = MessagingResponse()
    if message:
        response.message(message)
    return str(response)
