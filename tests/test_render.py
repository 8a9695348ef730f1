"""What the dispatcher reads: SMS that fit two segments, e-mail with the whole report, never the caller."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.domain.config import ConfigError, load_settings
from relay.domain.model import stored_report
from relay.domain.records import AlertRecord
from relay.domain.render import SMS_LIMIT, Renderer
from relay.domain.states import AlertState

MSK = ZoneInfo("Europe/Moscow")


def alert(code: str = "K7QX", priority: str = "immediate", stale: bool = False, **report: Any) -> AlertRecord:
    body: dict[str, Any] = {
        "report_id": "r-1",
        "observed_at": datetime(2026, 11, 25, 9, 5, tzinfo=UTC).isoformat(),
        "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
        "uav_type": "fixed_wing", "count": 2, "heading_deg": 315, "altitude": "low",
        "caller": {"phone": "+79001234567", "name": "Петров"},
    }
    body.update(report)
    return AlertRecord(alert_id="01ALERT", report_id="r-1", operator_id="op-1", short_code=code,
                       state=AlertState.PENDING, priority=priority, stale=stale, created_at=time.time(),
                       report=stored_report(json.dumps(body)), desks=("airfield-1",))  # as a store reads it back


R = Renderer(MSK, {})


def test_sms_says_when_where_what_which_way_how_high_and_the_code() -> None:
    text = R.sms(alert())
    assert text == "БПЛА 12:05 Грязинский район: самол. x2, курс СЗ, низко. Код K7QX, ответьте им"
    assert len(text) <= SMS_LIMIT


def test_the_worst_case_sms_still_fits_two_segments_and_keeps_the_code() -> None:
    worst = alert("ABCDEF", priority="flash", status="exercise", altitude="medium", altitude_m=10000,
                  location={"lat": -89.123456, "lon": -179.123456, "district": "Ж" * 100, "address": "А" * 200})
    text = R.sms(worst)
    assert len(text) <= SMS_LIMIT
    assert "ABCDEF" in text
    assert text.startswith("УЧЕНИЯ! СРОЧНО! БПЛА")


def test_without_a_district_the_place_is_the_address_or_the_coordinates() -> None:
    assert "ул. Ленина, 1" in R.sms(alert(location={"lat": 52.6, "lon": 39.6, "address": "ул. Ленина, 1"}))
    assert "52.600,39.600" in R.sms(alert(location={"lat": 52.6, "lon": 39.6}))


def test_caller_data_never_leaves_in_any_text() -> None:
    a = alert()
    texts = [R.sms(a), R.email_subject(a), R.email_text(a, "http://x/ack/t"), R.email_html(a, "http://x/ack/t")]
    texts += [t for t, _ in R.sms_batches([a, alert("M5C7")])]
    for text in texts:
        assert "+79001234567" not in text
        assert "Петров" not in text


def test_a_bundle_splits_into_sms_that_each_fit() -> None:
    alerts = [alert(f"C{n:03d}".replace("0", "2").replace("1", "3")) for n in range(9)]
    batches = R.sms_batches(alerts)
    assert len(batches) >= 3
    assert all(len(text) <= SMS_LIMIT for text, _ in batches)
    carried = [a.short_code for _, chunk in batches for a in chunk]
    assert carried == [a.short_code for a in alerts]
    for text, chunk in batches:
        assert all(a.short_code in text for a in chunk)


def test_the_email_carries_the_whole_report_and_the_ack_link() -> None:
    a = alert(bearing_deg=90, movement="circling", speed="slow", sound="piston", perception="seen_and_heard",
              notes="над школой", status="test")
    text = R.email_text(a, "http://relay/ack/TOKEN")
    for expected in ("25.11.2026 12:05", "Грязинский район", "52.61000, 39.59000", "самолётного типа", "315° (СЗ)",
                     "90°", "кружит", "низко", "медленно", "мопед", "видели и слышали", "над школой",
                     "http://relay/ack/TOKEN", "K7QX"):
        assert expected in text, expected
    assert R.email_subject(a).startswith("ТЕСТ! [БПЛА] K7QX")
    html = R.email_html(alert(notes="<script>alert(1)</script>"), "http://relay/ack/T?a=1&b=2")
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "a=1&amp;b=2" in html


def test_a_stale_sighting_is_flagged_in_the_email() -> None:
    old = (datetime.now(UTC) - timedelta(minutes=20)).isoformat()
    assert "устарело" in R.email_text(alert(stale=True, observed_at=old), "u")


def test_templates_from_config_replace_the_built_in_texts(tmp_path: Path) -> None:
    custom = Renderer(MSK, {"sms": "UAV {code} {place} {time}"})
    assert custom.sms(alert()) == "UAV K7QX Грязинский район 12:05"
    config = tmp_path / "c.toml"
    config.write_text('[templates]\nsms = "{code} {caller_phone}"\n')
    with pytest.raises(ConfigError, match=r"templates\.sms: unknown field caller_phone"):
        load_settings(config)


def test_backups_enabled_without_credentials_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sms]\nenabled = true\n[email]\ntls = true\nstarttls = true\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.problems == [
        "sms: enabled, but account_sid, from_number, auth_token not set",
        "email: tls and starttls exclude each other",
    ]


def test_a_bundle_keeps_each_alerts_marks_and_puts_flash_first() -> None:
    exercise, real, flash = alert("EX22", status="exercise"), alert("RE33"), alert("FL44", priority="flash")
    batches = R.sms_batches([exercise, real, flash])
    assert batches[0][1][0].short_code == "FL44"
    text = " ".join(t for t, _ in batches)
    assert text.index("СРОЧНО! FL44") < text.index("УЧЕНИЯ! EX22") < text.index("RE33")
    assert "УЧЕНИЯ! RE33" not in text  # a real alert beside an exercise reads as real


def test_text_stored_before_it_was_normalised_still_renders_on_one_line() -> None:
    # A store written by an older relay may hold a district with a line break; the header must still be one line.
    raw = alert(location={"lat": 52.6, "lon": 39.6, "district": "Грязинский\r\nрайон\u2028\x0b\x85\x00\x1b"},
                notes="a\u202eb")
    for text in (R.sms(raw), R.email_subject(raw), *(t for t, _ in R.sms_batches([raw, alert("M5C7")]))):
        assert "Грязинский ра" in text  # a bundle shortens the place
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u202e" for c in text), repr(text)
    assert "\u202e" not in R.email_text(raw, "u") and "\u202e" not in R.email_html(raw, "u")


def test_a_template_with_a_control_character_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[templates]\nemail_subject = "{code}\\r\\nBcc: x@example.org"\n')
    with pytest.raises(ConfigError, match=r"templates\.email_subject: .*control characters"):
        load_settings(config)
    config.write_text('[templates]\nemail_text = "Код {code}\\nМесто {place}"\n')  # lines are fine in a body
    assert load_settings(config).templates.email_text == "Код {code}\nМесто {place}"
