"""A local server that speaks Twilio's REST shape, for the real `twilio` client to talk to (`relay demo`, tests).

Basic auth with the account SID and auth token, form fields in, Twilio's JSON out (its error JSON for 4xx/5xx),
and status callbacks and inbound SMS webhooks signed the way Twilio signs them. It sends nothing anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0" * 30 + "12"
# the local sink's own token, known to the demo and the tests: not a credential of anything real
AUTH_TOKEN = "twilio-test-auth-token-0123456789"  # noqa: S105  # nosec B105
FROM_NUMBER = "+79990000000"


@dataclass
class Sms:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str
    validity_period: str
    at: float
    status: str = "queued"


@dataclass
class Fault:
    """One scripted answer to the next create call: an HTTP status with Twilio's error body, or a delay."""

    status: int = 500
    code: int | None = None
    delay_s: float = 0.0
    body: str | None = None  # answer this text as it is (e.g. a proxy's HTML page with 200), not Twilio's JSON


@dataclass
class TwilioSink:
    port: int = 0
    messages: list[Sms] = field(default_factory=list)
    calls: int = 0
    tried: list[str] = field(default_factory=list)  # the To of every create call, accepted or not
    faults: list[Fault] = field(default_factory=list)
    invalid_numbers: set[str] = field(default_factory=set)  # answered 400 / 21211, as Twilio does
    _runner: web.AppRunner | None = None
    _sids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages/{msid}.json", self._fetch)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _create(self, request: web.Request) -> web.Response:
        self.calls += 1
        if not self._authorized(request) or request.match_info["sid"] != ACCOUNT_SID:
            return _error(401, 20003, "Authenticate")
        form = await request.post()
        self.tried.append(str(form.get("To", "")))
        if self.faults:
            fault = self.faults.pop(0)
            if fault.body is not None:
                return web.Response(text=fault.body, status=fault.status, content_type="text/html")
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)  # a slow Twilio, as the relay's timeout sees it
            else:
                return _error(fault.status, fault.code or fault.status, "scripted fault")
        to = str(form.get("To", ""))
        if to in self.invalid_numbers:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not to or not form.get("Body") or not form.get("From"):
            return _error(400, 21604, "A 'To' phone number and a body are required.")
        sms = Sms(
            sid=f"SM{next(self._sids):032d}", to=to, from_=str(form["From"]), body=str(form["Body"]),
            status_callback=str(form.get("StatusCallback", "")), validity_period=str(form.get("ValidityPeriod", "")),
            at=time.time(),
        )
        self.messages.append(sms)
        return web.json_response(self._json(sms), status=201)

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        found = [m for m in self.messages if m.sid == request.match_info["msid"]]
        if not found:
            return _error(404, 20404, "The requested resource was not found")
        return web.json_response(self._json(found[0]))

    @staticmethod
    def _json(sms: Sms) -> dict[str, Any]:
        return {"sid": sms.sid, "account_sid": ACCOUNT_SID, "to": sms.to, "from": sms.from_, "body": sms.body,
                "status": sms.status, "num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sms.sid}.json", "error_code": None}

    @staticmethod
    def _authorized(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user == ACCOUNT_SID and password == AUTH_TOKEN

    # ---- Twilio calling the relay ---------------------------------------------------------------------

    async def status_callback(self, sms: Sms, status: str, error_code: str = "") -> int:
        sms.status = status
        params = {"MessageSid": sms.sid, "SmsSid": sms.sid, "AccountSid": ACCOUNT_SID, "From": sms.from_,
                  "To": sms.to, "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01"}
        if error_code:
            params["ErrorCode"] = error_code
        return (await post_signed(sms.status_callback, params))[0]

    @staticmethod
    async def inbound(public_url: str, from_: str, body: str, *, signature: str | None = "valid",
                      to: str = FROM_NUMBER, message_sid: str = "") -> tuple[int, str]:
        """An SMS reply arriving at the relay's webhook. signature: 'valid', None (unsigned), or a forged value."""
        url = f"{public_url}/webhooks/twilio/sms"
        # A fresh MessageSid per reply, as Twilio gives; the same one again is a redelivery (handled once).
        params = {"MessageSid": message_sid or "SM" + secrets.token_hex(16), "AccountSid": ACCOUNT_SID,
                  "From": from_, "To": to, "Body": body, "NumMedia": "0", "NumSegments": "1"}
        status, text = await post_signed(url, params, signature=signature)
        return status, text


async def post_signed(url: str, params: dict[str, str], *, signature: str | None = "valid") -> tuple[int, str]:
    headers = {}
    if signature == "valid":
        headers["X-Twilio-Signature"] = RequestValidator(AUTH_TOKEN).compute_signature(url, params)
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    async with aiohttp.ClientSession() as http, http.post(url, data=params, headers=headers) as r:
        return r.status, await r.text()


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
                             status=status)
