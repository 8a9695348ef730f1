"""Every rule of the contract's report table, through the real HTTP API: 422 names the field, nothing is stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.relay import RunningRelay, report


def _ago(**kw: float) -> str:
    return (datetime.now(UTC) - timedelta(**kw)).isoformat()


def _without(field: str) -> dict[str, Any]:
    body = report()
    del body[field]
    return body


# A body, or a function making it when the test runs (times relative to now must not go stale while other
# tests run first).
INVALID: list[tuple[str, dict[str, Any] | Callable[[], dict[str, Any]], str]] = [
    ("report_id missing", _without("report_id"), "report_id"),
    ("report_id empty", report(""), "report_id"),
    ("report_id bad characters", report("r/1 x"), "report_id"),
    ("report_id too long", report("r" * 65), "report_id"),
    ("observed_at missing", _without("observed_at"), "observed_at"),
    ("observed_at without offset", report(observed_at="2026-11-25T10:00:00"), "observed_at"),
    ("observed_at not a time", report(observed_at="yesterday"), "observed_at"),
    ("observed_at 6 min in future", lambda: report(observed_at=_ago(minutes=-6)), "observed_at"),
    ("observed_at 25 h ago", lambda: report(observed_at=_ago(hours=25)), "observed_at"),
    ("location missing", _without("location"), "location"),
    ("lat over 90", report(location={"lat": 90.5, "lon": 39}), "location.lat"),
    ("lat under -90", report(location={"lat": -91, "lon": 39}), "location.lat"),
    ("lon over 180", report(location={"lat": 52, "lon": 180.1}), "location.lon"),
    ("lon missing", report(location={"lat": 52}), "location.lon"),
    ("accuracy zero", report(location={"lat": 52, "lon": 39, "accuracy_m": 0}), "location.accuracy_m"),
    ("address too long", report(location={"lat": 52, "lon": 39, "address": "д" * 201}), "location.address"),
    ("district too long", report(location={"lat": 52, "lon": 39, "district": "р" * 101}), "location.district"),
    ("location unknown field", report(location={"lat": 52, "lon": 39, "alt": 3}), "location.alt"),
    ("uav_type unknown", report(uav_type="balloon"), "uav_type"),
    ("count zero", report(count=0), "count"),
    ("count over 1000", report(count=1001), "count"),
    ("count as text", report(count="3"), "count"),
    ("count fractional", report(count=2.5), "count"),
    ("heading 360", report(heading_deg=360), "heading_deg"),
    ("heading negative", report(heading_deg=-1), "heading_deg"),
    ("bearing 360", report(bearing_deg=360), "bearing_deg"),
    ("movement unknown", report(movement="zigzag"), "movement"),
    ("altitude unknown", report(altitude="very_high"), "altitude"),
    ("altitude_m over 10000", report(altitude_m=10001), "altitude_m"),
    ("altitude_m negative", report(altitude_m=-5), "altitude_m"),
    ("speed unknown", report(speed="supersonic"), "speed"),
    ("sound unknown", report(sound="loud"), "sound"),
    ("perception unknown", report(perception="felt"), "perception"),
    ("status unknown", report(status="drill"), "status"),
    ("priority unknown", report(priority="urgent"), "priority"),
    ("caller phone not E.164", report(caller={"phone": "89001234567"}), "caller.phone"),
    ("caller name too long", report(caller={"name": "я" * 101}), "caller.name"),
    ("notes too long", report(notes="x" * 1001), "notes"),
    ("unknown top-level field", report(operator_id="op-2"), "operator_id"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_report_is_refused_naming_the_field(
    relay: RunningRelay, case: str, body: dict[str, Any] | Callable[[], dict[str, Any]], field: str
) -> None:
    status, answer = await relay.post_report(body() if callable(body) else body)
    assert status == 422, answer
    assert answer["error"] == "invalid_report"
    assert field in [p["field"] for p in answer["detail"]], answer["detail"]
    assert all(p["problem"] for p in answer["detail"])
    _, listing = await relay.get("/api/v1/alerts")
    assert listing["alerts"] == []


async def test_every_bad_field_is_named_at_once(relay: RunningRelay) -> None:
    status, answer = await relay.post_report(report(count=0, heading_deg=400, uav_type="kite"))
    assert status == 422
    assert {p["field"] for p in answer["detail"]} == {"count", "heading_deg", "uav_type"}
    assert await relay.metric('relay_reports_rejected_total{reason="invalid"}') == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"{not json", "body"), (b"[1, 2]", "body"), (b"", "body")],
    ids=["broken JSON", "an array", "empty body"],
)
async def test_a_body_that_is_not_a_report_object_is_refused(relay: RunningRelay, body: bytes, field: str) -> None:
    status, answer = await relay.post_report(body)
    assert status == 422, answer
    assert answer["detail"][0]["field"] == field


async def test_body_over_64_kib_is_refused_with_413(relay: RunningRelay) -> None:
    status, answer = await relay.post_report(report(notes="x" * (65 * 1024)))
    assert status == 413
    assert answer["error"] == "too_large"


async def test_edges_of_every_range_are_accepted(relay: RunningRelay) -> None:
    body = report(
        "a.B:c-9_" + "z" * 56,
        observed_at=_ago(hours=23, minutes=59),
        location={"lat": -90, "lon": 180, "accuracy_m": 0.5, "address": "а" * 200, "district": "б" * 100},
        count=1000, heading_deg=0, bearing_deg=359, altitude_m=10000, altitude="high", speed="fast",
        sound="none", perception="heard", status="exercise", priority="routine", notes="н" * 1000,
        caller={"phone": "+1234567", "name": "и" * 100},
    )
    status, answer = await relay.post_report(body)
    assert status == 201, answer


async def test_defaults_are_applied_and_the_report_is_kept_as_submitted(relay: RunningRelay) -> None:
    minimal = {"report_id": "min-1", "observed_at": _ago(seconds=5), "location": {"lat": 52, "lon": 39}}
    status, accepted = await relay.post_report(minimal)
    assert status == 201
    alert = await relay.alert(accepted["alert_id"])
    assert alert["priority"] == "immediate"
    assert alert["report"] == minimal | {"observed_at": alert["report"]["observed_at"]}
    assert alert["stale"] is False


async def test_a_sighting_older_than_ten_minutes_is_relayed_marked_stale(relay: RunningRelay) -> None:
    status, accepted = await relay.post_report(report("old-1", observed_at=_ago(minutes=11)))
    assert status == 201
    assert (await relay.alert(accepted["alert_id"]))["stale"] is True


def test_free_text_is_normalised_notes_keep_their_lines() -> None:
    from relay.domain.text import normalise

    assert normalise("строка 1\nстрока 2\u2029\x07конец\r\nещё", multiline=True) == "строка 1\nстрока 2\nконец\nещё"
    assert normalise("Грязинский\r\nрайон\u2028\x0b\x85\t1") == "Грязинский район    1"
    assert normalise("\u202eПетров\u202c\x00\x1b[31m\u2066x\u2069") == "Петров[31mx"
    assert normalise("е\u0308") == "ё"  # NFC
