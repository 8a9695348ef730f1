"""Twilio's webhooks: inbound SMS (acks by short code) and message status callbacks. Both signed by Twilio."""

from __future__ import annotations

import logging

from aiohttp import web

from channels.sms import Delivery, SignatureError, check_signature, parse_inbound, parse_status_callback, twiml
from relay.api.context import CONTEXT, ApiContext
from relay.api.errors import ApiError
from relay.store.base import EventRecord

log = logging.getLogger("relay.api.webhooks")


async def _signed_form(request: web.Request, ctx: ApiContext, webhook: str) -> dict[str, str]:
    if ctx.sms is None:
        raise ApiError(404, "not_found", "the SMS channel is not enabled")
    form = {k: str(v) for k, v in (await request.post()).items()}
    # Twilio signed the URL it was given: the public one, which a reverse proxy may rewrite on the way here.
    url = f"{ctx.public_url}{request.path_qs}"
    try:
        check_signature(ctx.sms.auth_token, url, form, request.headers.get("X-Twilio-Signature"))
    except SignatureError as exc:
        ctx.metrics.webhooks_rejected.labels(webhook, "signature").inc()
        log.warning("webhook refused", extra={"event": "webhook_refused", "webhook": webhook, "reason": str(exc),
                                              "remote": request.remote})
        await ctx.store.add_event(EventRecord("", ctx.clock.now(), "webhook_refused", {
            "webhook": webhook, "reason": str(exc), "from": request.remote or "",
            "claimed_sender": form.get("From", "")[:32]}))
        raise ApiError(403, "forbidden", str(exc)) from None
    return form


async def inbound_sms(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    form = await _signed_form(request, ctx, "twilio_sms")
    assert ctx.sms is not None
    reply = await ctx.sms.replies.handle(parse_inbound(form))
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
