"""A phone number and an e-mail address, as the relay accepts them everywhere (reports, desks, the canary)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

# E.164: a plus, a country code without leading zero, at most 15 digits in all (7 at least, for a real number).
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
# Deliberately loose: the SMTP server is the judge of an address; this only keeps out what cannot be one.
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,255}$"

Phone = Annotated[str, StringConstraints(pattern=E164_PATTERN)]
Email = Annotated[str, StringConstraints(pattern=EMAIL_PATTERN)]


def check_phone(number: str) -> str:
    if not re.match(E164_PATTERN, number):
        raise ValueError(f"{number!r} is not an E.164 number (+ and 7..15 digits)")
    return number


def check_email(address: str) -> str:
    if not re.match(EMAIL_PATTERN, address):
        raise ValueError(f"{address!r} is not an e-mail address")
    return address
