"""The e-mail ack link: GET shows the alert and a confirm button, POST acknowledges.

GET must not acknowledge: mail scanners and link previews open every link in a message.
"""

from __future__ import annotations

import html

from aiohttp import web

from relay.domain.clock import to_datetime
from relay.domain.records import AlertRecord, EventRecord
from relay.edges.api.context import CONTEXT, ApiContext
from relay.edges.api.failures import guard_of
from relay.engine.ack_links import BadLink
from relay.engine.engine import AckRefused

_REASONS = {
    "link expired": "Срок действия ссылки истёк",
    "link signature does not match (forged or altered)": "Ссылка подделана или изменена",
    "malformed link": "Ссылка повреждена",
}

# A link is base64url of "alert|desk|expiry" and a MAC: far shorter than this. Longer is refused unhashed.
MAX_TOKEN = 512

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
STYLE = ("body{font-family:sans-serif;max-width:40em;margin:2em auto;padding:0 1em}"
         "th{text-align:left;padding-right:1em;vertical-align:top}"
         "button{font-size:1.6em;padding:.5em 2em;background:#c00;color:#fff;border:0;border-radius:.3em}"
         ".ok{color:#070}.bad{color:#a00}")


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f"<!doctype html><html lang='ru'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>")
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = CSP
    return response


def _refused(reason: str) -> web.Response:
    return _page("Ссылка недействительна", f"<h1 class='bad'>Ссылка недействительна</h1>"
                 f"<p>{html.escape(reason)}.</p><p>Подтвердите тревогу ответом на SMS или в консоли дежурного.</p>",
                 status=403)


def _summary(ctx: ApiContext, alert: AlertRecord) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in ctx.renderer.report_lines(alert))
    return f"<h1>Тревога БПЛА, код {html.escape(alert.short_code)}</h1><table>{rows}</table>"


def _acked(alert: AlertRecord) -> str:
    ack = alert.ack
    if ack is None:
        return ""
    when = to_datetime(ack.at).strftime("%d.%m.%Y %H:%M:%S UTC")
    return (f"<p class='ok'><b>Подтверждено</b>: {html.escape(ack.by or ack.desk_id)} ({html.escape(ack.channel)}), "
            f"{when}.</p>")


async def _resolve(request: web.Request) -> tuple[ApiContext, AlertRecord, str] | web.Response:
    ctx = request.app[CONTEXT]
    token = request.match_info["token"]
    try:
        if len(token) > MAX_TOKEN:
            raise BadLink("malformed link")
        link = ctx.ack_links.verify(token, ctx.clock.now())
    except BadLink as exc:
        # Counted, not written down one by one (relay.api.failures); 429 once this address failed too often.
        ctx.metrics.webhooks_rejected.labels("ack_link", "bad_token").inc()
        guard_of(request).failed(request, "link_refused", str(exc))
        return _refused(_REASONS.get(str(exc), "Ссылка повреждена"))
    alert = await ctx.store.get_alert(link.alert_id)
    if alert is None or link.desk_id not in alert.desks:
        return _refused("Тревога по этой ссылке не найдена")
    return ctx, alert, link.desk_id


def _already(ctx: ApiContext, alert: AlertRecord) -> web.Response:
    """A link used again after the alert was acknowledged: it changes nothing, and says so."""
    return _page("Тревога уже подтверждена",
                 _summary(ctx, alert) + "<h2 class='bad'>Ссылка больше не действует: тревога уже подтверждена</h2>"
                 + _acked(alert), status=403)


async def show(request: web.Request) -> web.Response:
    resolved = await _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    ctx, alert, _ = resolved
    if alert.ack is not None:
        return _already(ctx, alert)
    form = ("<form method='post'><p><label>Кто подтверждает: <input name='by' maxlength='100' "
            "autocomplete='name'></label></p><button type='submit'>Подтвердить</button></form>")
    return _page(f"Тревога {alert.short_code}", _summary(ctx, alert) + form)


async def confirm(request: web.Request) -> web.Response:
    resolved = await _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    ctx, alert, desk_id = resolved
    if alert.ack is not None:
        await ctx.store.add_event(EventRecord(alert.alert_id, ctx.clock.now(), "link_refused", {
            "reason": "used again after the ack", "desk_id": desk_id, "from": request.remote or ""}))
        return _already(ctx, alert)
    form = await request.post()
    by = str(form.get("by", "")).strip()[:100] or "по ссылке из e-mail"
    try:
        result = await ctx.engine.acknowledge(alert.alert_id, desk_id, "email", by, f"link {request.remote}")
    except AckRefused:
        return _refused("Подтверждение не принято")
    if not result.first:  # another channel's ack won the race by a moment
        return _already(ctx, result.alert)
    return _page("Тревога подтверждена", _summary(ctx, result.alert) + "<h2 class='ok'>Тревога подтверждена. "
                 "Спасибо.</h2>" + _acked(result.alert))
