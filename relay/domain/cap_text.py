"""Text that may go into an XML 1.0 document, whatever a report holds.

Reports are normalised at intake (relay.domain.text), but a CAP document must be valid for every stored report,
also one stored before a rule was tightened, and for text the relay composes around it. XML 1.0 forbids the C0
controls but tab, newline and carriage return, lone surrogates (JSON can carry them as escapes) and U+FFFE/U+FFFF;
lxml refuses such a string outright, which would turn one hostile district into a failed request.
"""

from __future__ import annotations

import re

from relay.domain.text import normalise

# Everything XML 1.0 (5th ed., production [2] Char) does not allow, plus the C1 controls and the other
# noncharacters it discourages (a consumer may refuse them).
_NOT_XML = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
    "\U0001fffe\U0001ffff\U0002fffe\U0002ffff\U0003fffe\U0003ffff\U0004fffe\U0004ffff"
    "\U0005fffe\U0005ffff\U0006fffe\U0006ffff\U0007fffe\U0007ffff\U0008fffe\U0008ffff"
    "\U0009fffe\U0009ffff\U000afffe\U000affff\U000bfffe\U000bffff\U000cfffe\U000cffff"
    "\U000dfffe\U000dffff\U000efffe\U000effff\U000ffffe\U000fffff\U0010fffe\U0010ffff]"
)


def xml_text(text: str, *, multiline: bool = False) -> str:
    """`text` normalised as the relay shows it everywhere (no controls, no bidi overrides; line breaks only
    with `multiline`), then without anything XML 1.0 cannot carry."""
    return _NOT_XML.sub("", normalise(_NOT_XML.sub("", text), multiline=multiline))
