"""Alert ids that sort in the order they were made (ULID layout: 48-bit milliseconds, 80 bits, Crockford base32).

Within one millisecond the 80-bit part counts up from a random start, so sorting by id is sorting by
acceptance: the store lists newest first by id, without a separate sequence column to index.
"""

from __future__ import annotations

import base64
import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# base32's own alphabet, mapped onto Crockford's: the encoding runs in C instead of 26 divmods in Python
_FROM_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
_RANDOM_BITS = 80
_last = 0


def new_id(now: float) -> str:
    global _last
    value = (int(now * 1000) << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS - 1)
    if value <= _last:  # same millisecond (or the clock stepped back): keep the order anyway
        value = _last + 1
    _last = value
    # 26 characters are 130 bits: shifted to the top of 160 bits (20 bytes, 32 base32 characters), the first 26
    # characters are the id's, most significant first
    return base64.b32encode((value << 30).to_bytes(20, "big")).translate(_FROM_B32)[:26].decode()
