"""Tracks: which open track a sighting report belongs to, and where that track's drone is and is heading.

Many calls about one drone must become one track. Framed as Stone Soup frames tracking: each track is a
constant-velocity Kalman filter (north and east are two identical 1-D filters sharing one 2×2 covariance,
since a caller's error is taken as the same in every direction); a report is *gated* against every open track
at the report's own time (a distance gate on the predicted position, scaled by the prediction's uncertainty,
like a Mahalanobis gate, and never looser than the contract's speed gate from the track's latest position);
the *associator* is a nearest-neighbour one applied report by report (GNN with one measurement per scan,
because reports arrive one at a time and a decision is never revisited, except by a dispatcher's merge or split,
which `rebuild`s). `bench.tracks` scores the outcome with SIAP-like measures: false merges (ambiguity),
false splits and tracks per object (completeness, spuriousness).

Everything here is pure: no clock, no I/O, no randomness; the relay keeps a TrackState as JSON between reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from relay.domain.geo import EARTH_RADIUS_KM, distance_km
from relay.domain.model import Movement, Priority, Report, Speed, UavType

KM_PER_DEG = math.pi * EARTH_RADIUS_KM / 180.0
S_PER_H = 3600.0

# Nobody on the ground places a drone better than this, whatever accuracy_m says (that is often the phone's
# own fix, and the drone is a kilometre or more away from it).
MIN_ERROR_KM = 0.5
# The gate on the predicted position, in standard deviations of the miss (the prediction's and the caller's
# errors together; in 2-D, exp(-k²/2) of true reports fall outside: 3.5 -> 0.2 %), plus a turn allowance.
GATE_SIGMAS = 3.5
# The contract's gate (b) allows max_speed × |Δt| plus this many position_error_km: one for each end.
CALLER_ERRORS = 2.0
# Dead reckoning further than this is a guess, not an estimate: position_at holds the track there.
MAX_DEAD_RECKONING_S = 900.0
# A velocity this uncertain (1-sigma per axis) is not shown as a speed or heading.
SHOWN_SPEED_SIGMA_KMH = 60.0
HEADING_MIN_KMH = 15.0  # slower than this a course means nothing (a hovering drone drifts in the noise)

_FAST = Speed.FAST.value
_SLOW = Speed.SLOW.value
_UNKNOWN = UavType.UNKNOWN.value
_HOVERING = Movement.HOVERING.value
_CIRCLING = Movement.CIRCLING.value
_TRANSIT = Movement.TRANSIT.value
_URGENCY = {Priority.FLASH.value: 0, Priority.IMMEDIATE.value: 1, Priority.ROUTINE.value: 2}


@dataclass(frozen=True, slots=True)
class TrackParams:
    join_window_s: float = 600.0
    max_speed_kmh: float = 250.0
    position_error_km: float = 2.0


DEFAULT_PARAMS = TrackParams()


@dataclass(frozen=True, slots=True)
class _Kind:
    """What a type of object can do, as the filter and the gate assume it."""

    max_speed_kmh: float  # capped by TrackParams.max_speed_kmh
    v_sigma_kmh: float  # prior spread of the velocity per axis, before any report says anything of it
    q: float  # process noise: white-acceleration spectral density, (km/h)²/h (how fast the velocity wanders)
    manoeuvre: float  # the gate's allowance for a turn: this fraction of the distance flown since the last fix


# A Shahed-type fixed wing flies straight at 150-190 km/h; a helicopter turns hard; a multirotor seldom
# exceeds 120 km/h but stops and turns at will. An unknown type is allowed all of it. (The figures were tuned on
# bench.tracks, where the results are flat around them.)
_KINDS: dict[str, _Kind] = {
    UavType.FIXED_WING.value: _Kind(260.0, 120.0, 2.0e4, 0.12),
    UavType.MULTIROTOR.value: _Kind(130.0, 45.0, 3.0e4, 0.30),
    UavType.HELICOPTER.value: _Kind(320.0, 130.0, 3.0e5, 0.30),
    UavType.MISSILE_LIKE.value: _Kind(1000.0, 250.0, 1.0e5, 0.12),
    _UNKNOWN: _Kind(1000.0, 120.0, 1.5e5, 0.25),
}


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the correlator needs of one report."""

    observed_at: float  # epoch seconds
    lat: float
    lon: float
    uav_type: str = "unknown"  # UavType values
    status: str = "actual"  # ReportStatus values: actual | exercise | test
    accuracy_m: float | None = None
    heading_deg: int | None = None  # direction of travel, 0..359
    bearing_deg: int | None = None  # direction from the observer to the object
    speed: str = "unknown"  # slow | fast | unknown
    movement: str = "unknown"  # transit | hovering | circling | erratic | unknown
    count: int = 1
    priority: str = "immediate"

    @classmethod
    def of(cls, report: Report) -> Sighting:
        loc = report.location
        return cls(
            observed_at=report.observed_at.timestamp(),
            lat=loc.lat,
            lon=loc.lon,
            uav_type=report.uav_type.value,
            status=report.status.value,
            accuracy_m=loc.accuracy_m,
            heading_deg=report.heading_deg,
            bearing_deg=report.bearing_deg,
            speed=report.speed.value,
            movement=report.movement.value,
            count=report.count,
            priority=report.priority.value,
        )


