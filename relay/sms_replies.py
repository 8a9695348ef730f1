"""What a dispatcher's SMS reply means: an ack by short code, STOP/START, or something to explain back.

The answer text goes back to the phone (TwiML), in Russian. Only a phone number listed for a desk the alert
was sent to can acknowledge it: a false ack stops escalation, so it is as dangerous as a lost report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from channels.sms import InboundSms, opt_keyword
from relay import short_code
from relay.clock import Clock
from relay.engine import AckRefused, Engine
from relay.routing import Desk
from relay.store.base import Store

log = logging.getLogger("relay.sms_replies")

MAX_REPLY_CHARS = 1600  # Twilio's own limit of an SMS body; anything beyond is not read
MAX_CODES = 10  # CONTRACT.md: a reply with more code-like words acknowledges nothing


class SmsReplies:
    def __init__(self, engine: Engine, store: Store, desks: Sequence[Desk], clock: Clock) -> None:
        self._engine, self._store, self._clock = engine, store, clock
        self._desks_by_phone: dict[str, list[str]] = {}
        for desk in desks:
            for phone in desk.sms:
                self._desks_by_phone.setdefault(phone, []).append(desk.id)

    async def handle(self, sms: InboundSms) -> str:
        """The reply to send back."""
        keyword = opt_keyword(sms.body)
        if keyword is not None:
            await self._store.set_sms_opt_out(sms.sender, keyword == "stop", self._clock.now())
            log.warning("SMS opt-%s", "out" if keyword == "stop" else "in",
                        extra={"event": f"sms_opt_{'out' if keyword == 'stop' else 'in'}", "phone": sms.sender})
            if keyword == "stop":
                return ("Рассылка тревог на этот номер остановлена. Тревоги о БПЛА сюда больше не придут. "
                        "Чтобы возобновить, ответьте START.")
            return "Рассылка тревог на этот номер возобновлена."
        codes = list(dict.fromkeys(short_code.find_codes(sms.body[:MAX_REPLY_CHARS])))
        if not codes:
            return "Код тревоги не найден. Ответьте кодом из SMS (4–6 знаков), например K7QX."
        if len(codes) > MAX_CODES:
            # Hundreds of code-like words are guesses, not a dispatcher's answer: one of them would hit an open
            # alert by chance and stop its escalation.
            self._engine.count_refused("sms", "too_many_codes")
            log.warning("SMS reply with too many codes ignored", extra={
                "event": "sms_reply_refused", "phone": sms.sender, "codes": len(codes)})
            return (f"В ответе {len(codes)} кодов: ничего не подтверждено. "
                    f"Ответьте кодами тревог, не более {MAX_CODES} в одном SMS.")
        return " ".join([await self._ack(code, sms.sender) for code in codes])

    async def _ack(self, code: str, phone: str) -> str:
        alert = await self._store.find_by_code(code, self._clock.now())
        if alert is None:
            return f"Код {code} не найден или тревога уже закрыта."
        desks = [d for d in self._desks_by_phone.get(phone, []) if d in alert.desks]
        try:
            if not desks:
                await self._engine.refuse(alert.alert_id, "sms", "not_routed", phone,
                                          "the number is not on a desk this alert went to")
            result = await self._engine.acknowledge(alert.alert_id, desks[0], "sms", phone, phone)
        except AckRefused as exc:
            if exc.reason == "not_routed":
                return f"Номер не зарегистрирован для тревоги {code}: подтверждение не принято."
            return f"Код {code} не найден или тревога уже закрыта."
        if result.first:
            return f"Тревога {code} подтверждена. Спасибо."
        first = result.alert.ack
        who = f" ({first.by}, {first.channel})" if first else ""
        return f"Тревога {code} уже была подтверждена{who}."
