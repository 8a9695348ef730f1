"""What providers tell the relay through a channel's receiver (channels.base.ReplySink): a dispatcher's SMS
reply (an ack by short code, STOP/START, or something to explain back) and a provider's receipts.

The answer text goes back to the phone, in Russian. Only a phone number listed for a desk the alert was sent to
can acknowledge it: a false ack stops escalation, so it is as dangerous as a lost report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from channels.sms import opt_keyword
from relay.domain import short_code
from relay.domain.clock import Clock
from relay.domain.routing import Desk
from relay.engine.engine import AckRefused, Engine
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.store.base import Store

log = logging.getLogger("relay.sms_replies")

MAX_REPLY_CHARS = 1600  # Twilio's own limit of an SMS body; anything beyond is not read
MAX_CODES = 10  # CONTRACT.md: a reply with more code-like words acknowledges nothing


class SmsReplies:
    def __init__(self, engine: Engine, store: Store, desks: Sequence[Desk], clock: Clock, metrics: Metrics) -> None:
        self._engine, self._store, self._clock, self._metrics = engine, store, clock, metrics
        self._desks_by_phone: dict[str, list[str]] = {}
        for desk in desks:
            for phone in desk.sms:
                self._desks_by_phone.setdefault(phone, []).append(desk.id)

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        self._metrics.sms_status.labels(status).inc()
        if delivered is None:
            return
        for delivery_id in keys:  # a bundle's receipt is every bundled delivery's
            await self._engine.delivery_report(delivery_id, channel, delivered=delivered, error=error)

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        # A provider delivers again when our answer was late or lost: the reply was handled, so it must not ack
        # or count twice. Recorded before handling: a reply lost to a crash in between is answered by the next
        # backup round; an ack counted twice cannot be taken back.
        if message_id and not await self._store.first_inbound(channel, message_id, self._clock.now()):
            log.info("inbound reply redelivered: handled once already",
                     extra={"event": "sms_redelivered", "message_sid": message_id[:64]})
            return None
        return await self.handle(channel, sender.strip(), text)

    async def handle(self, channel: str, sender: str, body: str) -> str:
        """The reply to send back."""
        keyword = opt_keyword(body)
        if keyword is not None:
            await self._store.set_sms_opt_out(sender, keyword == "stop", self._clock.now())
            log.warning("SMS opt-%s", "out" if keyword == "stop" else "in",
                        extra={"event": f"sms_opt_{'out' if keyword == 'stop' else 'in'}", "phone": sender})
            if keyword == "stop":
                return ("Рассылка тревог на этот номер остановлена. Тревоги о БПЛА сюда больше не придут. "
                        "Чтобы возобновить, ответьте START.")
            return "Рассылка тревог на этот номер возобновлена."
        codes = list(dict.fromkeys(short_code.find_codes(body[:MAX_REPLY_CHARS])))
        if not codes:
            return "Код тревоги не найден. Ответьте кодом из SMS (4–6 знаков), например K7QX."
        if len(codes) > MAX_CODES:
            # Hundreds of code-like words are guesses, not a dispatcher's answer: one of them would hit an open
            # alert by chance and stop its escalation.
            self._engine.count_refused(channel, "too_many_codes")
            log.warning("SMS reply with too many codes ignored", extra={
                "event": "sms_reply_refused", "phone": sender, "codes": len(codes)})
            return (f"В ответе {len(codes)} кодов: ничего не подтверждено. "
                    f"Ответьте кодами тревог, не более {MAX_CODES} в одном SMS.")
        return " ".join([await self._ack(channel, code, sender) for code in codes])

    async def _ack(self, channel: str, code: str, phone: str) -> str:
        alert = await self._store.find_by_code(code, self._clock.now())
        if alert is None:
            return f"Код {code} не найден или тревога уже закрыта."
        desks = [d for d in self._desks_by_phone.get(phone, []) if d in alert.desks]
        try:
            if not desks:
                await self._engine.refuse(alert.alert_id, channel, "not_routed", phone,
                                          "the number is not on a desk this alert went to")
            result = await self._engine.acknowledge(alert.alert_id, desks[0], channel, phone, phone)
        except AckRefused as exc:
            if exc.reason == "not_routed":
                return f"Номер не зарегистрирован для тревоги {code}: подтверждение не принято."
            return f"Код {code} не найден или тревога уже закрыта."
        if result.first:
            return f"Тревога {code} подтверждена. Спасибо."
        first = result.alert.ack
        who = f" ({first.by}, {first.channel})" if first else ""
        return f"Тревога {code} уже была подтверждена{who}."


class ContainedReplies:
    """SmsReplies for a channel that hears replies and receipts itself (SMPP, over its bind): each is a job of its
    own, so what one raises is counted and logged as every job's failure is (a webhook's is its request's)."""

    def __init__(self, replies: SmsReplies, jobs: Jobs) -> None:
        self._replies, self._jobs = replies, jobs

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        return await self._jobs.run(JobKind.INBOUND, lambda: self._replies.on_reply(channel, sender, text, message_id),
                                    channel=channel, sender=sender[:64])

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        await self._jobs.run(JobKind.INBOUND,
                             lambda: self._replies.on_receipt(channel, keys, delivered, status, error),
                             alert_id=",".join(keys)[:64], channel=channel)
