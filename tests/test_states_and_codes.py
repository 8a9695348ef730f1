"""Delivery and alert state machines, and short codes as a dispatcher types them."""

from __future__ import annotations

import re

import pytest

from relay.domain import short_code
from relay.domain.states import (
    ALERT_TRANSITIONS,
    DELIVERY_TRANSITIONS,
    AlertState,
    DeliveryState,
    IllegalTransition,
    check_delivery,
)

D = DeliveryState


def test_every_state_has_its_transitions_listed() -> None:
    assert set(DELIVERY_TRANSITIONS) == set(DeliveryState)
    assert set(ALERT_TRANSITIONS) == set(AlertState)


@pytest.mark.parametrize(
    ("old", "new"),
    [(D.QUEUED, D.SENT), (D.QUEUED, D.DELIVERED), (D.CANCELLED, D.SENDING), (D.DELIVERED, D.QUEUED),
     (D.SENT, D.QUEUED)],
)
def test_illegal_delivery_changes_are_refused(old: DeliveryState, new: DeliveryState) -> None:
    with pytest.raises(IllegalTransition):
        check_delivery(old, new)


def test_an_acknowledged_alert_stays_acknowledged() -> None:
    assert ALERT_TRANSITIONS[AlertState.ACKNOWLEDGED] == frozenset()
    assert AlertState.ACKNOWLEDGED in ALERT_TRANSITIONS[AlertState.UNACKNOWLEDGED]  # a late ack still counts


def test_codes_use_no_look_alike_characters() -> None:
    assert not set("01OIL") & set(short_code.ALPHABET)
    codes = {short_code.new_code() for _ in range(2000)}
    assert all(re.fullmatch(f"[{short_code.ALPHABET}]{{4}}", c) for c in codes)
    assert len(codes) > 1900  # random, not a sequence
    assert len(short_code.new_code(6)) == 6
    with pytest.raises(ValueError, match="length"):
        short_code.new_code(7)


@pytest.mark.parametrize(
    ("reply", "codes"),
    [
        ("K7QX", ["K7QX"]),
        ("k7qx", ["K7QX"]),
        ("К7QХ", ["K7QX"]),  # Cyrillic К and Х from a Russian keyboard
        ("ок, принято: ТВ3Р", ["TB3P"]),
        ("АВСЕНКМРТХУ", []),  # 11 letters: too long for a code
        ("ack 0O1I", []),  # look-alikes are not in the alphabet
        ("H2E4 и M5C7", ["H2E4", "M5C7"]),
    ],
)
def test_codes_are_found_in_replies_however_typed(reply: str, codes: list[str]) -> None:
    assert short_code.find_codes(reply) == codes
