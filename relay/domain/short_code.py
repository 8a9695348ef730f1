"""Short codes: what a dispatcher reads off an SMS or screen and types back to acknowledge."""

from __future__ import annotations

import secrets

# No 0/O and no 1/I/L: a code read aloud or typed from a small screen must not be ambiguous.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
MIN_LENGTH, MAX_LENGTH = 4, 6

# A dispatcher may answer on a Russian keyboard: these Cyrillic letters look like Latin ones.
_CYRILLIC_LOOKALIKES = str.maketrans("АВСЕНКМРТХУ", "ABCEHKMPTXY")


def new_code(length: int = MIN_LENGTH) -> str:
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"short code length must be {MIN_LENGTH}..{MAX_LENGTH}")
    # One draw over every code of this length (uniform, as a draw per character is), written in base 31: one
    # getrandom call instead of one per character.
    n = secrets.randbelow(len(ALPHABET) ** length)
    chars = []
    for _ in range(length):
        n, digit = divmod(n, len(ALPHABET))
        chars.append(ALPHABET[digit])
    return "".join(chars)


def normalize(text: str) -> str:
    """Upper-case, with Cyrillic look-alikes read as the Latin letters they look like."""
    return text.upper().translate(_CYRILLIC_LOOKALIKES)


def find_codes(text: str) -> list[str]:
    """Every word of a reply that could be a short code, normalised, in order."""
    words = "".join(c if c.isalnum() else " " for c in normalize(text)).split()
    return [w for w in words if MIN_LENGTH <= len(w) <= MAX_LENGTH and all(c in ALPHABET for c in w)]