@dataclass(frozen=True, slots=True)
class TrackState:
    """A track's estimate: what the correlator keeps of it between reports (stored as JSON by the relay).

    lat/lon/v_*/error_km/v_error_kmh/pv_cov are a Kalman filter's state at last_seen: per axis, the position
    variance is error_km²/2, the velocity variance v_error_kmh², their covariance pv_cov. The velocity is None
    until a second report (or a report's heading and speed class, or its "hovering") says something of it;
    speed_kmh() and heading_deg() stay None while it is too uncertain to show.
    """

    track_id: str
    status: str
    uav_type: str  # the most specific type seen ("unknown" until one is known)
    first_seen: float
    last_seen: float  # latest observed_at among its reports
    lat: float  # position estimate at last_seen
    lon: float
    error_km: float  # uncertainty of that position (1-sigma radius), >= MIN_ERROR_KM
    v_north_kmh: float | None
    v_east_kmh: float | None
    reports: int
    count: int  # largest count reported
    priority: str  # most urgent priority seen (flash > immediate > routine)
    v_error_kmh: float = _KINDS[_UNKNOWN].v_sigma_kmh  # 1-sigma of each velocity component
    pv_cov: float = 0.0  # covariance of position and velocity per axis, km²/h
    # Callers' words on whether it goes somewhere: +1 for each "transit" or "fast", -1 for each "hovering",
    # "circling" or "slow".
    moving_votes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrackState:
        def opt(key: str) -> float | None:
            v = d.get(key)
            return None if v is None else float(v)

        extra: dict[str, Any] = {k: float(d[k]) for k in ("v_error_kmh", "pv_cov") if d.get(k) is not None}
        if d.get("moving_votes") is not None:
            extra["moving_votes"] = int(d["moving_votes"])
        return cls(
            track_id=str(d["track_id"]),
            status=str(d["status"]),
            uav_type=str(d["uav_type"]),
            first_seen=float(d["first_seen"]),
            last_seen=float(d["last_seen"]),
            lat=float(d["lat"]),
            lon=float(d["lon"]),
            error_km=float(d["error_km"]),
            v_north_kmh=opt("v_north_kmh"),
            v_east_kmh=opt("v_east_kmh"),
            reports=int(d["reports"]),
            count=int(d["count"]),
            priority=str(d["priority"]),
            **extra,
        )

    def speed_kmh(self) -> float | None:
        if self.v_north_kmh is None or self.v_east_kmh is None or self.v_error_kmh > SHOWN_SPEED_SIGMA_KMH:
            return None
        return math.hypot(self.v_north_kmh, self.v_east_kmh)

    def heading_deg(self) -> int | None:
        vn, ve, speed = self.v_north_kmh, self.v_east_kmh, self.speed_kmh()
        # A speed within two sigmas of zero has no direction worth showing.
        if vn is None or ve is None or speed is None or speed < HEADING_MIN_KMH or speed < 2.0 * self.v_error_kmh:
            return None
        return round(math.degrees(math.atan2(ve, vn))) % 360

    def position_at(self, t: float) -> tuple[float, float]:
        if self.v_north_kmh is None or self.v_east_kmh is None:
            return self.lat, self.lon
        h = max(-MAX_DEAD_RECKONING_S, min(MAX_DEAD_RECKONING_S, t - self.last_seen)) / S_PER_H
        return _moved(self.lat, self.lon, self.v_north_kmh * h, self.v_east_kmh * h)


