"""Alert ids that sort in the order they were made (ULID layout: 48-bit milliseconds, 80 bits, Crockford base32).

Within one millisecond the 80-bit part counts up from a random start, so sorting by id is sorting by
acceptance: the store lists newest first by id, without a separate sequence column to index.
"""

from __future__ import annotations

import secrets

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_last = 0


def new_id(now: float) -> str:
    global _last
    value = (int(now * 1000) << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS - 1)
    if value <= _last:  # same millisecond (or the clock stepped back): keep the order anyway
        value = _last + 1
    _last = value
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))
