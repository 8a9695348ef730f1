"""Property-based tests (hypothesis): whatever arrives, the model either accepts a valid report or names the
field; short codes are found however they are typed; an ack link with any character changed is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from relay.domain import short_code
from relay.domain.model import Report, validate_report
from relay.engine.ack_links import AckLinkSigner, BadLink
from relay.engine.engine import content_digest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ENUMS = {
    "uav_type": ["fixed_wing", "multirotor", "helicopter", "missile_like", "unknown"],
    "movement": ["transit", "hovering", "circling", "erratic", "unknown"],
    "altitude": ["low", "medium", "high", "unknown"],
    "speed": ["slow", "fast", "unknown"],
    "sound": ["piston", "electric", "jet", "none", "unknown"],
    "perception": ["seen", "heard", "seen_and_heard", "unknown"],
    "status": ["actual", "exercise", "test"],
    "priority": ["flash", "immediate", "routine"],
}
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=100).map(str.strip)


@st.composite
def valid_reports(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "report_id": draw(st.text(ID_CHARS, min_size=1, max_size=64)),
        "observed_at": (NOW - timedelta(seconds=draw(st.integers(-299, 86_399)))).isoformat(),
        "location": {"lat": draw(st.floats(-90, 90)), "lon": draw(st.floats(-180, 180))},
    }
    optional = {
        "count": st.integers(1, 1000), "heading_deg": st.integers(0, 359), "bearing_deg": st.integers(0, 359),
        "altitude_m": st.integers(0, 10_000), "notes": text,
        **{k: st.sampled_from(v) for k, v in ENUMS.items()},
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if draw(st.booleans()):
        body["location"]["district"] = draw(text)
    return body


@given(valid_reports())
@settings(max_examples=300)
def test_every_valid_report_is_accepted_and_keeps_its_content(body: dict[str, Any]) -> None:
    report = validate_report(json.dumps(body), NOW)
    again = validate_report(json.dumps(report.as_submitted()), NOW)
    assert content_digest(again) == content_digest(report)  # a replay is recognised as the same report


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from([*Report.model_fields, "extra", ""]), json_values, max_size=8))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_object_is_a_report_or_a_list_of_named_problems(body: dict[str, Any]) -> None:
    problems: list[Any] = []
    try:
        validate_report(json.dumps(body, allow_nan=True), NOW)
    except ValidationError as exc:  # anything else escaping would be a crash of the handler
        problems = exc.errors()
    assert all(err["loc"] or err["type"] == "json_invalid" for err in problems)


@pytest.mark.parametrize(("field", "bad"), [("lat", st.floats(90.0001, 1e300)), ("lon", st.floats(-1e300, -180.0001))])
def test_coordinates_outside_the_earth_are_named(field: str, bad: st.SearchStrategy[float]) -> None:
    @given(bad)
    def check(value: float) -> None:
        body = {"report_id": "x", "observed_at": NOW.isoformat(), "location": {"lat": 0, "lon": 0, field: value}}
        with pytest.raises(ValidationError) as err:
            validate_report(json.dumps(body), NOW)
        assert [e["loc"] for e in err.value.errors()] == [("location", field)]

    check()


LOOKALIKE = str.maketrans("ABCEHKMPTXY", "АВСЕНКМРТХУ")


@given(st.text(short_code.ALPHABET, min_size=4, max_size=6), st.booleans(), st.booleans(), text)
def test_a_code_is_found_in_any_reply_however_typed(code: str, lower: bool, cyrillic: bool, noise: str) -> None:
    typed = code.translate(LOOKALIKE) if cyrillic else code
    typed = typed.lower() if lower else typed
    assert code in short_code.find_codes(f"{noise} {typed}, ок")


@given(st.integers(0, 200), st.characters(codec="ascii", categories=("L", "N")))
def test_an_ack_link_with_any_character_changed_is_refused(position: int, replacement: str) -> None:
    signer = AckLinkSigner(b"k" * 32, ttl_s=3600)
    token = signer.token("01ALERTID", "airfield-1", 1_000_000)
    i = position % len(token)
    if token[i] == replacement:
        return
    with pytest.raises(BadLink):
        signer.verify(token[:i] + replacement + token[i + 1:], 1_000_100)


def test_a_link_whose_last_character_differs_only_in_padding_bits_is_refused() -> None:
    signer = AckLinkSigner(b"k" * 32, ttl_s=3600)
    token = signer.token("01ALERTID", "airfield-1", 1_000_000)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    sibling = alphabet[last ^ 1]  # the 32-byte MAC leaves the low 2 bits of the last character unused
    with pytest.raises(BadLink):
        signer.verify(token[:-1] + sibling, 1_000_100)
