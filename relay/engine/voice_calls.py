"""Calls acknowledged by a key: the relay's side of the voice channel's webhooks (channels.voice.VoiceSink).

A key `1` pressed by a person acknowledges the alert (channel `voice`), once per call whatever Twilio repeats; a
call's final status is recorded on its delivery and tells the dispatcher, which waits for it, whether to call the
desk's next number (busy, no answer, failed, a mailbox) or not (a person answered).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from channels.voice import CallStatus
from relay.domain.clock import Clock
from relay.domain.records import AlertRecord, DeliveryRecord
from relay.domain.states import DeliveryState
from relay.engine.engine import CHANNEL_TEST_PREFIX, AckRefused, Engine
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.voice")

EARLY_KEPT = 1000  # final statuses that came before anyone waited for them (a fast "busy"), the latest kept
STORE_LOOK_S = 1.0  # how often a waiting call's delivery is read when several relays share the store


class VoiceCalls:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store, self._clock = store, clock
        self._engine: Engine | None = None  # the dispatcher waits on calls before the engine exists: see `serve`
        self._waiting: dict[str, asyncio.Future[CallStatus]] = {}
        self._early: OrderedDict[str, CallStatus] = OrderedDict()

    def serve(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("VoiceCalls.serve(engine) was not called")
        return self._engine

    async def reached(self, key: str, within_s: float) -> bool | None:
        """Whether the call placed for delivery `key` reached a person: True, False (busy, no answer, failed, a
        machine), or None when no word came within `within_s`.

        The word is the call's final status, heard by this relay's webhook or, behind a load balancer, by another
        relay's: that one records it on the delivery, which is read here every `STORE_LOOK_S`, so a busy number
        passes the call on at once wherever its callback landed."""
        early = self._early.pop(key, None)
        if early is not None:
            return bool(early.reached)
        waiting = self._waiting.setdefault(key, asyncio.get_running_loop().create_future())
        look_s = STORE_LOOK_S if self._store.shared else None  # alone, every callback comes to this relay
        try:
            async with asyncio.timeout(within_s):
                while True:
                    done, _ = await asyncio.wait({waiting}, timeout=look_s)
                    if done:
                        return bool(waiting.result().reached)
                    recorded = await self._recorded(key)
                    if recorded is not None:
                        return recorded
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(key, None)

    async def _recorded(self, key: str) -> bool | None:
        """The call's outcome as the store has it (delivered: a person; failed or cancelled: no one); None while
        it is only placed, or when the store cannot be read this time."""
        try:
            _, delivery = await self._delivery(key)
        except StoreUnavailable:
            return None
        if delivery is None:
            return False  # gone (the history pruned): nothing left to wait for
        if delivery.state is DeliveryState.DELIVERED:
            return True
        if delivery.state in (DeliveryState.FAILED, DeliveryState.CANCELLED):
            return False
        return None

    async def on_call_status(self, channel: str, status: CallStatus) -> None:
        if not status.final:
            return
        waiting = self._waiting.get(status.key)
        if waiting is not None and not waiting.done():
            waiting.set_result(status)
        else:
            self._early[status.key] = status
            while len(self._early) > EARLY_KEPT:
                self._early.popitem(last=False)
        reached = bool(status.reached)
        if reached:
            why = None
        elif status.machine:
            why = f"call answered by a machine ({status.answered_by}): no person heard it"
        else:
            why = f"call {status.status}" + (f" ({status.error_code})" if status.error_code else "")
        await self.engine.delivery_report(status.key, channel, delivered=reached, error=why)

    async def on_key(self, channel: str, key: str, sender: str, digit: str, call_sid: str) -> str | None:
        if digit != "1":
            return None
        if key.startswith(CHANNEL_TEST_PREFIX):  # `relay test-channels` called: a person heard it and answered
            log.info("channel test reply", extra={"event": "channel_test_reply", "channel": channel, "from": sender})
            return "Проверка связи прошла. Спасибо."
        if not await self._store.first_inbound(channel, call_sid, self._clock.now()):
            log.info("call's key heard again: recorded once", extra={"event": "voice_key_repeated",
                                                                    "call_sid": call_sid[:64]})
            return None
        alert_id = key.partition(".")[0]
        alert, delivery = await self._delivery(key)
        try:
            if delivery is None:
                await self.engine.refuse(alert_id, channel, "unknown", f"voice {sender}", f"no call {key[:80]}",
                                          known=alert is not None)
            assert delivery is not None
            await self.engine.acknowledge(alert_id, delivery.desk_id, channel, sender, f"voice {sender}")
        except AckRefused:
            return "Подтверждение не принято."
        return None

    async def _delivery(self, key: str) -> tuple[AlertRecord | None, DeliveryRecord | None]:
        """The call's delivery (its key is the delivery id, which begins with its alert's id), and its alert."""
        alert = await self._store.get_alert(key.partition(".")[0])
        return alert, None if alert is None else next((d for d in alert.deliveries if d.delivery_id == key), None)
