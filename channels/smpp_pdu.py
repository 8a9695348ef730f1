"""What an SMPP text is on the wire, apart from any connection: UCS-2 parts with a concatenation header going
out, and the decoding, reassembly and receipt parsing of what comes in. Pure functions, tested without a socket.
"""

from __future__ import annotations

import itertools
import re
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

UCS2 = 8
ESM_UDHI = 0x40  # short_message starts with a user data header (here: concatenation)
ESM_RECEIPT = 0x04  # deliver_sm carries an SMSC delivery receipt
# One UCS-2 SMS holds 140 octets: 70 UTF-16 units alone, 67 beside a 6-octet concatenation header.
SINGLE_UNITS, PART_UNITS = 70, 67
MAX_PARTS = 255

# GSM 03.38 default alphabet (basic table); '\x1b' escapes into the extension table below.
_GSM7 = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
         "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]", 0x40: "|",
             0x65: "€"}


@dataclass(frozen=True, slots=True)
class Part:
    esm_class: int
    data_coding: int
    short_message: bytes


def split_ucs2(text: str, ref: int) -> list[Part]:
    """The text as UCS-2 (UTF-16BE) submit_sm bodies; more than one with an 8-bit-reference UDH each.
    A surrogate pair (an emoji) is never cut between two parts."""
    units = text.encode("utf-16-be")
    if len(units) <= SINGLE_UNITS * 2:
        return [Part(0, UCS2, units)]
    chunks: list[bytes] = []
    start = 0
    while start < len(units):
        end = min(start + PART_UNITS * 2, len(units))
        if end < len(units) and 0xD8 <= units[end - 2] <= 0xDB:  # a high surrogate: keep the pair together
            end -= 2
        chunks.append(units[start:end])
        start = end
    if len(chunks) > MAX_PARTS:
        raise ValueError(f"text needs {len(chunks)} SMS parts, at most {MAX_PARTS} are possible")
    total = len(chunks)
    return [Part(ESM_UDHI, UCS2, bytes([5, 0, 3, ref & 0xFF, total, i + 1]) + chunk)
            for i, chunk in enumerate(chunks)]


def decode_text(data: bytes, data_coding: int) -> str:
    """The text of a short_message per its data_coding: UCS-2, Latin-1, or the GSM default alphabet (unpacked)."""
    if data_coding == UCS2:
        return data.decode("utf-16-be", errors="replace")
    if data_coding == 3:
        return data.decode("latin-1")
    if data_coding == 1:
        return data.decode("ascii", errors="replace")
    out: list[str] = []
    escape = False
    for byte in data:
        if escape:
            out.append(_GSM7_EXT.get(byte, " "))
            escape = False
        elif byte == 0x1B:
            escape = True
        else:
            out.append(_GSM7[byte] if byte < len(_GSM7) else "\ufffd")
    return "".join(out)


def clean_text(text: str) -> str:
    """Drops control and format characters (bidi overrides, zero-widths, NULs) a phone or an attacker put in a
    reply: the relay matches codes in it and logs it. Line breaks stay."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


@dataclass(frozen=True, slots=True)
class Concat:
    ref: int
    total: int
    seq: int


def split_udh(short_message: bytes) -> tuple[Concat | None, bytes]:
    """The concatenation element of a user data header (8- or 16-bit reference) and the payload after it."""
    if not short_message:
        return None, b""
    length = short_message[0]
    header, payload = short_message[1:1 + length], short_message[1 + length:]
    concat: Concat | None = None
    i = 0
    while i + 2 <= len(header):
        iei, size = header[i], header[i + 1]
        value = header[i + 2:i + 2 + size]
        if iei == 0x00 and size == 3 and len(value) == 3:
            concat = Concat(value[0], value[1], value[2])
        elif iei == 0x08 and size == 4 and len(value) == 4:
            concat = Concat(int.from_bytes(value[:2], "big"), value[2], value[3])
        i += 2 + size
    return concat, payload


@dataclass(slots=True)
class _Parts:
    """One copy of one concatenated message, as far as it has come."""

    number: int
    message: tuple[str, str, int, int]  # sender, destination, reference, total
    started: float
    parts: dict[int, str]


class Reassembly:
    """Parts of concatenated incoming SMS until all have come; bounded in groups and in age, so a sender who
    never finishes a message cannot fill memory.

    Parts come in any order, and a message redelivered (the SMSC missed our resp) arrives as a second copy whose
    parts may mix with the first's: a part goes to the oldest copy that lacks it, else it starts another copy.
    Each copy, once whole, is a message of its own (the relay recognises the redelivery by its id)."""

    def __init__(self, max_groups: int = 1000, max_age_s: float = 600.0) -> None:
        self._groups: OrderedDict[int, _Parts] = OrderedDict()  # oldest first
        self._copies: dict[tuple[str, str, int, int], list[int]] = {}  # a message's copies, oldest first
        self._numbers = itertools.count()
        self._max_groups, self._max_age = max_groups, max_age_s

    def add(self, sender: str, dest: str, concat: Concat, text: str) -> str | None:
        """The whole text once the last part of a copy came, else None."""
        now = time.monotonic()
        while self._groups and (len(self._groups) >= self._max_groups
                                or next(iter(self._groups.values())).started < now - self._max_age):
            self._forget(self._groups.popitem(last=False)[1])
        if not 1 <= concat.seq <= concat.total:
            return None
        message = (sender, dest, concat.ref, concat.total)
        copies = self._copies.setdefault(message, [])
        group = next((g for g in (self._groups[n] for n in copies) if concat.seq not in g.parts), None)
        if group is None:
            group = _Parts(next(self._numbers), message, now, {})
            self._groups[group.number] = group
            copies.append(group.number)
        group.parts[concat.seq] = text
        if len(group.parts) < concat.total:
            return None
        del self._groups[group.number]
        self._forget(group)
        return "".join(group.parts[i] for i in range(1, concat.total + 1))

    def _forget(self, group: _Parts) -> None:
        copies = self._copies[group.message]
        copies.remove(group.number)
        if not copies:
            del self._copies[group.message]


_RECEIPT_FIELD = re.compile(r"(id|stat|err):\s*(\S*)", re.IGNORECASE)
FINAL = {"DELIVRD": True, "UNDELIV": False, "REJECTD": False, "EXPIRED": False, "DELETED": False}


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    stat: str
    err: str

    @property
    def delivered(self) -> bool | None:
        """True delivered, False never will be, None not final yet (ENROUTE, ACCEPTD, UNKNOWN)."""
        return FINAL.get(self.stat.upper())


def parse_receipt(text: str, receipted_id: str | None = None) -> Receipt | None:
    """The SMSC's receipt text ('id:... sub:... dlvrd:... stat:DELIVRD err:000 text:...'); the receipted_message_id
    TLV, when present, names the message better than the text does."""
    fields = {name.lower(): value for name, value in _RECEIPT_FIELD.findall(text)}
    message_id = (receipted_id or fields.get("id", "")).strip()
    if not message_id:
        return None
    return Receipt(message_id[:65], fields.get("stat", "UNKNOWN")[:16] or "UNKNOWN", fields.get("err", "")[:16])
