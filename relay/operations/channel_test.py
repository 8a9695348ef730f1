"""`relay test-channels`: a marked test message over each configured channel to each desk, and what came of it.

Run beside the daemon (its own MQTT client id, no session left behind). The daemon ignores the consoles'
replies to these messages: their ids start with TEST_PREFIX.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from channels.base import Channel, Inbound, InboundKind, Outgoing
from channels.email import SmtpEmailChannel
from channels.mqtt import MqttChannel
from channels.smpp import SmppSmsChannel
from channels.sms import TwilioSmsChannel
from channels.voice import TwilioVoiceChannel, is_machine
from relay.domain import render
from relay.domain.clock import to_datetime
from relay.domain.config import Settings
from relay.domain.model import Location, Priority, Report, ReportStatus
from relay.domain.records import AlertRecord
from relay.domain.states import AlertState
from relay.domain.topics import Topics
from relay.engine.engine import CHANNEL_TEST_PREFIX
from relay.operations.daemon import mqtt_settings, sms_channel, smtp_settings, voice_settings

TEST_PREFIX = CHANNEL_TEST_PREFIX
TEST_TEXT = "ТЕСТ канала связи uav-relay. Это проверка, не тревога; отвечать не нужно."


@dataclass
class Result:
    channel: str
    desk: str
    target: str
    accepted: bool = False
    delivered: bool | None = None  # None: this channel cannot tell
    acked: bool | None = None
    latency_s: float | None = None  # until accepted; for MQTT until the console said received
    detail: str = ""


class _Replies:
    def __init__(self) -> None:
        self.heard: dict[tuple[str, str], set[InboundKind]] = {}
        self.changed = asyncio.Event()
        self.at: dict[tuple[str, str], float] = {}

    async def on_inbound(self, inbound: Inbound) -> None:
        key = (inbound.ref, inbound.sender)
        self.heard.setdefault(key, set()).add(inbound.kind)
        self.at.setdefault(key, time.monotonic())
        self.changed.set()

    async def on_rejected_inbound(self, channel: str, sender: str, problem: str) -> None:
        return None


class _Receipts:
    """What an SMSC says of the test SMS over the bind (SMPP has no status to poll): delivered or not, by key."""

    def __init__(self) -> None:
        self.final: dict[str, tuple[bool, str]] = {}
        self.changed = asyncio.Event()

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        if delivered is not None:
            for key in keys:
                self.final[key] = (delivered, status)
            self.changed.set()

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        return None  # a reply to a test message acknowledges nothing


async def run_channel_test(settings: Settings, wait_s: float = 20.0) -> list[Result]:
    topics = Topics(settings.mqtt.topic_prefix)
    mqtt_cfg = replace(mqtt_settings(settings, topics), client_id=f"{settings.mqtt.client_id}-selftest",
                       session_expiry_s=0, status_topic=f"{topics.prefix}/relay/{settings.mqtt.client_id}-selftest"
                       "/status")
    mqtt = MqttChannel(mqtt_cfg)
    replies = _Replies()
    mqtt.listen(replies)
    channels: list[Channel] = [mqtt]
    sms = sms_channel(settings, time.time)
    receipts = _Receipts()
    if isinstance(sms, SmppSmsChannel):
        sms.set_sink(receipts)
    email = SmtpEmailChannel(smtp_settings(settings)) if settings.email.enabled else None
    voice = TwilioVoiceChannel(voice_settings(settings)) if settings.voice.enabled else None
    channels += [c for c in (sms, email, voice) if c is not None]
    results: list[Result] = []
    async with asyncio.TaskGroup() as tg:
        runners = [tg.create_task(c.run()) for c in channels]
        try:
            for connected in (mqtt, sms):  # a broker and an SMSC bind take a moment
                if connected is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            await connected.health.wait_up()
            results = await _run_tests(settings, topics, mqtt, replies, receipts, sms, email, wait_s, voice)
        finally:
            for r in runners:
                r.cancel()
    return results


async def _run_tests(settings: Settings, topics: Topics, mqtt: MqttChannel, replies: _Replies, receipts: _Receipts,
                     sms: Channel | None, email: SmtpEmailChannel | None, wait_s: float,
                     voice: Channel | None = None) -> list[Result]:
    now = time.time()
    results: list[Result] = []
    sends: list[tuple[Result, Channel, Outgoing]] = []
    for desk in settings.desks:
        ref = f"{TEST_PREFIX}{secrets.token_hex(6)}"
        record = AlertRecord(
            alert_id=ref, report_id=ref, operator_id="self-test", short_code="TEST", state=AlertState.PENDING,
            priority=Priority.ROUTINE, stale=False, created_at=now, desks=(desk.id,),
            report=Report(report_id=ref, observed_at=to_datetime(now), location=Location(lat=0.0, lon=0.0),
                          status=ReportStatus.TEST, notes=TEST_TEXT),
        )
        body = render.mqtt_alert(record, desk.id, topics.acks(desk.id))
        sends.append((Result("mqtt", desk.id, topics.alerts(desk.id)), mqtt,
                      Outgoing(ref, topics.alerts(desk.id), body, expiry_s=int(wait_s))))
        if sms is not None:
            sends += [(Result("sms", desk.id, phone), sms,  # a key of its own per phone: receipts come by key
                       Outgoing(f"{ref}-{n}", phone, TEST_TEXT.encode(), expiry_s=600))
                      for n, phone in enumerate(desk.sms)]
        if voice is not None:  # answered or not is read back from the provider; a key pressed goes to the daemon
            sends += [(Result("voice", desk.id, number), voice, Outgoing(f"{ref}-v{n}", number, TEST_TEXT.encode()))
                      for n, number in enumerate(desk.voice)]
        if email is not None:
            sends += [(Result("email", desk.id, address), email, Outgoing(
                ref, address, f"{TEST_TEXT}\n\n{render_time(now)}".encode(),
                subject="[БПЛА] ТЕСТ канала e-mail (не тревога)")) for address in desk.email]

    async def one(result: Result, channel: Channel, msg: Outgoing) -> None:
        started = time.monotonic()
        sent = await channel.send(msg)
        result.accepted = sent.ok
        result.latency_s = time.monotonic() - started
        result.detail = sent.detail or (sent.provider_ref or "")
        if sent.ok and result.channel == "mqtt":
            await _wait_console(result, msg.key, replies, wait_s, started)
        elif sent.ok and result.channel == "sms" and isinstance(channel, TwilioSmsChannel) and sent.provider_ref:
            await _wait_carrier(result, channel, sent.provider_ref, wait_s)
        elif sent.ok and result.channel == "sms" and isinstance(channel, SmppSmsChannel):
            await _wait_receipt(result, msg.key, receipts, wait_s)
        elif sent.ok and isinstance(channel, TwilioVoiceChannel) and sent.provider_ref:
            await _wait_answer(result, channel, sent.provider_ref, wait_s)

    async with asyncio.TaskGroup() as tg:
        for result, channel, msg in sends:
            results.append(result)
            tg.create_task(one(result, channel, msg))
    return results


async def _wait_console(result: Result, ref: str, replies: _Replies, wait_s: float, started: float) -> None:
    key = (ref, result.desk)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while InboundKind.RECEIVED not in replies.heard.get(key, set()):
                replies.changed.clear()
                await replies.changed.wait()
    heard = replies.heard.get(key, set())
    result.delivered = InboundKind.RECEIVED in heard
    result.acked = InboundKind.ACK in heard
    if result.delivered:
        result.latency_s = replies.at[key] - started
    else:
        result.detail = f"no 'received' from the console within {wait_s:g} s"


async def _wait_receipt(result: Result, key: str, receipts: _Receipts, wait_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while key not in receipts.final:
                receipts.changed.clear()
                await receipts.changed.wait()
    if key in receipts.final:
        delivered, status = receipts.final[key]
        result.delivered = delivered
        result.detail = f"{result.detail}: {status}" if result.detail else status
    else:
        result.detail = f"no delivery receipt from the SMSC within {wait_s:g} s"


_T = TypeVar("_T")


async def _poll(fetch: Callable[[], Awaitable[_T]], done: Callable[[_T], bool], wait_s: float) -> _T:
    """The provider's word on a test message, asked every second until `done` says it is final or the deadline
    passes (its status moves on its own time); the last word either way. Raises what `fetch` raises."""
    deadline = time.monotonic() + wait_s
    while True:
        last = await fetch()
        left = deadline - time.monotonic()
        if done(last) or left <= 0:
            return last
        await asyncio.sleep(min(1.0, left))


SMS_FINAL = frozenset({"delivered", "undelivered", "failed"})


async def _wait_carrier(result: Result, sms: TwilioSmsChannel, sid: str, wait_s: float) -> None:
    try:
        status = await _poll(lambda: sms.fetch_status(sid), lambda s: s in SMS_FINAL, wait_s)
    except Exception as exc:  # noqa: BLE001 - a report of what happened, not a reason to stop the others
        result.detail = f"status not readable: {exc}"
        return
    result.delivered = status == "delivered" if status in SMS_FINAL else None
    result.detail = f"{sid}: {status}"


CALL_ANSWERED = frozenset({"in-progress", "completed"})
CALL_UNANSWERED = frozenset({"busy", "no-answer", "failed", "canceled"})


async def _wait_answer(result: Result, voice: TwilioVoiceChannel, sid: str, wait_s: float) -> None:
    """A test call counts as delivered once a person picks it up; a machine, busy or no answer is a NO with the
    reason. With machine detection the call is in progress before the verdict is in (it runs in the background):
    an answered call counts once it is known who answered, or once it ended. The key the person presses reaches
    the running daemon's webhook, not this command."""

    def known(s: tuple[str, str]) -> bool:
        status, answered_by = s
        if status == "in-progress":
            return bool(answered_by) or not voice.detects_machines
        return status in CALL_ANSWERED | CALL_UNANSWERED

    try:
        status, answered_by = await _poll(lambda: voice.fetch_status(sid), known, wait_s)
    except Exception as exc:  # noqa: BLE001 - a report of what happened, not a reason to stop the others
        result.detail = f"{sid}: status not readable: {exc}"
        return
    if status in CALL_ANSWERED and known((status, answered_by)):
        result.delivered = not is_machine(answered_by)
        result.detail = f"{sid}: answered by {answered_by or 'someone'}"
    elif status in CALL_UNANSWERED:
        result.delivered = False
        result.detail = f"{sid}: {status}"
    else:
        who = ", who: not known" if status in CALL_ANSWERED else ""
        result.detail = f"{sid}: not answered within {wait_s:g} s ({status}{who})"


def render_time(t: float) -> str:
    return to_datetime(t).isoformat()


def table(results: list[Result]) -> str:
    def mark(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    rows = [("channel", "desk", "target", "accepted", "delivered", "acked", "latency", "detail")]
    for r in results:
        latency = f"{r.latency_s * 1000:.0f} ms" if r.latency_s is not None else "-"
        rows.append((r.channel, r.desk, r.target, mark(r.accepted), mark(r.delivered), mark(r.acked), latency,
                     r.detail[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
