"""An SMSC on 127.0.0.1 for the SMPP channel's tests, with the failure modes of Jasmin's SMSC simulator and the
ones an operator's SMSC shows in the field: wrong password, error status, throttling, silence, a dropped
connection, late or no receipts, incoming SMS (UCS-2, multipart), garbage.

Its own small server (smpp34's server cannot stay silent, drop a connection or check a password); submit_sm is
decoded and deliver_sm encoded with smpp34's codec, the rest is a 16-octet header and C strings.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import dataclass, field

import smpp34

from channels.smpp_pdu import ESM_UDHI, decode_text, split_ucs2, split_udh

BIND_TRX, SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK = 0x09, 0x04, 0x05, 0x06, 0x15
RESP = 0x80000000
ESME_RINVPASWD, ESME_RTHROTTLED, ESME_RINVDSTADR, ESME_RMSGQFUL = 0x0E, 0x58, 0x0B, 0x14


def pdu(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, status, seq) + body


@dataclass
class Submitted:
    seq: int
    dest: str
    source: str
    data_coding: int
    esm_class: int
    short_message: bytes
    message_id: str | None  # None: not answered (silent, dropped, error)


@dataclass
class Smsc:
    system_id: str = "relay"
    password: str = "secret"
    id_style: str = "hex"  # the message id in submit_sm_resp: "hex" or "dec"
    receipt_id_style: str = "same"  # in the receipt: "same", "hex" or "dec" (SMSCs differ from their resp)
    receipts: str = "auto"  # "auto": DELIVRD right after the resp; "never": only on send_receipt()
    throttle_next: int = 0  # ESME_RTHROTTLED for this many submits
    fail_with: int = 0  # answer every submit with this status (0: accept)
    silent: bool = False  # read submits, never answer
    drop_after: int | None = None  # close the connection on receiving the n-th submit (counted from now)
    port: int = 0
    submits: list[Submitted] = field(default_factory=list)
    binds: list[tuple[str, str]] = field(default_factory=list)
    deliver_resps: list[int] = field(default_factory=list)  # command_status of each deliver_sm_resp
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0x1A2B0))
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def bound(self) -> int:
        return sum(1 for w in self._writers if not w.is_closing())

    def drop(self) -> None:
        """Close every connection at once, as a crashing SMSC or a cut line would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    # ---- what it heard ----------------------------------------------------------------------------------

    def texts(self) -> list[tuple[str, str]]:
        """(destination, text) of each submitted message, concatenated parts joined, in order of completion."""
        out: list[tuple[str, str]] = []
        groups: dict[tuple[str, int], dict[int, str]] = {}
        for s in self.submits:
            data, concat = s.short_message, None
            if s.esm_class & ESM_UDHI:
                concat, data = split_udh(data)
            text = decode_text(data, s.data_coding)
            if concat is None:
                out.append((s.dest, text))
                continue
            parts = groups.setdefault((s.dest, concat.ref), {})
            parts[concat.seq] = text
            if len(parts) == concat.total:
                out.append((s.dest, "".join(parts[i] for i in sorted(parts))))
                del groups[(s.dest, concat.ref)]
        return out

    # ---- what it says -----------------------------------------------------------------------------------

    async def deliver(self, source: str, dest: str, text: str, *, ref: int = 7) -> None:
        """An SMS from a phone, in UCS-2; a long one in concatenated parts."""
        for part in split_ucs2(text, ref):
            await self.deliver_raw(smpp34.DeliverSm(source, dest, part.short_message, esm_class=part.esm_class,
                                                    data_coding=part.data_coding,
                                                    sequence_number=next(self._seq)).encode())

    async def send_receipt(self, message_id: str, stat: str = "DELIVRD", *, dest: str = "", err: str = "000") -> None:
        text = f"id:{message_id} sub:001 dlvrd:001 submit date:2611300800 done date:2611300801 stat:{stat} err:{err}"
        await self.deliver_raw(smpp34.DeliverSm(dest, "RELAY", text.encode(), esm_class=0x04,
                                                sequence_number=next(self._seq)).encode())

    async def deliver_raw(self, data: bytes) -> None:
        """Any bytes to every bound ESME (garbage included)."""
        for writer in list(self._writers):
            writer.write(data)
            await writer.drain()

    def receipt_id(self, message_id: str) -> str:
        number = int(message_id, 16 if self.id_style == "hex" else 10)
        return {"hex": f"{number:x}", "dec": str(number)}.get(self.receipt_id_style, message_id)

    # ---- the server -------------------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bound = False
        try:
            while True:
                header = await reader.readexactly(16)
                length, command, status, seq = struct.unpack(">IIII", header)
                if not 16 <= length <= 70_000:
                    break
                body = await reader.readexactly(length - 16)
                if command == BIND_TRX:
                    system_id, password = (part.decode("latin-1") for part in body.split(b"\0")[:2])
                    self.binds.append((system_id, password))
                    ok = (system_id, password) == (self.system_id, self.password)
                    writer.write(pdu(BIND_TRX | RESP, 0 if ok else ESME_RINVPASWD, seq, b"SIM\0"))
                    if not ok:
                        await writer.drain()
                        break
                    bound = True
                    self._writers.append(writer)
                elif command == ENQUIRE_LINK:
                    writer.write(pdu(ENQUIRE_LINK | RESP, 0, seq))
                elif command == UNBIND:
                    writer.write(pdu(UNBIND | RESP, 0, seq))
                    await writer.drain()
                    break
                elif command == DELIVER_SM | RESP:
                    self.deliver_resps.append(status)
                elif command == SUBMIT_SM and bound and not self._submit(writer, seq, header + body):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.transport.abort()

    def _submit(self, writer: asyncio.StreamWriter, seq: int, data: bytes) -> bool:
        """Answers one submit_sm; False when the connection is to be dropped."""
        sm = smpp34.decode(data)
        assert isinstance(sm, smpp34.SubmitSm)
        record = Submitted(seq, sm.destination_addr, sm.source_addr, sm.data_coding, sm.esm_class,
                           sm.short_message, None)
        self.submits.append(record)
        if self.drop_after is not None:
            self.drop_after -= 1
            if self.drop_after <= 0:
                self.drop_after = None
                return False
        if self.silent:
            return True
        if self.throttle_next > 0:
            self.throttle_next -= 1
            writer.write(pdu(SUBMIT_SM | RESP, ESME_RTHROTTLED, seq))
            return True
        if self.fail_with:
            writer.write(pdu(SUBMIT_SM | RESP, self.fail_with, seq))
            return True
        number = next(self._ids)
        record.message_id = f"{number:x}" if self.id_style == "hex" else str(number)
        writer.write(pdu(SUBMIT_SM | RESP, 0, seq, record.message_id.encode() + b"\0"))
        if self.receipts == "auto":
            task = asyncio.create_task(self.send_receipt(self.receipt_id(record.message_id), dest=sm.destination_addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True
