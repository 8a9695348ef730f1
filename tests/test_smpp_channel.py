"""SMS over SMPP against a local SMSC: what a dispatcher's phone gets, what the relay hears back, and that a
misbehaving SMSC costs neither a message nor the channel."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from channels.base import FailureReason, HealthState, Outgoing
from channels.smpp import MemoryMessageIdMap, SmppSettings, SmppSmsChannel
from channels.smpp_pdu import split_ucs2
from tests.support.smsc import ESME_RINVDSTADR, Smsc
from tests.support.wait import eventually, free_port

PHONE = "+79000000001"
SHORT = "Тревога: БПЛА у аэродрома, код K7QX"
LONG = ("Тревога БПЛА. Оператор сообщает: малый беспилотник, высота около 300 м, курс на северо-восток, "
        "в 5 км от полосы. Ответьте кодом K7QX, чтобы подтвердить получение. Повтор каждые 60 секунд.")


@dataclass
class Sink:
    receipts: list[tuple[str, list[str], bool | None, str, str | None]] = field(default_factory=list)
    replies: list[tuple[str, str, str, str]] = field(default_factory=list)
    answer: str | None = "Подтверждено: K7QX"

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        self.replies.append((channel, sender, text, message_id))
        return self.answer

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        self.receipts.append((channel, list(keys), delivered, status, error))


def settings(*ports: int, **overrides: object) -> SmppSettings:
    base: dict[str, object] = dict(
        hosts=tuple(("127.0.0.1", p) for p in ports), system_id="relay", password="secret", source_addr="RELAY",
        enquire_link_s=0.5, submit_timeout_s=1.0, bind_wait_s=3.0, reconnect_max_s=0.3, retry_budget_s=5.0,
        connect_timeout_s=1.0,
    )
    base.update(overrides)
    return SmppSettings(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(channel: SmppSmsChannel) -> AsyncIterator[SmppSmsChannel]:
    task = asyncio.create_task(channel.run())
    try:
        yield channel
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    server = Smsc()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def sink() -> Sink:
    return Sink()


@pytest.fixture
async def channel(smsc: Smsc, sink: Sink) -> AsyncIterator[SmppSmsChannel]:
    async with running(SmppSmsChannel(settings(smsc.port), sink)) as ch:
        await eventually(lambda: ch.health.state is HealthState.UP, what="bound")
        yield ch


async def test_cyrillic_alert_reaches_the_phone_whole_short_and_long(channel: SmppSmsChannel, smsc: Smsc) -> None:
    short = await channel.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
    long = await channel.send(Outgoing(key="d2", target=PHONE, body=LONG.encode()))
    assert short.ok and long.ok, (short, long)
    assert smsc.texts() == [(PHONE, SHORT), (PHONE, LONG)]
    assert all(s.data_coding == 8 for s in smsc.submits)
    assert len(smsc.submits) == 1 + 3  # 187 characters: three UCS-2 parts of at most 67
    assert all(s.esm_class & 0x40 for s in smsc.submits[1:])
    assert long.provider_ref is not None and len(long.provider_ref.split(",")) == 3


@pytest.mark.parametrize(("id_style", "receipt_id_style"), [("hex", "dec"), ("dec", "hex"), ("hex", "same")])
async def test_receipts_reach_the_relay_with_the_message_keys(
        smsc: Smsc, sink: Sink, id_style: str, receipt_id_style: str) -> None:
    smsc.id_style, smsc.receipt_id_style = id_style, receipt_id_style
    async with running(SmppSmsChannel(settings(smsc.port), sink)) as ch:
        result = await ch.send(Outgoing(key="d1,d2", target=PHONE, body=SHORT.encode()))
        assert result.ok
        await eventually(lambda: sink.receipts, what="receipt")
    assert sink.receipts == [("sms", ["d1", "d2"], True, "DELIVRD", None)]


async def test_late_undelivered_and_enroute_receipts(channel: SmppSmsChannel, smsc: Smsc, sink: Sink) -> None:
    smsc.receipts = "never"
    result = await channel.send(Outgoing(key="d7", target=PHONE, body=SHORT.encode()))
    assert result.ok and result.provider_ref
    await smsc.send_receipt(smsc.receipt_id(result.provider_ref), "ENROUTE")
    await eventually(lambda: sink.receipts, what="ENROUTE receipt")  # smpp34 does not promise the order of two
    await smsc.send_receipt(smsc.receipt_id(result.provider_ref), "UNDELIV", err="001")
    await smsc.send_receipt("ffff", "DELIVRD")  # nobody's message: ignored
    await eventually(lambda: len(sink.receipts) == 2, what="two receipts")
    assert sink.receipts[0][1:4] == (["d7"], None, "ENROUTE")
    assert sink.receipts[1][1:] == (["d7"], False, "UNDELIV", "smpp UNDELIV err:001")


async def test_throttling_is_retried_and_the_message_goes_once(channel: SmppSmsChannel, smsc: Smsc) -> None:
    smsc.throttle_next = 2
    result = await channel.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
    assert result.ok
    assert [s.message_id is not None for s in smsc.submits] == [False, False, True]
    assert channel.health.state is HealthState.UP


async def test_endless_throttling_fails_rate_limited_and_retryable(smsc: Smsc, sink: Sink) -> None:
    smsc.throttle_next = 1000
    async with running(SmppSmsChannel(settings(smsc.port, attempts=3), sink)) as ch:
        result = await ch.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
        assert (result.ok, result.reason, result.permanent) == (False, FailureReason.RATE_LIMITED, False)
        assert "ESME_RTHROTTLED" in result.detail
        assert ch.health.state is HealthState.DEGRADED
    assert len(smsc.submits) == 3


async def test_a_refused_number_fails_for_good_with_its_code(channel: SmppSmsChannel, smsc: Smsc) -> None:
    smsc.fail_with = ESME_RINVDSTADR
    result = await channel.send(Outgoing(key="d1", target="+0", body=SHORT.encode()))
    assert (result.ok, result.reason, result.permanent) == (False, FailureReason.REJECTED, True)
    assert "ESME_RINVDSTADR (0x0000000b)" in result.detail
    assert len(smsc.submits) == 1


async def test_a_silent_smsc_times_the_send_out_retryable(channel: SmppSmsChannel, smsc: Smsc) -> None:
    smsc.silent = True
    result = await channel.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
    assert (result.ok, result.reason, result.permanent) == (False, FailureReason.TIMEOUT, False)
    assert "no submit_sm_resp" in result.detail
    assert len(smsc.submits) == 1  # never resent inside the channel: the relay decides, under the same key


async def test_bind_lost_mid_send_fails_retryable_and_the_resend_goes_after_the_rebind(
        channel: SmppSmsChannel, smsc: Smsc, sink: Sink) -> None:
    smsc.drop_after = 1  # the SMSC reads the submit, then the line is cut before its resp
    first = await channel.send(Outgoing(key="d9", target=PHONE, body=SHORT.encode()))
    assert (first.ok, first.reason, first.permanent) == (False, FailureReason.TIMEOUT, False)
    assert "before the bind" in first.detail or "unconfirmed" in first.detail, first.detail
    # The relay's retry: the same key again. It waits for the new bind, goes once, and its receipt names d9.
    again = await channel.send(Outgoing(key="d9", target=PHONE, body=SHORT.encode()))
    assert again.ok, again
    assert len(smsc.binds) == 2
    assert [(s.dest, s.message_id is not None) for s in smsc.submits] == [(PHONE, False), (PHONE, True)]
    await eventually(lambda: sink.receipts, what="receipt")
    assert sink.receipts[0][1:3] == (["d9"], True)


async def test_sends_wait_for_the_bind_and_fail_unreachable_without_one(sink: Sink) -> None:
    port = free_port()  # nothing listens there
    async with running(SmppSmsChannel(settings(port, bind_wait_s=0.5), sink)) as ch:
        result = await ch.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
        assert (result.ok, result.reason, result.permanent) == (False, FailureReason.UNREACHABLE, False)
        assert ch.health.state is HealthState.DOWN and "refused" in ch.health.detail.lower(), ch.health.detail


async def test_failover_to_the_second_smsc_when_the_first_refuses(smsc: Smsc, sink: Sink) -> None:
    async with running(SmppSmsChannel(settings(free_port(), smsc.port), sink)) as ch:
        result = await ch.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
        assert result.ok, result
        assert f"127.0.0.1:{smsc.port}" in ch.health.detail
    assert smsc.texts() == [(PHONE, SHORT)]


async def test_a_wrong_password_keeps_the_channel_down_and_names_it(smsc: Smsc, sink: Sink) -> None:
    async with running(SmppSmsChannel(settings(smsc.port, password="wrong"), sink)) as ch:
        await eventually(lambda: len(smsc.binds) >= 2, what="bind attempts")
        assert ch.health.state is HealthState.DOWN
        assert "bind to" in ch.health.detail


async def test_incoming_reply_reaches_the_relay_and_the_answer_goes_back(
        channel: SmppSmsChannel, smsc: Smsc, sink: Sink) -> None:
    await smsc.deliver(PHONE, "RELAY", "к7qх принято")
    await eventually(lambda: sink.replies, what="reply")
    assert sink.replies[0][:3] == ("sms", PHONE, "к7qх принято")
    assert sink.replies[0][3].startswith("smpp-")
    await eventually(lambda: smsc.texts() == [(PHONE, "Подтверждено: K7QX")], what="answer sent back")
    assert sink.receipts == []  # the answer's own receipt is no delivery of the relay's


async def test_a_long_incoming_reply_is_reassembled_and_a_redelivery_keeps_its_id(
        channel: SmppSmsChannel, smsc: Smsc, sink: Sink) -> None:
    sink.answer = None
    await smsc.deliver(PHONE, "RELAY", LONG, ref=41)
    await smsc.deliver(PHONE, "RELAY", LONG, ref=41)  # the SMSC delivers it again (our resp was late)
    await eventually(lambda: len(sink.replies) == 2, what="two replies")
    assert [r[2] for r in sink.replies] == [LONG, LONG]
    assert sink.replies[0][3] == sink.replies[1][3]


async def test_hostile_smsc_input_leaves_the_channel_serving(channel: SmppSmsChannel, smsc: Smsc, sink: Sink) -> None:
    sink.answer = None
    await smsc.deliver(PHONE, "RELAY", "K7QX\u202e\u200b\x00\x07 ок")
    await eventually(lambda: sink.replies, what="reply")
    assert sink.replies[0][2] == "K7QX ок"
    # a flood of replies: every one read and acknowledged
    for i in range(300):
        await smsc.deliver(PHONE, "RELAY", f"флуд {i}")
    await eventually(lambda: len(sink.replies) == 301, what="flood read")
    # a half part of a concatenated reply that never completes: nothing, no crash
    await smsc.deliver_raw(__import__("smpp34").DeliverSm(PHONE, "RELAY", split_ucs2(LONG, 99)[0].short_message,
                                                          esm_class=0x40, data_coding=8).encode())
    # garbage, then a PDU claiming to be 2 GB long: the bind is lost, the channel binds again and serves
    await smsc.deliver_raw(b"\x00\x00\x00\x10\xde\xad\xbe\xef\x00\x00\x00\x00\x00\x00\x00\x01")
    await smsc.deliver_raw(struct.pack(">IIII", 0x7FFFFFFF, 0x05, 0, 5) + b"x" * 64)
    await eventually(lambda: len(smsc.binds) >= 2 and channel.health.state is HealthState.UP, what="bound again")
    result = await channel.send(Outgoing(key="d1", target=PHONE, body=SHORT.encode()))
    assert result.ok, result
    assert channel.health.state is HealthState.UP


def test_message_ids_match_hex_against_decimal_both_ways() -> None:
    ids = MemoryMessageIdMap()
    ids.put("1A2B", "d1")
    ids.put("1000", "d2")
    assert ids.get("6699") == "d1"  # 0x1a2b written in decimal
    assert ids.get("1a2b") == "d1"
    assert ids.get("3e8") == "d2"  # 1000 written in hex
    assert ids.get("zz") is None


def test_the_id_map_is_bounded() -> None:
    ids = MemoryMessageIdMap(max_entries=3)
    for i in range(10):
        ids.put(f"m{i}", f"d{i}")
    assert ids.get("m0") is None and ids.get("m9") == "d9"


def test_parts_in_any_order_and_a_redelivery_mixed_into_them_make_each_copy_whole() -> None:
    from channels.smpp_pdu import Concat, Reassembly

    parts = Reassembly()

    def add(seq: int, sender: str = PHONE, ref: int = 41) -> str | None:
        return parts.add(sender, "RELAY", Concat(ref, 3, seq), f"<{seq}>")

    # the order smpp34 handed two copies of one message to the channel under load (seen in CI)
    assert [add(n) for n in (1, 2, 1, 3, 3, 2)] == [None, None, None, "<1><2><3>", None, "<1><2><3>"]
    # a part sent twice within one copy: the copy is still whole once its last part comes
    assert [add(n) for n in (2, 2, 1, 3)] == [None, None, None, "<1><2><3>"]
    # another sender's message with the same reference is another message
    assert [add(1), add(1, sender="+79000000002"), add(2), add(3)] == [None, None, None, "<1><2><3>"]
    assert parts.add(PHONE, "RELAY", Concat(41, 3, 4), "x") is None  # a part past the total: ignored


def test_unfinished_messages_are_bounded() -> None:
    from channels.smpp_pdu import Concat, Reassembly

    parts = Reassembly(max_groups=3)
    for ref in range(10):
        parts.add(PHONE, "RELAY", Concat(ref, 2, 1), "a")
    assert parts.add(PHONE, "RELAY", Concat(0, 2, 2), "b") is None  # its first part was dropped for newer ones
    assert parts.add(PHONE, "RELAY", Concat(9, 2, 2), "b") == "ab"


async def test_at_most_window_submits_are_outstanding(smsc: Smsc, sink: Sink) -> None:
    smsc.silent = True  # nothing is ever answered: every submit stays outstanding until it times out
    async with running(SmppSmsChannel(settings(smsc.port, window=3, submit_timeout_s=1.0), sink)) as ch:
        await eventually(lambda: ch.health.state is HealthState.UP, what="bound")
        sends = [asyncio.create_task(ch.send(Outgoing(key=f"d{i}", target=PHONE, body=SHORT.encode())))
                 for i in range(5)]
        await eventually(lambda: len(smsc.submits) == 3, what="three outstanding")
        assert len(smsc.submits) == 3  # the other two wait for a free slot in the window
        results = await asyncio.gather(*sends)
    assert len(smsc.submits) == 5
    assert all((r.ok, r.reason, r.permanent) == (False, FailureReason.TIMEOUT, False) for r in results)


def test_incoming_texts_decode_per_data_coding() -> None:
    from channels.smpp_pdu import decode_text, parse_receipt

    assert decode_text("Код К7QХ".encode("utf-16-be"), 8) == "Код К7QХ"
    assert decode_text(b"K7QX ok\x1b\x65", 0) == "K7QX ok€"  # GSM 03.38, unpacked, with an escape
    assert decode_text("Ærø".encode("latin-1"), 3) == "Ærø"
    receipt = parse_receipt("id:0A1B sub:001 dlvrd:000 stat:EXPIRED err:004 text:")
    assert receipt is not None and (receipt.message_id, receipt.delivered) == ("0A1B", False)
    assert parse_receipt("stat:DELIVRD") is None
