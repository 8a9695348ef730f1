"""Twilio's webhooks: inbound SMS (acks by short code) and message status callbacks. Both signed by Twilio."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from channels.sms import Delivery, SignatureError, check_signature, parse_inbound, parse_status_callback, twiml
from relay.api.context import CONTEXT, ApiContext
from relay.api.errors import ApiError
from relay.api.failures import guard_of

log = logging.getLogger("relay.api.webhooks")

REFUSED = "webhook_refused"
BODY_TIMEOUT_S = 10.0


async def _signed_form(request: web.Request, ctx: ApiContext, webhook: str) -> dict[str, str]:
    if ctx.sms is None:
        raise ApiError(404, "not_found", "the SMS channel is not enabled")
    guard = guard_of(request)
    guard.check(request, REFUSED)  # an address that failed too often: 429 before its body is read
    signature = request.headers.get("X-Twilio-Signature")
    form = await _form(request) if signature else {}
    # Twilio signed the URL it was given: the public one, which a reverse proxy may rewrite on the way here.
    url = f"{ctx.public_url}{request.path_qs}"
    try:
        check_signature(ctx.sms.auth_token, url, form, signature)
    except SignatureError as exc:
        ctx.metrics.webhooks_rejected.labels(webhook, "signature").inc()
        guard.failed(request, REFUSED, str(exc))  # counted for the audit trail; 429 past the address's rate
        log.warning("webhook refused", extra={"event": "webhook_refused", "webhook": webhook, "reason": str(exc),
                                              "remote": request.remote})
        raise ApiError(403, "forbidden", str(exc)) from None
    return form


async def _form(request: web.Request) -> dict[str, str]:
    # Twilio posts a small form at once; a body trickled in slowly by someone else must not hold the connection.
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return {k: str(v) for k, v in (await request.post()).items()}
    except TimeoutError:
        raise ApiError(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None


async def inbound_sms(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    form = await _signed_form(request, ctx, "twilio_sms")
    assert ctx.sms is not None
    sid = form.get("MessageSid", "")
    # Twilio delivers again when our answer was late or lost: the reply was handled, so it must not ack or
    # count twice. Recorded before handling: a reply lost to a crash in between is sent again by the dispatcher,
    # an ack counted twice cannot be taken back.
    if sid and not await ctx.store.first_inbound("sms", sid, ctx.clock.now()):
        log.info("inbound SMS redelivered: handled once already",
                 extra={"event": "sms_redelivered", "message_sid": sid[:64]})
        return _twiml(None)
    return _twiml(await ctx.sms.replies.handle(parse_inbound(form)))


def _twiml(reply: str | None) -> web.Response:
    return web.Response(text=twiml(reply), content_type="text/xml", charset="utf-8")


async def sms_status(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    form = await _signed_form(request, ctx, "twilio_status")
    report = parse_status_callback(request.query, form)
    ctx.metrics.sms_status.labels(form.get("MessageStatus", "unknown")).inc()
    if report.delivery in (Delivery.DELIVERED, Delivery.FAILED):
        error = f"twilio {report.error_code}: undelivered" if report.delivery is Delivery.FAILED else None
        for delivery_id in filter(None, report.key.split(",")):
            await ctx.engine.delivery_report(delivery_id, "sms", delivered=report.delivery is Delivery.DELIVERED,
                                             error=error)
    return web.Response(status=204)
