"""The one Russian vocabulary: what the consoles show and what SMS and e-mail say use the same words.

The words live in `relay/consoles/strings_ru.json` (the consoles load it as it is); the renderers read it here.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

_STRINGS: dict[str, Any] = json.loads(
    resources.files("relay").joinpath("consoles", "strings_ru.json").read_text(encoding="utf-8")
)

COMPASS: list[str] = _STRINGS["compass"]
_ENUMS: dict[str, dict[str, str]] = _STRINGS["enums"]
_SHORT: dict[str, dict[str, str]] = _STRINGS["sms_short"]
_ALERT: dict[str, str] = _STRINGS["alert"]


def word(field: str, value: str, *, unknown: str = "") -> str:
    """The word for an enum value of the report (`uav_type`, `sound`, ...); `unknown` for `unknown` or none."""
    if value == "unknown":
        return unknown
    return _ENUMS[field].get(value, unknown)


def short(field: str, value: str) -> str:
    """The shorter word an SMS uses where two segments must hold everything."""
    return _SHORT[field].get(value, "")


def marks(status: str, priority: str) -> str:
    """What must stand before the text: `УЧЕНИЯ! `, `ТЕСТ! `, `СРОЧНО! ` (an exercise must never read as real)."""
    words = [_ALERT[status]] if status in ("exercise", "test") else []
    if priority == "flash":
        words.append(_ALERT["flash"])
    return "".join(f"{w}! " for w in words)


def compass(deg: int) -> str:
    return COMPASS[round(deg / 45) % 8]


def label(key: str) -> str:
    """A field's label on an alert card, the same in an e-mail (`place`, `type`, `notes`, ...)."""
    return _ALERT[key]
