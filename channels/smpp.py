"""SMS over SMPP 3.4: the same "sms" channel as Twilio's, over a transceiver bind to the operator's SMSC.

The ESME is `smpp34` (a Rust core: framing, sequence window, enquire_link, PDU codec); this module keeps one bind
alive across the configured SMSC hosts, maps a send onto `SendResult`, and turns what the SMSC delivers
(receipts and people's replies) into calls on the relay's `ReplySink`. There is no webhook: the channel hears
deliver_sm itself.

Traps worth knowing:
* smpp34 sends enquire_link on its own fixed 30 s timer; `enquire_link_s` is how often this channel asks the core
  whether the session is still alive, so a dead bind is noticed within it.
* A submit_sm whose resp never came (silent SMSC, bind lost) may or may not have reached the handset. It is never
  resent inside the channel: the send fails retryable and the relay resends it under the same key, so a duplicate
  is recognisable and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import smpp34

from channels.base import ChannelHealth, FailureReason, HealthState, Outgoing, ReplySink, SendResult
from channels.breaker import CircuitBreaker
from channels.retry import Transient, with_retries
from channels.smpp_pdu import (
    ESM_RECEIPT,
    ESM_UDHI,
    Part,
    Reassembly,
    clean_text,
    decode_text,
    parse_receipt,
    split_ucs2,
    split_udh,
)

log = logging.getLogger("channels.smpp")

# command_status values of SMPP 3.4 (section 5.1.3) a submit can meet.
STATUS_NAMES = {
    0x01: "ESME_RINVMSGLEN", 0x02: "ESME_RINVCMDLEN", 0x03: "ESME_RINVCMDID", 0x04: "ESME_RINVBNDSTS",
    0x05: "ESME_RALYBND", 0x08: "ESME_RSYSERR", 0x0A: "ESME_RINVSRCADR", 0x0B: "ESME_RINVDSTADR",
    0x0C: "ESME_RINVMSGID", 0x0D: "ESME_RBINDFAIL", 0x0E: "ESME_RINVPASWD", 0x0F: "ESME_RINVSYSID",
    0x14: "ESME_RMSGQFUL", 0x15: "ESME_RINVSERTYP", 0x33: "ESME_RINVNUMDESTS", 0x45: "ESME_RSUBMITFAIL",
    0x48: "ESME_RINVSRCTON", 0x49: "ESME_RINVSRCNPI", 0x50: "ESME_RINVDSTTON", 0x51: "ESME_RINVDSTNPI",
    0x58: "ESME_RTHROTTLED", 0x61: "ESME_RINVSCHED", 0x62: "ESME_RINVEXPIRY", 0xFF: "ESME_RUNKNOWNERR",
}
THROTTLED = {0x14, 0x58}  # the SMSC is busy, not the message wrong: retried with backoff
SMSC_FAULT = {0x08, 0x45, 0xFF}  # the SMSC's own trouble: retried, and counted against its health
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_PAYLOAD = 0x0424


def status_name(status: int) -> str:
    return f"{STATUS_NAMES.get(status, 'ESME_R?')} (0x{status:08x})"


@dataclass(frozen=True, slots=True)
class SmppSettings:
    hosts: tuple[tuple[str, int], ...]  # tried in order; the next one on a refused connect or a lost bind
    system_id: str
    password: str
    system_type: str = ""
    source_addr: str = ""
    enquire_link_s: float = 30.0  # how often the bind's liveness is checked (see the module's doc)
    window: int = 10  # outstanding submit_sm at most
    connect_timeout_s: float = 5.0
    submit_timeout_s: float = 10.0  # no submit_sm_resp within this: the send failed (retryable)
    bind_wait_s: float = 5.0  # a send waits this long for a bind before it fails unreachable
    reconnect_max_s: float = 10.0  # backoff between rounds over all hosts grows up to this
    attempts: int = 4  # tries of one part while the SMSC throttles
    retry_budget_s: float = 15.0
    validity_period_s: int = 3600


class MessageIdMap(Protocol):
    """SMSC message id -> Outgoing.key, for receipts. The relay may replace the in-memory one with a persistent
    one (receipts of messages sent before a restart are then matched too)."""

    def put(self, smsc_id: str, key: str) -> None: ...

    def get(self, smsc_id: str) -> str | None: ...


def id_readings(smsc_id: str) -> list[int]:
    """The integers an id may stand for: SMSCs answer submit_sm_resp in hex and write the receipt's id in decimal,
    or the other way round."""
    out: list[int] = []
    for base in (16, 10):
        with contextlib.suppress(ValueError):
            out.append(int(smsc_id, base))
    return out


def ref_keys(smsc_id: str) -> list[str]:
    """The names under which a receipt may give this id, most exact first: the text itself, then each integer it
    may stand for. A receipt's id is looked up by the same keys (`recall`)."""
    text = smsc_id.strip()
    keys = [f"t:{text.lower()}"]
    keys += [k for k in (f"n:{n}" for n in id_readings(text)) if k not in keys]
    return keys


