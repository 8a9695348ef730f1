"""The feed's `since` and paging bounds, and the [cap] config: what a polling system may send, and what a site
may write, are checked and named."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.domain import ids
from relay.domain.cap_feed import SINCE_MAX_LEN, first_id_at, id_before, parse_since
from relay.domain.config import ConfigError, load_settings
from relay.domain.ids import new_id

NOW = datetime(2026, 11, 30, 10, 24, 56, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("given", "expected"), [
    ("2026-11-30T10:24:56Z", NOW),
    ("2026-11-30T13:24:56+03:00", NOW),
    ("2026-11-30t10:24:56z", NOW),
    ("2026-11-30 10:24:56+00:00", NOW),  # RFC 3339 allows a space for the T
    ("2026-11-30T13:24:56 03:00", NOW),  # an unescaped '+' in a query string arrives as a space
    ("2026-11-30T10:24:56.123456789Z", NOW + 0.123456),  # nanoseconds: microseconds kept
    ("2026-11-30T10:24:56-00:00", NOW),
    ("1970-01-01T00:00:00Z", 0.0),
    ("0001-01-01T00:00:00+23:59", 0.0),  # far past: everything there is
])
def test_since_takes_every_rfc3339_form_with_an_offset(given: str, expected: float) -> None:
    assert parse_since(given, NOW) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("given", "problem"), [
    ("", "RFC 3339"),
    ("garbage", "RFC 3339"),
    ("2026-11-30T10:24:56", "no UTC offset"),
    ("2026-11-30", "RFC 3339"),
    ("20261130T102456Z", "RFC 3339"),  # ISO 8601 basic form: Python would take it, RFC 3339 does not
    ("2026-13-30T10:24:56Z", "not a real date"),
    ("2026-02-30T10:24:56Z", "not a real date"),
    ("2026-11-30T24:00:00Z", "not a real date"),
    ("2026-11-30T23:59:60Z", "not a real date"),  # a leap second: no time the relay stores
    ("2026-11-30T10:24:56+24:00", "not a real date"),
    ("٢٠٢٦-١١-٣٠T10:24:56Z", "RFC 3339"),  # Arabic-Indic digits are digits to Python's \\d
    ("2026-11-30T10:24:56Z\x00", "RFC 3339"),
    ("2026-11-30T10:24:56Z\n", "RFC 3339"),
    ("\u202e2026-11-30T10:24:56Z", "RFC 3339"),
    ("2026-11-30T10:24:56Z" + "0" * 10_000, f"at most {SINCE_MAX_LEN}"),
    ("2026-12-02T10:24:56Z", "in the future"),
    ("9999-12-31T23:59:59-23:59", "in the future"),
])
def test_since_refuses_what_is_not_a_time_and_says_why(given: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_since(given, NOW)


def test_id_bounds_bracket_the_ids_made_in_that_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    for t in (0.0, NOW, NOW + 0.0005, NOW + 0.999):
        monkeypatch.setattr(ids, "_last", 0)  # new_id never goes back in time: start each from nothing
        made = new_id(t)
        assert id_before(t) < made < first_id_at(t + 0.001)
        assert first_id_at(t) <= made
    assert id_before(-5) == "0" * 26


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cap_config_has_defaults_and_takes_a_site_sender(tmp_path: Path) -> None:
    assert load_settings(_config(tmp_path, "")).cap.sender == "uav-relay@localhost"
    s = load_settings(_config(tmp_path, '[cap]\nsender = "uav-relay@lipetsk.112.example"\nfeed_delay_s = 0.5\n'))
    assert (s.cap.sender, s.cap.feed_delay_s) == ("uav-relay@lipetsk.112.example", 0.5)


@pytest.mark.parametrize(("line", "key"), [
    ('sender = "uav relay"', "cap.sender"),
    ('sender = "a,b"', "cap.sender"),
    ('sender = "a<b"', "cap.sender"),
    ('sender = ""', "cap.sender"),
    ('sender_name = "x\\u0000"', "cap.sender_name"),
    ("feed_delay_s = -1", "cap.feed_delay_s"),
    ("unknown = 1", "cap.unknown"),
])
def test_a_bad_cap_config_is_named_by_its_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_config(tmp_path, f"[cap]\n{line}\n"))
    assert any(p.startswith(f"{key}:") for p in err.value.problems), err.value.problems
