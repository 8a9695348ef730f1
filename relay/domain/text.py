"""Free text from people and systems outside the relay, made safe to store, show, compare and send.

One function for every path (the report model, acks from every channel, the renderers): a district pasted from
a 112 system with a line break, a vertical tab or U+2028 in it must not break an e-mail header, and a
right-to-left override in a name must not turn the times around it on a dispatcher's screen.
"""

from __future__ import annotations

import re
import unicodedata

# Line and paragraph separators of every convention a pasted text may carry.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# Embeddings, overrides and isolates reorder the text around them; the marks (LRM, RLM, ALM) steer it too.
_BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"

_TO_SPACE = {ord(c): " " for c in _LINE_BREAKS + "\t"}
_TO_NEWLINE = {ord(c): "\n" for c in _LINE_BREAKS} | {ord("\t"): " "}
_DROPPED = {
    # C0 but the newline, which only `multiline` keeps (the line breaks and tab are mapped before this applies)
    **{cp: None for cp in range(0x00, 0x20) if cp != 0x0A},
    0x7F: None,
    **{cp: None for cp in range(0x80, 0xA0)},  # C1
    **{ord(c): None for c in _BIDI_CONTROLS},
}
_CRLF = re.compile(r"\r\n")


def normalise(text: str, *, multiline: bool = False) -> str:
    """NFC text without control characters: line breaks and tabs become a space (with `multiline`, line breaks
    become one newline each), other C0/C1 and bidirectional controls are dropped, ends stripped."""
    text = _CRLF.sub("\n", text).translate(_TO_NEWLINE if multiline else _TO_SPACE).translate(_DROPPED)
    # NFC last: dropping a control may have put a base letter next to its combining mark again.
    return unicodedata.normalize("NFC", text).strip()


def single_line(text: str) -> str:
    """For a header value or an SMS: one line, nothing a mail or SMS gateway could read as a control."""
    return normalise(text)


def has_controls(text: str, *, multiline: bool = False) -> bool:
    """Whether `normalise` would drop or change a character that is not plain text (config checks use it)."""
    allowed = "\n" if multiline else ""
    return any(
        (unicodedata.category(c) == "Cc" and c not in allowed) or c in _BIDI_CONTROLS or c in _LINE_BREAKS[1:]
        for c in text
    )
