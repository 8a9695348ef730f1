"""relay/domain/cot.py: a track as a CoT event, parsed back as a TAK server would (defusedxml, and lxml's strict
parser): uid, type, point, ce, stale, course and speed, what an ack, a close and a merge send, and text from
callers that must never break the XML."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from defusedxml.ElementTree import fromstring
from lxml import etree

from relay.domain import cot, tracks
from relay.domain.cot import CotStyle, CotTrack
from relay.domain.tracks import Sighting, TrackState

T0 = 1_790_000_000.0
STYLE = CotStyle(join_window_s=600, stale_margin_s=120, callsign_prefix="БПЛА")


def parsed(body: bytes):  # type: ignore[no-untyped-def]
    etree.fromstring(body, etree.XMLParser(recover=False))  # strict: any XML 1.0 violation raises
    return fromstring(body)


def when(text: str) -> float:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def shahed(t: float = T0, **kw: object) -> Sighting:
    args: dict[str, object] = {"observed_at": t, "lat": 52.61, "lon": 39.59, "uav_type": "fixed_wing"} | kw
    return Sighting(**args)  # type: ignore[arg-type]


def view(est: TrackState, state: str = "open", **kw: object) -> CotTrack:
    args: dict[str, object] = {"estimate": est, "state": state, "codes": ["4711"]} | kw
    return CotTrack(**args)  # type: ignore[arg-type]


def test_a_new_track_is_an_unknown_air_drone_at_the_reported_place_with_its_uncertainty() -> None:
    est = tracks.start(shahed(), "A1")
    root = parsed(cot.track_event(view(est, link_url="http://relay.example/api/v1/tracks/A1"), T0 + 5, STYLE))
    assert root.tag == "event" and root.get("version") == "2.0"
    assert root.get("uid") == "uav-relay.A1"
    assert root.get("type") == "a-u-A-M-F-Q"  # a fixed wing drone, affiliation unknown
    assert root.get("how") == "h-e"
    assert root.get("opex") is None
    p = root.find("point")
    assert float(p.get("lat")) == pytest.approx(52.61) and float(p.get("lon")) == pytest.approx(39.59)
    assert float(p.get("ce")) == pytest.approx(est.error_km * 1000, abs=0.1)
    assert float(p.get("hae")) == 9999999.0 and float(p.get("le")) == 9999999.0
    assert when(root.get("time")) == pytest.approx(T0 + 5, abs=0.001)
    assert when(root.get("start")) == pytest.approx(T0, abs=0.001)
    assert when(root.get("stale")) == pytest.approx(T0 + 600, abs=0.001)  # when the track would close
    detail = root.find("detail")
    assert detail.find("contact").get("callsign") == "БПЛА 4711"
    assert detail.find("track") is None  # one report: no course yet
    assert detail.find("link").get("url") == "http://relay.example/api/v1/tracks/A1"
    assert detail.find("uav_relay").get("codes") == "4711"
    assert "БПЛА (самолётного типа), 1 шт." in detail.find("remarks").text


@pytest.mark.parametrize(("uav_type", "atom"), [
    ("unknown", "a-u-A"), ("multirotor", "a-u-A"), ("fixed_wing", "a-u-A-M-F-Q"), ("helicopter", "a-u-A-M-H"),
    ("missile_like", "a-u-A-W-M"),
])
def test_type_atom_is_unknown_air_unless_the_reported_type_says_more_and_never_hostile(uav_type: str,
                                                                                       atom: str) -> None:
    root = parsed(cot.track_event(view(tracks.start(shahed(uav_type=uav_type), "A1")), T0, STYLE))
    assert root.get("type") == atom
    assert root.get("type").split("-")[1] == "u"


def test_an_update_keeps_the_uid_and_carries_course_and_speed_in_metres_per_second() -> None:
    est = tracks.start(shahed(movement="transit"), "A1")
    for k in range(1, 6):  # northwest at about 180 km/h
        est = tracks.join(est, shahed(T0 + 60 * k, lat=52.61 + 0.0153 * k, lon=39.59 - 0.025 * k,
                                      movement="transit"), params=tracks.DEFAULT_PARAMS)
    root = parsed(cot.track_event(view(est, codes=["4711", "4712", "4713"]), T0 + 305, STYLE))
    assert root.get("uid") == "uav-relay.A1"
    tr = root.find("detail/track")
    assert tr is not None
    speed_kmh, course = est.speed_kmh(), est.heading_deg()
    assert speed_kmh is not None and course is not None
    assert float(tr.get("speed")) == pytest.approx(speed_kmh / 3.6, abs=0.01)
    assert float(tr.get("course")) == course and 300 <= course <= 330
    assert when(root.get("stale")) == pytest.approx(T0 + 300 + 600, abs=0.001)
    assert root.find("detail/uav_relay").get("reports") == "6"
    assert f"{round(speed_kmh)} км/ч, курс {course}°" in root.find("detail/remarks").text


def test_stale_is_never_sooner_than_the_margin_even_for_a_late_report() -> None:
    est = tracks.start(shahed(T0 - 590), "A1")
    root = parsed(cot.track_event(view(est), T0, STYLE))
    assert when(root.get("stale")) == pytest.approx(T0 + 120, abs=0.001)


def test_acknowledged_is_an_update_and_closed_is_stale_at_once() -> None:
    est = tracks.start(shahed(), "A1")
    acked = parsed(cot.track_event(view(est, "acknowledged"), T0 + 30, STYLE))
    assert acked.get("uid") == "uav-relay.A1"
    assert "Подтверждено аэродромом" in acked.find("detail/remarks").text
    assert when(acked.get("stale")) > T0 + 30
    closed = parsed(cot.track_event(view(est, "closed"), T0 + 700, STYLE))
    assert closed.find("detail/uav_relay").get("state") == "closed"
    assert when(closed.get("stale")) == when(closed.get("time"))


def test_a_merged_away_track_is_deleted_as_tak_deletes() -> None:
    root = parsed(cot.delete_event("A2", T0, into="A1", uav_type="fixed_wing"))
    assert root.get("type") == "t-x-d-d"
    assert root.get("uid") != "uav-relay.A2"
    link = root.find("detail/link")
    assert link.get("uid") == "uav-relay.A2" and link.get("relation") == "none"
    assert link.get("type") == "a-u-A-M-F-Q"
    assert root.find("detail/__forcedelete") is not None
    assert "uav-relay.A1" in root.find("detail/remarks").text


def test_a_split_gives_two_markers() -> None:
    a = tracks.start(shahed(), "A1")
    b = tracks.start(shahed(T0 + 10, lat=52.7), "B7")
    uids = {parsed(cot.track_event(view(t), T0 + 20, STYLE)).get("uid") for t in (a, b)}
    assert uids == {"uav-relay.A1", "uav-relay.B7"}


@pytest.mark.parametrize(("status", "opex", "word"), [("exercise", "e-uav-relay", "УЧЕНИЯ."),
                                                      ("test", "s-uav-relay", "ТЕСТ.")])
def test_exercise_and_test_tracks_are_marked_as_such(status: str, opex: str, word: str) -> None:
    root = parsed(cot.track_event(view(tracks.start(shahed(status=status), "A1")), T0, STYLE))
    assert root.get("opex") == opex  # the CoT schema's exercise / simulation flag
    assert root.find("detail/remarks").text.startswith(word)
    assert root.find("detail/uav_relay").get("status") == status


HOSTILE = ("Грязи\x00\x01\x07\x08\x0b\x0c\x1b\x1f\x7f\x85\u2028\u2029\u202e\ufeff\ufffe\uffff\ud800"
           "]]></remarks><event uid=\"evil\"/>&amp;<!--")


def test_controls_separators_and_markup_in_callers_text_never_break_the_xml() -> None:
    est = tracks.start(shahed(), "A1")
    body = cot.track_event(view(est, place=HOSTILE, notes=f"строка 1\r\nстрока 2\t{HOSTILE}",
                                codes=["4711"]), T0, CotStyle(callsign_prefix="БПЛА"))
    root = parsed(body)
    text = root.find("detail/remarks").text
    assert "Грязи" in text and "строка 1" in text and "строка 2" in text
    assert ']]></remarks><event uid="evil"/>&amp;<!--' in text  # shown as the caller typed it, escaped on the wire
    allowed = re.compile("[\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
    assert allowed.fullmatch(body.decode("utf-8"))
    for c in "\x00\x01\x1b\x7f\x85\u2028\u202e\ufffe\uffff":
        assert c not in text
    assert len(root.findall(".//event")) == 0


def test_altitude_when_the_caller_gave_one() -> None:
    root = parsed(cot.track_event(view(tracks.start(shahed(), "A1"), altitude_m=300), T0 + 1, STYLE))
    assert float(root.find("point").get("hae")) == 300.0


def test_times_are_utc_with_milliseconds() -> None:
    t = datetime(2026, 11, 30, 10, 0, 1, 250_000, tzinfo=UTC).timestamp()
    assert cot.cot_time(t) == "2026-11-30T10:00:01.250Z"
    assert when(cot.cot_time(t + timedelta(hours=1).total_seconds())) == pytest.approx(t + 3600)