# What the relay remembers of ids sent before (a restart, another relay's bind): the keys of `ref_keys` -> the
# message's key, or None.
Recall = Callable[[list[str]], Awaitable[str | None]]


class MemoryMessageIdMap:
    """In memory, bounded in entries and age (a receipt later than `max_age_s` is not matched). Lost on restart:
    the relay can swap in a persistent MessageIdMap."""

    def __init__(self, max_entries: int = 100_000, max_age_s: float = 2 * 86400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._by_text: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._by_int: dict[int, str] = {}
        self._max, self._age, self._clock = max_entries, max_age_s, clock

    def put(self, smsc_id: str, key: str) -> None:
        now = self._clock()
        self._by_text[smsc_id.strip().lower()] = (now, key)
        for number in id_readings(smsc_id.strip()):
            self._by_int[number] = key
        while self._by_text and (len(self._by_text) > self._max
                                 or next(iter(self._by_text.values()))[0] < now - self._age):
            old, _ = self._by_text.popitem(last=False)
            for number in id_readings(old):
                self._by_int.pop(number, None)

    def get(self, smsc_id: str) -> str | None:
        entry = self._by_text.get(smsc_id.strip().lower())
        if entry is not None:
            return entry[1]
        for number in id_readings(smsc_id.strip()):
            if number in self._by_int:
                return self._by_int[number]
        return None


class _Unconfirmed(Exception):
    """The submit_sm may have reached the SMSC but no resp came: never retried inside the channel."""

    def __init__(self, detail: str, *, bind_lost: bool) -> None:
        super().__init__(detail)
        self.bind_lost = bind_lost


class _NotBound(Exception):
    """No bind within bind_wait_s: the health already says why, the breaker need not count it."""


@dataclass(slots=True)
class _Bind:
    smsc: smpp34.Smsc
    where: str
    lost: asyncio.Event


class SmppSmsChannel:
    name = "sms"

    def __init__(self, settings: SmppSettings, sink: ReplySink | None = None, *,
                 ids: MessageIdMap | None = None, clock: Callable[[], float] | None = None,
                 recall: Recall | None = None) -> None:
        """`sink` gets receipts and replies (or set it later with `set_sink`); `clock`: the relay's (seconds since
        the epoch), so health times agree with what it stores; `recall`: asked for a receipt's id this process
        never sent (the relay keeps each send's `receipt_refs`)."""
        if not settings.hosts:
            raise ValueError("sms.smpp.hosts: at least one SMSC host is needed")
        self._cfg = settings
        self._sink = sink
        self.ids: MessageIdMap = ids or MemoryMessageIdMap()
        self._recall = recall
        self.health = ChannelHealth(self.name, clock=clock or time.time)
        self.breaker = CircuitBreaker(self.health, clock=time.monotonic)
        self._bind: _Bind | None = None
        self._bound = asyncio.Event()
        self._window = asyncio.Semaphore(settings.window)
        self._refs = itertools.count(1)
        self._parts = Reassembly()
        self._tasks: set[asyncio.Task[None]] = set()
        self._submitting = 0
        self._recorded = asyncio.Event()

    def set_sink(self, sink: ReplySink) -> None:
        self._sink = sink

    # ---- the bind ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps one transceiver bind up, host after host, until cancelled."""
        delay = 0.1
        try:
            while True:
                for host, port in self._cfg.hosts:
                    where = f"{host}:{port}"
                    try:
                        client, smsc = await self._connect(host, port)
                    except Exception as exc:  # noqa: BLE001 - any failure to bind means: try the next host
                        self._down(f"bind to {where} failed: {_describe(exc)}")
                        log.warning("SMPP bind failed", extra={"event": "smpp_bind_failed", "smsc": where,
                                                               "error": _describe(exc)})
                        continue
                    delay = 0.1
                    await self._serve(client, smsc, where)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._cfg.reconnect_max_s)
        finally:
            self._bound.clear()
            self._bind = None

    def _down(self, detail: str) -> None:
        self.health.set(HealthState.DOWN, detail)

    async def _connect(self, host: str, port: int) -> tuple[smpp34.Client, smpp34.Smsc]:
        client = smpp34.Client(
            host, port, self._cfg.system_id, self._cfg.password, bind_type="TRX", system_type=self._cfg.system_type,
            window_size=self._cfg.window, connect_timeout_ms=int(self._cfg.connect_timeout_s * 1000),
        )
        async with asyncio.timeout(self._cfg.connect_timeout_s * 2):
            return client, await client.connect()

    async def _serve(self, client: smpp34.Client, smsc: smpp34.Smsc, where: str) -> None:
        bind = _Bind(smsc, where, asyncio.Event())
        self._bind = bind
        self._bound.set()
        self.health.set(HealthState.UP, f"bound to {where}")
        log.info("SMPP bound", extra={"event": "smpp_bound", "smsc": where})
        reason = "connection closed"
        try:
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(self._keep_alive(client))
                reason = await self._listen(smsc)
                keeper.cancel()
        except* Exception as group:  # noqa: BLE001 - a lost session is the reason, never the channel's end
            reason = _describe(group.exceptions[0])
        finally:
            bind.lost.set()
            self._bound.clear()
            self._bind = None
            for task in list(self._tasks):
                task.cancel()
            # whatever stopping it raises, the connection is gone either way
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await client.stop()
        self._down(f"bind to {where} lost: {reason}")
        log.warning("SMPP bind lost", extra={"event": "smpp_bind_lost", "smsc": where, "error": reason})

    async def _keep_alive(self, client: smpp34.Client) -> None:
        while True:
            await asyncio.sleep(self._cfg.enquire_link_s)
            if not await client.is_alive():
                raise ConnectionError("session no longer alive")

    async def _listen(self, smsc: smpp34.Smsc) -> str:
        """Reads deliver_sm until the session ends; returns why it ended."""
        while True:
            event = await smsc.next()
            if isinstance(event, smpp34.Disconnected):
                return "the SMSC closed the session"
            try:
                await self._on_deliver(event)
            except Exception:  # a bad PDU or a failing sink costs this one message, never the bind
                log.exception("deliver_sm not handled", extra={"event": "smpp_deliver_failed"})

    # ---- sending ----------------------------------------------------------------------------------------

    async def send(self, msg: Outgoing) -> SendResult:
        return await self._send(msg, record=True)

    async def _send(self, msg: Outgoing, *, record: bool) -> SendResult:
        if not self.breaker.allow():
            return SendResult.failed(FailureReason.UNREACHABLE, f"circuit open: {self.health.detail}")
        try:
            parts = split_ucs2(msg.body.decode("utf-8", errors="replace"), next(self._refs))
        except ValueError as exc:
            return SendResult.failed(FailureReason.REJECTED, str(exc), permanent=True)
        ids: list[str] = []
        try:
            for part in parts:
                smsc_id = await with_retries(
                    lambda part=part: self._submit(msg, part, record), attempts=self._cfg.attempts,  # type: ignore[misc]
                    budget_s=self._cfg.retry_budget_s, first_wait_s=0.2, max_wait_s=2.0, breaker=self.breaker,
                    log=log, event="smpp_retry",
                )
                ids.append(smsc_id)
        except Transient as exc:
            self.breaker.failed(str(exc))
            return SendResult.failed(exc.reason, _partial(str(exc), ids, len(parts)))
        except _NotBound as exc:
            return SendResult.failed(FailureReason.UNREACHABLE, _partial(str(exc), ids, len(parts)))
        except _Unconfirmed as exc:
            if not exc.bind_lost:  # a lost bind is the health's news already
                self.breaker.failed(str(exc))
            return SendResult.failed(FailureReason.TIMEOUT, _partial(str(exc), ids, len(parts)))
        except _Rejected as exc:
            self.breaker.failed(str(exc), provider_fault=False)
            return SendResult.failed(FailureReason.REJECTED, _partial(str(exc), ids, len(parts)), permanent=True)
        except Exception as exc:  # noqa: BLE001 - whatever else the library raises is this send's failure alone
            self.breaker.failed(_describe(exc))
            return SendResult.failed(FailureReason.UNEXPECTED, _describe(exc))
        self.breaker.succeeded()
        return SendResult.accepted(provider_ref=",".join(ids),
                                   receipt_refs=tuple(dict.fromkeys(k for i in ids for k in ref_keys(i))))

    async def _current_bind(self) -> _Bind:
        try:
            async with asyncio.timeout(self._cfg.bind_wait_s):
                while (bind := self._bind) is None or bind.lost.is_set():
                    await self._bound.wait()
                    await asyncio.sleep(0)
        except TimeoutError:
            raise _NotBound(f"not bound to an SMSC: {self.health.detail}") from None
        return bind

    async def _submit(self, msg: Outgoing, part: Part, record: bool) -> str:
        bind = await self._current_bind()
        async with self._window, self._in_flight():
            submit = asyncio.ensure_future(bind.smsc.submit_sm(
                msg.target, part.short_message, source_addr=self._cfg.source_addr, esm_class=part.esm_class,
                data_coding=part.data_coding, registered_delivery=1,
                validity_period=_relative_validity(msg.expiry_s or self._cfg.validity_period_s),
            ))
            lost = asyncio.ensure_future(bind.lost.wait())
            try:
                done, _ = await asyncio.wait({submit, lost}, timeout=self._cfg.submit_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if submit not in done:
                submit.cancel()
                if lost in done:
                    raise _Unconfirmed(f"no submit_sm_resp before the bind to {bind.where} was lost", bind_lost=True)
                raise _Unconfirmed(f"no submit_sm_resp from {bind.where} within {self._cfg.submit_timeout_s} s",
                                   bind_lost=False)
            try:
                resp = submit.result()
            except Exception as exc:  # noqa: BLE001 - the session broke under this submit
                bind.lost.set()  # later sends wait for the next bind rather than meet the same broken one
                raise _Unconfirmed(f"submit_sm to {bind.where} unconfirmed (bind lost): {_describe(exc)}",
                                   bind_lost=True) from None
            status = resp.command_status
            if status == 0 and resp.message_id and record:
                self.ids.put(resp.message_id, msg.key)
                self._recorded.set()
        if status == 0 and resp.message_id:
            return resp.message_id
        if status == 0:
            raise Transient(FailureReason.UNREACHABLE, f"{bind.where} accepted without a message id")
        if status in THROTTLED:
            raise Transient(FailureReason.RATE_LIMITED, f"SMSC {bind.where}: {status_name(status)}")
        if status in SMSC_FAULT:
            raise Transient(FailureReason.UNREACHABLE, f"SMSC {bind.where}: {status_name(status)}")
        raise _Rejected(f"SMSC {bind.where}: {status_name(status)}")

    @contextlib.asynccontextmanager
    async def _in_flight(self) -> AsyncIterator[None]:
        self._submitting += 1
        try:
            yield
        finally:
            self._submitting -= 1

    async def _key_of(self, smsc_id: str) -> str | None:
        """The key of a receipted message. A fast SMSC's receipt can be read before its submit_sm_resp was
        recorded (two tasks race on one connection): while submits are in flight, it waits for them a little."""
        deadline = time.monotonic() + self._cfg.submit_timeout_s
        while (key := self.ids.get(smsc_id)) is None and self._submitting and time.monotonic() < deadline:
            self._recorded.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._recorded.wait()
        if key is None and self._recall is not None:
            try:
                async with asyncio.timeout(self._cfg.submit_timeout_s):
                    key = await self._recall(ref_keys(smsc_id))
            except Exception as exc:  # noqa: BLE001 - an unmatched receipt is logged by the caller; the bind stays
                log.warning("receipt's message id not recalled", extra={"event": "smpp_recall_failed",
                                                                        "smsc_id": smsc_id, "error": _describe(exc)})
        return key

    # ---- what the SMSC delivers -------------------------------------------------------------------------

    async def _on_deliver(self, event: smpp34.DeliverSmEvent) -> None:
        sink = self._sink
        if sink is None:
            log.warning("deliver_sm before a sink was set: dropped", extra={"event": "smpp_no_sink"})
            return
        if event.esm_class & ESM_RECEIPT:
            await self._on_receipt(sink, event)
            return
        data = event.short_message
        if not data:
            data = next((t.value for t in event.tlvs if t.tag == TLV_MESSAGE_PAYLOAD), b"")
        concat = None
        if event.esm_class & ESM_UDHI:
            concat, data = split_udh(data)
        text = decode_text(data, event.data_coding)
        if concat is not None and concat.total > 1:
            whole = self._parts.add(event.source_addr, event.destination_addr, concat, text)
            if whole is None:
                return
            text = whole
        sender, text = event.source_addr.strip()[:32], clean_text(text)
        message_id = inbound_id(sender, event.destination_addr, text)
        answer = await sink.on_reply(self.name, sender, text, message_id)
        if answer:
            reply = Outgoing(key=f"reply:{message_id}", target=sender, body=answer.encode())
            task = asyncio.create_task(self._answer(reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, reply: Outgoing) -> None:
        result = await self._send(reply, record=False)
        if not result.ok:
            log.warning("answer to an SMS reply not sent", extra={"event": "smpp_answer_failed",
                                                                  "error": result.detail})

    async def _on_receipt(self, sink: ReplySink, event: smpp34.DeliverSmEvent) -> None:
        receipted = next((t.as_string() for t in event.tlvs if t.tag == TLV_RECEIPTED_MESSAGE_ID), None)
        receipt = parse_receipt(event.short_message.decode("latin-1"), receipted)
        if receipt is None:
            log.warning("receipt without a message id", extra={"event": "smpp_receipt_unreadable"})
            return
        key = await self._key_of(receipt.message_id)
        if key is None:
            log.info("receipt for an unknown message", extra={"event": "smpp_receipt_unknown",
                                                              "smsc_id": receipt.message_id})
            return
        error = f"smpp {receipt.stat} err:{receipt.err}" if receipt.delivered is False else None
        await sink.on_receipt(self.name, [k for k in key.split(",") if k], receipt.delivered, receipt.stat, error)


class _Rejected(Exception):
    """The SMSC refused this message for good (its number, its text): the code says why."""


# A redelivered deliver_sm keeps its text and addresses but not its sequence number; smpp34 does not expose the
# SMSC's timestamp, so a 10-minute window stands in for it: a redelivery within the window is recognised, the same
# words sent again later (STOP, START, STOP) are a new message.
INBOUND_WINDOW_S = 600


def inbound_id(sender: str, dest: str, text: str, now: float | None = None) -> str:
    window = int((time.time() if now is None else now) // INBOUND_WINDOW_S)
    digest = hashlib.sha256("\x1f".join([sender, dest, text, str(window)]).encode("utf-8", "replace"))
    return "smpp-" + digest.hexdigest()[:32]


def _relative_validity(seconds: int) -> str:
    """SMPP relative time 'YYMMDDhhmmss000R', at most 99 days."""
    seconds = max(60, min(seconds, 99 * 86400))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def _partial(detail: str, ids: list[str], total: int) -> str:
    return detail if not ids else f"{detail} (after {len(ids)} of {total} parts were accepted)"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