@dataclass(frozen=True, slots=True)
class Decision:
    track_id: str | None  # the open track to join; None: start a new track
    distance_km: float | None  # from the report to where that track would be at the report's time (None for new)


_NEW = Decision(None, None)


# ---- geometry on a local flat frame (tracks span tens of km: the flat error is far below a caller's) ----------


def _wrap_deg(d: float) -> float:
    return (d + 180.0) % 360.0 - 180.0 if not -180.0 <= d < 180.0 else d


def _moved(lat: float, lon: float, dn_km: float, de_km: float) -> tuple[float, float]:
    new_lat = max(-90.0, min(90.0, lat + dn_km / KM_PER_DEG))
    k = KM_PER_DEG * max(math.cos(math.radians(lat)), 1e-6)
    return new_lat, _wrap_deg(lon + de_km / k)


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, degrees in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def _angle_between(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return 360.0 - d if d > 180.0 else d


# ---- the filter ----------------------------------------------------------------------------------------------


def _kind(uav_type: str) -> _Kind:
    return _KINDS.get(uav_type, _KINDS[_UNKNOWN])


def _specific(a: str, b: str) -> str:
    # A conflict (a dispatcher merged tracks of two types) keeps the type the track had.
    return b if a == _UNKNOWN else a


def _report_var(s: Sighting, params: TrackParams) -> float:
    """The report's position variance per axis (km²): its accuracy when the operator gave one."""
    sigma = params.position_error_km if s.accuracy_m is None else s.accuracy_m / 1000.0
    sigma = max(sigma, MIN_ERROR_KM)
    return sigma * sigma / 2.0


# What cannot hover nor fly slowly: a caller saying so about one is wrong about something.
_NEVER_SLOW = frozenset({UavType.FIXED_WING.value, UavType.MISSILE_LIKE.value})


def _velocity_hint(s: Sighting, uav_type: str) -> tuple[float, float, float] | None:
    """What the caller's words say of the velocity: (north, east, variance per axis), km/h; None: nothing.

    Loose on purpose: a few callers in a hundred say "slow" of a Shahed, and a seed that sure of itself would
    refuse the next report of it.
    """
    can_be_slow = uav_type not in _NEVER_SLOW
    if s.movement == _HOVERING and can_be_slow:
        return 0.0, 0.0, 20.0**2
    if s.movement == _CIRCLING:
        # Circling goes nowhere on average; a tight circle at 40 km/h is still "here" a minute later.
        return 0.0, 0.0, 30.0**2
    if s.heading_deg is not None and s.speed == _FAST:
        # Callers' headings are often 30-45° off and "fast" spans 100-250 km/h: a seed, not a measurement.
        rad = math.radians(s.heading_deg)
        return 160.0 * math.cos(rad), 160.0 * math.sin(rad), 90.0**2
    if s.speed == _SLOW and can_be_slow:
        if s.heading_deg is None:
            return 0.0, 0.0, 50.0**2
        rad = math.radians(s.heading_deg)
        return 25.0 * math.cos(rad), 25.0 * math.sin(rad), 40.0**2
    return None


def _vote(s: Sighting) -> int:
    moving = s.movement == _TRANSIT or s.speed == _FAST
    still = s.movement in (_HOVERING, _CIRCLING) or s.speed == _SLOW
    return int(moving) - int(still)


def start(s: Sighting, track_id: str, *, params: TrackParams = DEFAULT_PARAMS) -> TrackState:
    kind = _kind(s.uav_type)
    vn: float | None = None
    ve: float | None = None
    pv, vv = 0.0, kind.v_sigma_kmh**2
    hint = _velocity_hint(s, s.uav_type)
    if hint is not None:
        hn, he, hv = hint
        w = vv / (vv + hv)
        vn, ve, vv = w * hn, w * he, vv * hv / (vv + hv)
    a = _report_var(s, params)
    return TrackState(
        track_id=track_id,
        status=s.status,
        uav_type=s.uav_type,
        first_seen=s.observed_at,
        last_seen=s.observed_at,
        lat=s.lat,
        lon=s.lon,
        error_km=math.sqrt(2.0 * a),
        v_north_kmh=vn,
        v_east_kmh=ve,
        reports=1,
        count=s.count,
        priority=s.priority,
        v_error_kmh=math.sqrt(vv),
        pv_cov=pv,
        moving_votes=_vote(s),
    )


def join(track: TrackState, s: Sighting, *, params: TrackParams = DEFAULT_PARAMS) -> TrackState:
    """The new estimate after s joined track (s may be older than the track's latest report)."""
    uav_type = _specific(track.uav_type, s.uav_type)
    kind = _kind(uav_type)
    h = (s.observed_at - track.last_seen) / S_PER_H
    k_lon = KM_PER_DEG * max(math.cos(math.radians(track.lat)), 1e-6)
    zn = (s.lat - track.lat) * KM_PER_DEG
    ze = _wrap_deg(s.lon - track.lon) * k_lon
    vn = track.v_north_kmh or 0.0
    ve = track.v_east_kmh or 0.0
    a = track.error_km * track.error_km / 2.0
    b = track.pv_cov
    c = track.v_error_kmh * track.v_error_kmh
    r = _report_var(s, params)
    pn = pe = 0.0
    if h >= 0.0:
        # Predict to the report's time, then measure the position there (H = [1, 0]).
        pn, pe = vn * h, ve * h
        a, b, c = a + 2.0 * b * h + c * h * h + kind.q * h**3 / 3.0, b + c * h + kind.q * h * h / 2.0, c + kind.q * h
        lag = 0.0
        q_lag = 0.0
    else:
        # A late report measures where the drone was τ ago: H = [1, -τ] against the state at last_seen; the
        # manoeuvres since then blur it as process noise would (the usual one-lag out-of-sequence approximation).
        lag = -h
        q_lag = kind.q * lag
        r += kind.q * lag**3 / 3.0
    # Position update (with lag: on the retrodicted position).
    pht0, pht1 = a - b * lag, b - c * lag
    s_var = a - 2.0 * b * lag + c * lag * lag + r
    k0, k1 = pht0 / s_var, pht1 / s_var
    yn, ye = zn - (pn - vn * lag), ze - (pe - ve * lag)
    pn, pe = pn + k0 * yn, pe + k0 * ye
    vn, ve = vn + k1 * yn, ve + k1 * ye
    a, b, c = a - k0 * k0 * s_var, b - k0 * k1 * s_var, c - k1 * k1 * s_var
    hint = _velocity_hint(s, uav_type)
    if hint is not None:
        hn, he, hv = hint
        s_v = c + hv + q_lag
        g0, g1 = b / s_v, c / s_v
        yn, ye = hn - vn, he - ve
        pn, pe = pn + g0 * yn, pe + g0 * ye
        vn, ve = vn + g1 * yn, ve + g1 * ye
        a, b, c = a - g0 * g0 * s_v, b - g0 * g1 * s_v, c - g1 * g1 * s_v
    # Two wild positions a few seconds apart can fling the estimate past what anything of the type flies.
    speed = math.hypot(vn, ve)
    cap = min(kind.max_speed_kmh, params.max_speed_kmh * 1.2)
    if speed > cap:
        vn, ve = vn * cap / speed, ve * cap / speed
    # Rounding must not leave the covariance indefinite, nor the position surer than a caller can make it.
    a = max(a, MIN_ERROR_KM * MIN_ERROR_KM / 2.0)
    c = max(c, 1.0)
    lim = math.sqrt(a * c) * 0.999
    b = max(-lim, min(lim, b))
    lat, lon = _moved(track.lat, track.lon, pn, pe)
    return TrackState(
        track_id=track.track_id,
        status=track.status,
        uav_type=uav_type,
        first_seen=min(track.first_seen, s.observed_at),
        last_seen=max(track.last_seen, s.observed_at),
        lat=lat,
        lon=lon,
        error_km=math.sqrt(2.0 * a),
        v_north_kmh=vn,
        v_east_kmh=ve,
        reports=track.reports + 1,
        count=max(track.count, s.count),
        priority=min(track.priority, s.priority, key=lambda p: _URGENCY.get(p, 1)),
        v_error_kmh=math.sqrt(c),
        pv_cov=b,
        moving_votes=track.moving_votes + _vote(s),
    )


def rebuild(track_id: str, sightings: Sequence[Sighting], *, params: TrackParams = DEFAULT_PARAMS) -> TrackState:
    """A track from scratch, its sightings taken in observed_at order (ties: given order)."""
    if not sightings:
        raise ValueError("a track needs at least one sighting")
    ordered = sorted(sightings, key=lambda s: s.observed_at)
    track = start(ordered[0], track_id, params=params)
    for s in ordered[1:]:
        track = join(track, s, params=params)
    return track


# ---- association ---------------------------------------------------------------------------------------------

# Penalties (added to the score, a negative log likelihood) for what the caller said against what the track is
# doing: a course reported opposite to the track's, "slow" or "hovering" against a fast track. Penalties, not
# refusals: callers' headings are often 45° off, some give where the drone came from.
HEADING_PENALTY = 3.0
SLOW_PENALTY = 2.0
KNOWN_V_SIGMA_KMH = 40.0  # a track's velocity this sure is taken as known when judging what a caller says
SLOW_IMPLIED_MAX_KMH = 150.0
TRANSIT_MIN_KMH = 100.0  # the least a fixed wing in transit flies


@dataclass(frozen=True, slots=True)
class Candidate:
    """How one open track judged a report (see `explain`)."""

    track_id: str
    miss_km: float  # from the report to where the track would be at the report's time
    gate_km: float  # the largest miss the track accepts at that time (inf: not judged that far)
    score: float  # negative log likelihood of the miss, plus penalties: the lowest joins
    refused: str  # why the track cannot take the report; "": it can


def _judge(s: Sighting, tr: TrackState, params: TrackParams) -> tuple[str, float, float, float]:
    """The gates of one track for one report, cheapest first: (why refused or "", miss, gate, score)."""
    if tr.status != s.status:
        return "status", math.inf, math.inf, math.inf
    stype = s.uav_type
    if stype != tr.uav_type and stype != _UNKNOWN and tr.uav_type != _UNKNOWN:
        return "type", math.inf, math.inf, math.inf
    dt = s.observed_at - tr.last_seen
    adt = abs(dt)
    if adt > params.join_window_s:
        return "time", math.inf, math.inf, math.inf
    err2 = CALLER_ERRORS * params.position_error_km
    k_lon = KM_PER_DEG * math.cos(math.radians((s.lat + tr.lat) / 2.0))
    dn = (s.lat - tr.lat) * KM_PER_DEG
    de = _wrap_deg(s.lon - tr.lon) * k_lon
    # (b) the contract's gate from the latest position, on the great circle whenever the flat distance (off by far
    # less than 1 % over a few hundred km at these latitudes) is too close to call.
    limit = params.max_speed_kmh * adt / S_PER_H + err2
    flat = math.hypot(dn, de)
    if (flat > limit * 0.99 or abs(s.lat) > 70.0) and distance_km(tr.lat, tr.lon, s.lat, s.lon) > limit:
        return "speed", flat, limit, math.inf
    utype = _specific(tr.uav_type, stype)
    kind = _kind(utype)
    # The type's own top speed, from the latest position: a multirotor track cannot explain a report 15 km off
    # five minutes later.
    if kind.max_speed_kmh < params.max_speed_kmh:
        limit = kind.max_speed_kmh * adt / S_PER_H + err2
        if flat > limit:
            return "type speed", flat, limit, math.inf
    h = dt / S_PER_H
    vn = tr.v_north_kmh or 0.0
    ve = tr.v_east_kmh or 0.0
    speed = math.hypot(vn, ve)
    fast_known = tr.v_error_kmh <= KNOWN_V_SIGMA_KMH and speed >= 80.0
    # A track that callers say is going somewhere, of a type that cannot stop, is not found minutes later where it
    # was: a report there is a drone following it (the corridor's second Shahed) while the track does not yet
    # know its own velocity. A loitering fixed wing is "circling" and is spared.
    if (
        tr.v_error_kmh > KNOWN_V_SIGMA_KMH
        and tr.moving_votes + _vote(s) > 0
        and utype in _NEVER_SLOW
        and flat < TRANSIT_MIN_KMH * adt / S_PER_H - err2
    ):
        return "not moving", flat, TRANSIT_MIN_KMH * adt / S_PER_H - err2, math.inf
    # The caller sees a slow or hovering object: it cannot be one that had to cover the distance from the track's
    # last fix at more than SLOW_IMPLIED_MAX_KMH (against a track that seems fast, "slow" is more likely the
    # caller's mistake: penalised below, not refused).
    if (
        (s.speed == _SLOW or s.movement == _HOVERING)
        and speed < 80.0
        and adt > 0.0
        and (flat - err2) / adt * S_PER_H > SLOW_IMPLIED_MAX_KMH
    ):
        return "slow", flat, err2 + SLOW_IMPLIED_MAX_KMH * adt / S_PER_H, math.inf
    miss = math.hypot(dn - vn * h, de - ve * h)
    a = tr.error_km * tr.error_km / 2.0
    c = tr.v_error_kmh * tr.v_error_kmh
    pred_var = a + 2.0 * tr.pv_cov * h + c * h * h + kind.q * abs(h) ** 3 / 3.0
    innov_var = pred_var + _report_var(s, params)
    # The gate takes the caller's error as at least the usual one: an operator's accuracy is a guess, and a
    # small one must not refuse what a usual caller's report would join; a large one widens it.
    acc_var = 0.0 if s.accuracy_m is None else (s.accuracy_m / 1000.0) ** 2 / 2.0
    gate_var = pred_var + params.position_error_km**2 / 2.0 + acc_var
    gate = GATE_SIGMAS * math.sqrt(gate_var) + kind.manoeuvre * speed * adt / S_PER_H
    if miss > gate:
        return "prediction", miss, gate, math.inf
    # The score is the 2-D Gaussian's negative log likelihood: for tracks as sure of themselves it orders them
    # by miss alone; of two as near, the surer one wins, so a young track born of one caller's wild position
    # does not take the reports of the established track it duplicates.
    score = miss * miss / innov_var + 2.0 * math.log(innov_var)
    if fast_known:
        if s.heading_deg is not None:
            off = _angle_between(math.degrees(math.atan2(ve, vn)), float(s.heading_deg))
            if off > 60.0:
                score += HEADING_PENALTY * (off - 60.0) / 120.0
        if s.movement == _HOVERING and speed >= 120.0 and tr.v_error_kmh <= 25.0:
            return "hovering", miss, gate, math.inf
        if s.speed == _SLOW or s.movement == _HOVERING:
            score += SLOW_PENALTY
    elif tr.v_error_kmh <= KNOWN_V_SIGMA_KMH and speed < 30.0 and s.speed == _FAST:
        score += SLOW_PENALTY
    return "", miss, gate, score


def explain(s: Sighting, open_tracks: Sequence[TrackState], params: TrackParams) -> list[Candidate]:
    """How each open track judges s, as `assign` does (without its prefilter): for a dispatcher's "why"."""
    out = []
    for tr in open_tracks:
        refused, miss, gate, score = _judge(s, tr, params)
        out.append(Candidate(tr.track_id, miss, gate, score, refused))
    return out


def assign(s: Sighting, open_tracks: Sequence[TrackState], now: float, params: TrackParams) -> Decision:
    """The open track s joins, or none: a new track.

    Every gate is in observed time (a late report is judged where the drone was when it was seen), so `now` is
    not needed for the decision; the caller drops tracks that have closed.
    """
    t, lat, status, stype = s.observed_at, s.lat, s.status, s.uav_type
    window = params.join_window_s
    err2 = CALLER_ERRORS * params.position_error_km
    deg_per_s = params.max_speed_kmh / S_PER_H / KM_PER_DEG
    # A box from the widest gate, then the contract's gate on latitude alone (a lower bound of the distance),
    # before any trigonometry: of 500 open tracks over a region, most fail the first, most others the second.
    dlat = (params.max_speed_kmh * window / S_PER_H + err2) / KM_PER_DEG
    lat_lo, lat_hi = lat - dlat, lat + dlat
    t_lo, t_hi = t - window, t + window
    dlon = dlat / math.cos(math.radians(min(89.9, abs(lat) + dlat)))
    lon_lo, lon_hi = s.lon - dlon, s.lon + dlon
    wraps = lon_lo < -180.0 or lon_hi > 180.0
    if wraps:
        near = [tr for tr in open_tracks if lat_lo <= tr.lat <= lat_hi and t_lo <= tr.last_seen <= t_hi]
    else:
        near = [
            tr
            for tr in open_tracks
            if lat_lo <= tr.lat <= lat_hi and lon_lo <= tr.lon <= lon_hi and t_lo <= tr.last_seen <= t_hi
        ]
    err2_deg = err2 / KM_PER_DEG
    # Off the poles and the antimeridian, the flat distance with the report's own cos(lat) is within 1 % of the
    # great circle over the box: 2.5 % beyond the contract's gate is surely beyond it.
    flat_ok = not wraps and abs(lat) <= 70.0
    cos2 = math.cos(math.radians(lat)) ** 2
    margin2 = 1.025**2
    lon = s.lon
    best: TrackState | None = None
    best_score = math.inf
    best_miss = 0.0
    for tr in near:
        tt = tr.uav_type
        if tr.status != status or (tt != stype and tt != _UNKNOWN and stype != _UNKNOWN):
            continue
        reach = deg_per_s * abs(t - tr.last_seen) + err2_deg
        dlat_t = tr.lat - lat
        if abs(dlat_t) > reach:  # the distance is at least the latitude's
            continue
        dlon_t = tr.lon - lon
        if flat_ok and dlat_t * dlat_t + dlon_t * dlon_t * cos2 > reach * reach * margin2:
            continue
        refused, miss, _, score = _judge(s, tr, params)
        if not refused and score < best_score:
            best, best_score, best_miss = tr, score, miss
    if best is None:
        return _NEW
    return Decision(best.track_id, best_miss)


# ---- what the desk sees --------------------------------------------------------------------------------------

# A course within this of the line to the airfield counts as approaching it (callers' headings are this rough).
APPROACH_DEG = 60.0


@dataclass(frozen=True, slots=True)
class DeskView:
    distance_km: float
    bearing_deg: int  # from the airfield (desk area centre) to the track, 0..359
    eta_s: float | None  # time to reach the airfield at the estimated speed when the track approaches it, else None


def desk_view(track: TrackState, centre_lat: float, centre_lon: float, now: float) -> DeskView:
    lat, lon = track.position_at(now)
    dist = distance_km(centre_lat, centre_lon, lat, lon)
    brg = round(bearing_deg(centre_lat, centre_lon, lat, lon)) % 360
    eta: float | None = None
    speed = track.speed_kmh()
    course = track.heading_deg()
    if speed is not None and course is not None and dist > 0.0:
        # Towards the airfield is the bearing from the track back to the centre.
        to_centre = bearing_deg(lat, lon, centre_lat, centre_lon)
        if _angle_between(float(course), to_centre) <= APPROACH_DEG:
            eta = dist / speed * S_PER_H
    return DeskView(dist, brg, eta)

