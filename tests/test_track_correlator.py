"""The track correlator (relay.domain.tracks) on plain values: the contract's gates at their edges, the choice
between tracks, a moving drone against a second one on its corridor, late reports, and what a desk sees."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.domain import tracks
from relay.domain.geo import distance_km
from relay.domain.model import validate_report
from relay.domain.tracks import (
    KM_PER_DEG,
    Decision,
    Sighting,
    TrackParams,
    TrackState,
    assign,
    desk_view,
    join,
    rebuild,
    start,
)

LAT0, LON0 = 50.0, 30.0
T0 = 1_750_000_000.0
P = TrackParams()
LIMIT_60S_KM = P.max_speed_kmh * 60 / 3600 + 2 * P.position_error_km  # the contract's gate (b) after a minute


def at(north_km: float, east_km: float) -> tuple[float, float]:
    """A point so many km north and east of (LAT0, LON0)."""
    lat = LAT0 + north_km / KM_PER_DEG
    return lat, LON0 + east_km / (KM_PER_DEG * math.cos(math.radians(lat)))


def seen(t: float, north_km: float = 0.0, east_km: float = 0.0, **kw: Any) -> Sighting:
    lat, lon = at(north_km, east_km)
    return Sighting(T0 + t, lat, lon, **kw)


def one(s: Sighting, track_id: str = "T1") -> TrackState:
    return start(s, track_id)


def flying_east(track_id: str = "T1", kmh: float = 180.0, until_s: int = 300, **kw: Any) -> TrackState:
    """A drone seen every minute from t=0 on a straight line east of the origin."""
    return rebuild(track_id, [seen(t, 0.0, kmh * t / 3600, **kw) for t in range(0, until_s + 1, 60)])


def decide(s: Sighting, *open_tracks: TrackState) -> Decision:
    return assign(s, open_tracks, s.observed_at + 60, P)


# ---- (a) the time window --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", [600.0, -600.0])
def test_a_report_at_the_edge_of_the_window_joins(dt: float) -> None:
    assert decide(seen(dt), one(seen(0))).track_id == "T1"


@pytest.mark.parametrize("dt", [600.5, -600.5, 3600.0])
def test_a_report_beyond_the_window_starts_a_track(dt: float) -> None:
    assert decide(seen(dt), one(seen(0))) == Decision(None, None)


# ---- (b) the distance gate: max_speed × |Δt| + 2 × position_error ---------------------------------------------


@pytest.mark.parametrize("dt", [60.0, -60.0])
def test_just_inside_the_distance_gate_joins_and_just_outside_does_not(dt: float) -> None:
    track = one(seen(0))
    assert decide(seen(dt, LIMIT_60S_KM - 0.01), track).track_id == "T1"
    assert decide(seen(dt, -(LIMIT_60S_KM - 0.01)), track).track_id == "T1"
    assert decide(seen(dt, LIMIT_60S_KM + 0.01), track).track_id is None
    assert decide(seen(dt, 0.0, -(LIMIT_60S_KM + 0.01)), track).track_id is None


def test_the_distance_gate_follows_the_params() -> None:
    track = one(seen(0))
    far = seen(60, LIMIT_60S_KM + 1.0)
    assert decide(far, track).track_id is None
    looser = TrackParams(position_error_km=P.position_error_km + 1.0)
    assert assign(far, [track], far.observed_at, looser).track_id == "T1"


def test_at_the_same_time_only_the_callers_error_is_allowed() -> None:
    track = one(seen(0))
    assert decide(seen(0, 3.9), track).track_id == "T1"
    assert decide(seen(0, 4.1), track).track_id is None


# ---- (c) types, (d) status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("track_type", "report_type", "joins"),
    [
        ("multirotor", "fixed_wing", False),
        ("fixed_wing", "multirotor", False),
        ("helicopter", "fixed_wing", False),
        ("multirotor", "multirotor", True),
        ("multirotor", "unknown", True),
        ("unknown", "fixed_wing", True),
        ("unknown", "unknown", True),
    ],
)
def test_types_must_agree_unless_one_is_unknown(track_type: str, report_type: str, joins: bool) -> None:
    track = one(seen(0, uav_type=track_type))
    assert (decide(seen(30, 0.5, uav_type=report_type), track).track_id == "T1") is joins


def test_a_track_takes_the_first_specific_type_it_hears() -> None:
    track = join(one(seen(0)), seen(30, 0.5, uav_type="multirotor"))
    assert track.uav_type == "multirotor"
    assert join(track, seen(60, uav_type="unknown")).uav_type == "multirotor"
    assert decide(seen(90, uav_type="fixed_wing"), track).track_id is None


@pytest.mark.parametrize(("track_status", "report_status"), [("actual", "exercise"), ("exercise", "actual"),
                                                             ("actual", "test"), ("test", "exercise")])
def test_an_exercise_never_joins_an_actual_track(track_status: str, report_status: str) -> None:
    track = one(seen(0, status=track_status))
    assert decide(seen(10, status=report_status), track).track_id is None
    assert decide(seen(10, status=track_status), track).track_id == "T1"


# ---- the choice between tracks ------------------------------------------------------------------------------


def moving(track_id: str, north_km: float, east_km: float, v_east_kmh: float | None,
           v_north_kmh: float | None = 0.0, uav_type: str = "unknown") -> TrackState:
    """A track last seen at T0 so many km from the origin, its velocity known to 10 km/h."""
    lat, lon = at(north_km, east_km)
    return TrackState(track_id=track_id, status="actual", uav_type=uav_type, first_seen=T0 - 300, last_seen=T0,
                      lat=lat, lon=lon, error_km=1.0, v_north_kmh=v_north_kmh, v_east_kmh=v_east_kmh, reports=5,
                      count=1, priority="immediate", v_error_kmh=10.0, pv_cov=0.0)


def test_of_two_candidates_the_one_nearest_where_it_would_be_now_wins() -> None:
    # A was 3 km west a minute ago, flying east at 180 km/h: it is here now. B is 1.5 km east and not moving:
    # nearer by its last fix, farther by where it would be.
    a, b = moving("A", 0.0, -3.0, 180.0), moving("B", 0.0, 1.5, 0.0)
    report = seen(60)
    for order in ([a, b], [b, a]):
        d = assign(report, order, report.observed_at, P)
        assert d.track_id == "A"
        assert d.distance_km == pytest.approx(0.0, abs=0.01)
    # Between two tracks as sure of themselves and as still, the nearer one.
    c, e = moving("C", 0.0, 1.0, 0.0), moving("E", 0.0, -1.4, 0.0)
    d = assign(report, [e, c], report.observed_at, P)
    assert d.track_id == "C"
    assert d.distance_km == pytest.approx(1.0, abs=0.01)


def test_with_no_candidate_a_new_track() -> None:
    assert assign(seen(0), [], T0, P) == Decision(None, None)
    assert decide(seen(0, 50.0), one(seen(0))) == Decision(None, None)


# ---- a moving drone, and a second one on its corridor -------------------------------------------------------


def test_a_report_where_the_drone_would_be_now_joins_far_from_its_first_report() -> None:
    track = flying_east()  # at 15 km east at t=300, 3 km a minute
    assert track.speed_kmh() == pytest.approx(180.0, abs=10.0)
    assert track.heading_deg() == 90
    d = decide(seen(420, 0.0, 21.0), track)  # 21 km from where it was first seen
    assert d.track_id == "T1"
    assert d.distance_km is not None
    assert d.distance_km < 1.0


def test_a_report_at_the_tracks_old_position_minutes_later_is_another_drone() -> None:
    track = flying_east()
    # A minute after the last fix, where the first drone was 2.5 minutes before it: within the contract's gate
    # from the last fix (7.5 km, the gate allows 8.2), but 10.5 km from where the first drone is now.
    second = seen(360, 0.0, 7.5)
    assert distance_km(track.lat, track.lon, second.lat, second.lon) < LIMIT_60S_KM
    assert decide(second, track).track_id is None
    assert decide(seen(360, 0.0, 18.0), track).track_id == "T1"


def test_a_fixed_wing_in_transit_is_not_found_where_it_was_before_its_track_knows_its_velocity() -> None:
    # Two reports 20 s apart: too close to tell a velocity, but callers say it is a fixed wing in transit.
    young = join(one(seen(0, uav_type="fixed_wing", movement="transit")), seen(20, 0.3, 0.2))
    assert young.speed_kmh() is None
    follower = seen(320, 0.5, -0.5)  # five minutes later, where it was: the drone behind it on its route
    assert decide(follower, young).track_id is None
    assert decide(seen(320, 0.0, 14.0), young).track_id == "T1"  # where it would be at 170 km/h
    # Without a word on transit, or circling (a loitering fixed wing), it may still be there.
    assert decide(follower, join(one(seen(0, uav_type="fixed_wing")), seen(20, 0.3, 0.2))).track_id == "T1"
    assert decide(seen(320, 0.5, -0.5, movement="circling"), young).track_id == "T1"


def test_two_drones_on_one_corridor_stay_two_tracks() -> None:
    """The second drone flies the same line four minutes behind the first; the reports interleave."""
    book: dict[str, TrackState] = {}
    got: list[tuple[str, str]] = []
    for t in range(0, 901, 30):
        for who, lag in (("first", 0), ("second", 240)):
            if t - lag < 0:
                continue
            s = seen(t, 0.0, 180.0 * (t - lag) / 3600)
            d = assign(s, list(book.values()), s.observed_at, P)
            tid = d.track_id or f"T{len(book) + 1}"
            book[tid] = join(book[tid], s) if d.track_id else start(s, tid)
            got.append((who, tid))
    assert len(book) == 2
    assert {tid for who, tid in got if who == "first"} == {"T1"}
    assert {tid for who, tid in got if who == "second"} == {"T2"}


def test_a_hovering_multirotor_has_no_speed_to_speak_of() -> None:
    wobble = [(0.6, -0.4), (-0.5, 0.7), (0.2, 0.5), (-0.7, -0.3), (0.4, 0.1), (-0.2, -0.6), (0.5, 0.4)]
    track = rebuild("T1", [seen(90 * i, n, e, uav_type="multirotor", movement="hovering")
                           for i, (n, e) in enumerate(wobble)])
    speed = track.speed_kmh()
    assert speed is not None
    assert speed < 15.0
    assert track.heading_deg() is None
    assert decide(seen(700, 1.0, -1.0, uav_type="multirotor"), track).track_id == "T1"


# ---- late and out-of-order reports --------------------------------------------------------------------------


def test_a_late_report_is_judged_where_the_drone_was_when_it_was_seen() -> None:
    track = flying_east(uav_type="fixed_wing")  # 15 km east at t=300
    late = seen(120, 0.0, 6.0)  # where it was at t=120: 9 km behind its last fix
    d = assign(late, [track], T0 + 500, P)
    assert d.track_id == "T1"
    assert d.distance_km is not None
    assert d.distance_km < 1.0
    after = join(track, late)
    assert after.last_seen == track.last_seen
    assert after.first_seen == track.first_seen
    assert after.reports == track.reports + 1
    assert distance_km(after.lat, after.lon, track.lat, track.lon) < 0.5
    # Seen then somewhere the drone was not: another one.
    assert assign(seen(120, 0.0, 16.0), [track], T0 + 500, P).track_id is None


def test_a_report_older_than_the_first_moves_first_seen_back() -> None:
    track = flying_east()
    earlier = join(track, seen(-30, 0.0, -1.5))
    assert earlier.first_seen == T0 - 30
    assert earlier.last_seen == track.last_seen


def test_reports_in_any_arrival_order_end_in_one_track() -> None:
    order = [4, 0, 2, 1, 6, 3, 5, 8, 7]
    book: dict[str, TrackState] = {}
    for i in order:
        s = seen(60 * i, 0.0, 3.0 * i)
        d = assign(s, list(book.values()), T0 + 60 * max(order), P)
        tid = d.track_id or f"T{len(book) + 1}"
        book[tid] = join(book[tid], s) if d.track_id else start(s, tid)
    assert list(book) == ["T1"]
    assert book["T1"].reports == len(order)
    assert book["T1"].speed_kmh() == pytest.approx(180.0, abs=15.0)


# ---- determinism, rebuild -----------------------------------------------------------------------------------


def _replay(sightings: list[Sighting]) -> tuple[list[Decision], dict[str, TrackState]]:
    book: dict[str, TrackState] = {}
    decisions = []
    for s in sightings:
        d = assign(s, list(book.values()), s.observed_at + 120, P)
        decisions.append(d)
        tid = d.track_id or f"T{len(book) + 1}"
        book[tid] = join(book[tid], s) if d.track_id else start(s, tid)
    return decisions, book


def _mixed() -> list[Sighting]:
    return [
        seen(0, 0.0, 0.0, uav_type="fixed_wing", speed="fast", heading_deg=95),
        seen(40, 20.0, 20.0, uav_type="multirotor", movement="hovering", accuracy_m=800.0),
        seen(70, 0.3, 3.4, priority="flash"),
        seen(20, 0.0, 1.2, count=2),
        seen(130, 19.6, 20.5, speed="slow"),
        seen(150, -0.4, 7.6, heading_deg=80),
        seen(200, 0.0, 10.0, status="exercise"),
    ]


def test_the_same_reports_give_the_same_tracks() -> None:
    assert _replay(_mixed()) == _replay(_mixed())
    decisions, book = _replay(_mixed())
    assert [d.track_id for d in decisions] == [None, None, "T1", "T1", "T2", "T1", None]
    t1 = book["T1"]
    assert (t1.reports, t1.count, t1.priority, t1.uav_type) == (4, 2, "flash", "fixed_wing")


def test_rebuild_is_start_then_join_in_observed_order() -> None:
    mixed = [s for s in _mixed() if s.status == "actual" and s.lat < LAT0 + 0.1]
    ordered = sorted(mixed, key=lambda s: s.observed_at)
    replayed = start(ordered[0], "T9")
    for s in ordered[1:]:
        replayed = join(replayed, s)
    assert rebuild("T9", mixed) == replayed
    assert rebuild("T9", list(reversed(mixed))) == replayed


def test_rebuild_keeps_the_given_order_of_simultaneous_reports() -> None:
    a, b = seen(0, 0.0, 0.0), seen(0, 1.0, 0.0, uav_type="multirotor")
    assert rebuild("T1", [a, b]) == join(start(a, "T1"), b)
    assert rebuild("T1", [b, a]) == join(start(b, "T1"), a)
    with pytest.raises(ValueError, match="at least one"):
        rebuild("T1", [])


# ---- the state as stored, and as a desk sees it -------------------------------------------------------------


def test_track_state_json_round_trip() -> None:
    for state in (flying_east(), one(seen(0)), join(one(seen(0, accuracy_m=300.0)), seen(5, 0.1))):
        d = state.to_json()
        assert TrackState.from_json(json.loads(json.dumps(d))) == state
    fresh = one(seen(0))
    assert fresh.v_north_kmh is None
    assert fresh.to_json()["v_north_kmh"] is None


def test_track_state_from_json_without_the_filters_extras() -> None:
    d = flying_east().to_json()
    del d["v_error_kmh"], d["pv_cov"]
    back = TrackState.from_json(d)
    assert back.v_east_kmh == d["v_east_kmh"]
    # the default: a track that knows nothing of its speed
    assert back.v_error_kmh == {f.name: f.default for f in fields(TrackState)}["v_error_kmh"]


def test_position_at_dead_reckons_and_holds_beyond_its_horizon() -> None:
    track = moving("A", 0.0, 0.0, 180.0)
    lat, lon = track.position_at(T0 + 120)
    assert distance_km(track.lat, track.lon, lat, lon) == pytest.approx(6.0, rel=0.01)
    assert tracks.bearing_deg(track.lat, track.lon, lat, lon) == pytest.approx(90.0, abs=0.1)
    far = track.position_at(T0 + 7200)
    assert far == track.position_at(T0 + tracks.MAX_DEAD_RECKONING_S)
    assert one(seen(0)).position_at(T0 + 300) == (one(seen(0)).lat, one(seen(0)).lon)


def test_desk_view_of_an_approaching_track() -> None:
    track = moving("T1", 30.0, 0.0, 0.0, v_north_kmh=-180.0)  # 30 km north of the airfield, flying south
    v = desk_view(track, LAT0, LON0, T0)
    assert v.distance_km == pytest.approx(30.0, rel=0.005)
    assert v.bearing_deg == 0
    assert v.eta_s == pytest.approx(600.0, rel=0.01)
    # A minute later it is 3 km nearer, a minute sooner.
    later = desk_view(track, LAT0, LON0, T0 + 60)
    assert later.distance_km == pytest.approx(27.0, rel=0.005)
    assert later.eta_s == pytest.approx(540.0, rel=0.01)


def test_desk_view_of_a_receding_or_hovering_track_has_no_eta() -> None:
    receding = moving("T1", 0.0, 20.0, 150.0)  # 20 km east, flying east
    v = desk_view(receding, LAT0, LON0, T0)
    assert v.bearing_deg == 90
    assert v.distance_km == pytest.approx(20.0, rel=0.005)
    assert v.eta_s is None
    assert desk_view(moving("T1", 0.0, 20.0, -2.0, v_north_kmh=1.0), LAT0, LON0, T0).eta_s is None
    assert desk_view(moving("T1", 0.0, 20.0, None, v_north_kmh=None), LAT0, LON0, T0).eta_s is None
    # Passing by, 80° off the line to the airfield: not approaching it.
    course = math.radians(190.0)
    passing = moving("T1", 0.0, 20.0, 150.0 * math.sin(course), v_north_kmh=150.0 * math.cos(course))
    assert desk_view(passing, LAT0, LON0, T0).eta_s is None


def test_bearing_deg() -> None:
    assert tracks.bearing_deg(LAT0, LON0, LAT0 + 1, LON0) == pytest.approx(0.0)
    assert tracks.bearing_deg(LAT0, LON0, LAT0, LON0 + 1) == pytest.approx(90.0, abs=0.5)
    assert tracks.bearing_deg(LAT0, LON0, LAT0 - 1, LON0) == pytest.approx(180.0)
    assert tracks.bearing_deg(LAT0, LON0, LAT0, LON0 - 1) == pytest.approx(270.0, abs=0.5)


def test_a_sighting_of_a_report() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    report = validate_report(json.dumps({
        "report_id": "r-1", "observed_at": "2025-06-01T11:58:00+00:00",
        "location": {"lat": 50.1, "lon": 30.2, "accuracy_m": 900},
        "uav_type": "fixed_wing", "heading_deg": 270, "bearing_deg": 10, "speed": "fast", "movement": "transit",
        "count": 2, "status": "exercise", "priority": "flash",
    }), now)
    assert Sighting.of(report) == Sighting(
        observed_at=datetime(2025, 6, 1, 11, 58, tzinfo=UTC).timestamp(), lat=50.1, lon=30.2, uav_type="fixed_wing",
        status="exercise", accuracy_m=900, heading_deg=270, bearing_deg=10, speed="fast", movement="transit",
        count=2, priority="flash",
    )
    bare = validate_report(json.dumps({"report_id": "r-2", "observed_at": "2025-06-01T11:59:00+00:00",
                                       "location": {"lat": 50.1, "lon": 30.2}}), now)
    assert Sighting.of(bare) == Sighting(datetime(2025, 6, 1, 11, 59, tzinfo=UTC).timestamp(), 50.1, 30.2)


def test_what_a_caller_says_sharpens_but_a_wrong_word_does_not_split() -> None:
    track = flying_east(uav_type="fixed_wing")  # east, at 18 km at t=360
    here = (0.0, 18.0)
    # A heading opposite the track's course, or "slow", costs a report a tie, not its track.
    assert decide(seen(360, *here, heading_deg=270), track).track_id == "T1"
    assert decide(seen(360, *here, speed="slow"), track).track_id == "T1"
    # Another drone flying west would be there too: the caller's heading tells them apart.
    west = rebuild("T2", [seen(t, 0.0, 36.0 - 3.0 * t / 60, uav_type="fixed_wing") for t in range(0, 301, 60)])
    for order in ((track, west), (west, track)):
        assert decide(seen(360, *here, heading_deg=80), *order).track_id == "T1"
        assert decide(seen(360, *here, heading_deg=250), *order).track_id == "T2"
    # A hovering object is not the one a track saw 17 km away four minutes ago.
    still = one(seen(0))
    assert decide(seen(240, 0.0, 17.0), still).track_id == "T1"
    assert decide(seen(240, 0.0, 17.0, movement="hovering"), still).track_id is None
