"""An alert's report, stored as the operator submitted it and read back as a typed, frozen Report: the same JSON
out as went in, however old the row."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from relay.domain.model import Altitude, Priority, Report, ReportStatus, UavType, stored_report, validate_report
from tests.test_store_contract import _sqlite, new_alert

NOW = datetime(2026, 11, 25, 9, 10, tzinfo=UTC)

REPORTS: list[dict[str, Any]] = [
    {"report_id": "minimal", "observed_at": "2026-11-25T09:05:00Z", "location": {"lat": 52, "lon": -39}},
    {"report_id": "typical", "observed_at": "2026-11-25T12:05:00.123+03:00",
     "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"}, "uav_type": "fixed_wing", "count": 2,
     "heading_deg": 315, "altitude": "low", "caller": {"phone": "+79001234567", "name": "Петров"}},
    {"report_id": "everything", "observed_at": "2026-11-25T09:00:00+05:30",
     "location": {"lat": -89.123456, "lon": 1.5e-7, "accuracy_m": 1e-05, "address": " ул.\u202e Ленина\n1 ",
                  "district": "Ж" * 100},
     "uav_type": "missile_like", "count": 1000, "heading_deg": 0, "bearing_deg": 359, "movement": "circling",
     "altitude": "medium", "altitude_m": 0, "speed": "fast", "sound": "jet", "perception": "seen_and_heard",
     "status": "exercise", "priority": "flash", "caller": {"phone": None, "name": "Иван"},
     "notes": "строка\r\nвторая\tтаб\u2028"},
    {"report_id": "nulls", "observed_at": "2026-11-25T09:00:00-00:00", "location": {"lat": 0, "lon": 0},
     "heading_deg": None, "caller": None, "notes": None, "status": "test"},
]


def _json(report: Report) -> str:
    return json.dumps(report.as_submitted(), ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("body", REPORTS, ids=[r["report_id"] for r in REPORTS])
def test_a_stored_report_reads_back_as_the_validated_one(body: dict[str, Any]) -> None:
    submitted = validate_report(json.dumps(body), NOW)
    stored = _json(submitted)
    back = stored_report(stored)
    assert back == submitted
    assert back == Report.model_validate_json(stored, context={"now": NOW})
    assert back.model_fields_set == submitted.model_fields_set
    assert back.location.model_fields_set == submitted.location.model_fields_set
    assert _json(back) == stored  # as submitted, byte for byte: the same fields set, in the same order
    assert back.model_dump_json() == submitted.model_dump_json()
    assert "caller" not in back.as_submitted(caller=False)
    assert back.as_submitted(caller=False) == {k: v for k, v in submitted.as_submitted().items() if k != "caller"}


def test_fields_are_typed_and_frozen() -> None:
    back = stored_report(_json(validate_report(json.dumps(REPORTS[2]), NOW)))
    assert back.uav_type is UavType.MISSILE_LIKE and back.altitude is Altitude.MEDIUM
    assert back.status is ReportStatus.EXERCISE and back.priority is Priority.FLASH
    assert back.observed_at == datetime(2026, 11, 25, 3, 30, tzinfo=UTC)
    assert back.caller is not None and back.caller.phone is None
    with pytest.raises(ValidationError):
        back.count = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        back.location.lat = 0.0  # type: ignore[misc]


# As an older relay may have written it: observed days ago, text not yet normalised. Validating it again would
# refuse it (more than 24 hours old) and change its text; it is read back as it was stored.
OLD_ROW = (
    '{"report_id":"old-1","observed_at":"2026-11-20T08:00:00Z",'
    '"location":{"lat":52.6,"lon":39.6,"district":"Грязинский\\r\\nрайон"},"uav_type":"multirotor","count":3}'
)


def test_an_old_row_loads_as_it_was_stored() -> None:
    with pytest.raises(ValidationError):
        Report.model_validate_json(OLD_ROW, context={"now": NOW})
    back = stored_report(OLD_ROW)
    assert back.location.district == "Грязинский\r\nрайон"
    assert back.uav_type is UavType.MULTIROTOR and back.count == 3
    assert _json(back) == OLD_ROW


def test_a_stored_report_without_a_required_field_is_refused() -> None:
    with pytest.raises(ValueError, match="without location"):
        stored_report('{"report_id":"x","observed_at":"2026-11-20T08:00:00Z"}')


async def test_the_store_keeps_report_json_as_before_and_loads_old_rows(tmp_path: Path) -> None:
    store = await _sqlite(tmp_path)
    writer = asyncio.create_task(store.run())
    try:
        new = new_alert("r-json")
        await store.accept(new)
        with sqlite3.connect(tmp_path / "store" / "relay.db") as db:
            (kept,) = db.execute("SELECT report_json FROM alerts WHERE alert_id = ?", (new.alert.alert_id,)).fetchone()
            assert kept == json.dumps(new.alert.report.as_submitted(), ensure_ascii=False, separators=(",", ":"))
            db.execute("UPDATE alerts SET report_json = ? WHERE alert_id = ?", (OLD_ROW, new.alert.alert_id))
        got = await store.get_alert(new.alert.alert_id)
        assert got is not None
        assert got.report == stored_report(OLD_ROW)
        assert got.report.observed_at < datetime.now(UTC) - timedelta(days=1)
    finally:
        writer.cancel()
        await asyncio.wait([writer])
