"""A track as a Cursor-on-Target event for a TAK map (CONTRACT.md, "Interoperability: Cursor-on-Target").

Pure: no I/O, the time is given. One event per track state, always under the same uid, so a TAK client moves
one marker instead of drawing a trail of them; a track that ends (closed, merged away) gets a last event that
takes it off the map, so nobody keeps a ghost of a drone that is gone.

ElementTree here only builds events (its nosec): nothing inbound is parsed with it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # nosec B405
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.domain.model import ReportStatus, UavType
from relay.domain.text import normalise
from relay.domain.tracks import TrackState

UID_PREFIX = "uav-relay."
# The CoT convention for "not known": height above the ellipsoid, and its error, as nine nines.
UNKNOWN = 9999999.0
HOW = "h-e"  # human, estimated: callers on the ground placed it, no sensor did
DELETE_TYPE = "t-x-d-d"  # TAK's "delete this uid" tasking event
DEFAULT_TYPE = "a-u-A"  # unknown air track

# The type atom only says what a caller can tell from the ground. The affiliation stays `u` (unknown) for every
# report: a 112 caller sees a drone, not whose it is, and nothing in a report says "hostile" (a hostile `h` would
# put a red symbol on a military map on a caller's word alone). The function is taken only where MIL-STD-2525's
# air symbols have one that the reported uav_type means: a fixed wing drone is 2525's "Drone (RPV/UAV)"
# (A-M-F-Q, the one UAV symbol, filed under military fixed wing), a missile-like object is "Missile in flight"
# (A-W-M), a helicopter is "Rotary wing" (A-M-H). A multirotor has no 2525B symbol of its own (A-M-H would say
# "helicopter" of a quadcopter): it stays unknown air, as does "unknown".
TYPE_BY_UAV: dict[str, str] = {
    UavType.FIXED_WING.value: "a-u-A-M-F-Q",
    UavType.MISSILE_LIKE.value: "a-u-A-W-M",
    UavType.HELICOPTER.value: "a-u-A-M-H",
    UavType.MULTIROTOR.value: DEFAULT_TYPE,
    UavType.UNKNOWN.value: DEFAULT_TYPE,
}

# The CoT schema's `opex` attribute: `e` an exercise, `s` a simulation (our `test`); absent for real operations.
OPEX = {ReportStatus.EXERCISE.value: "e-uav-relay", ReportStatus.TEST.value: "s-uav-relay"}
STATUS_WORD = {ReportStatus.EXERCISE.value: "УЧЕНИЯ", ReportStatus.TEST.value: "ТЕСТ"}
UAV_WORD = {
    UavType.FIXED_WING.value: "самолётного типа",
    UavType.MULTIROTOR.value: "мультикоптер",
    UavType.HELICOPTER.value: "вертолётного типа",
    UavType.MISSILE_LIKE.value: "ракетоподобный",
    UavType.UNKNOWN.value: "тип неизвестен",
}
STATE_WORD = {"open": "", "acknowledged": "Подтверждено аэродромом.", "closed": "Трек закрыт."}
MAX_PLACE = 100
MAX_NOTES = 300
MAX_CODES = 10  # the latest ones: a raid's track must not grow its event without bound

# XML 1.0 allows tab, LF, CR and U+0020-U+D7FF, U+E000-U+FFFD (and the astral planes); `normalise` already took
# the C0/C1 and bidi controls out, this catches what it leaves: lone surrogates (JSON can carry one) and
# U+FFFE/U+FFFF. A single one of them makes the whole event unparsable for the TAK server.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class CotTrack:
    """What an event says of one track: its estimate and what the relay knows around it."""

    estimate: TrackState
    state: str  # open | acknowledged | closed (relay.domain.track_summary.track_state)
    codes: Sequence[str]  # the short codes of its alerts, oldest first
    place: str = ""  # the latest report's district or address
    notes: str = ""  # the latest report's notes
    altitude_m: int | None = None  # the latest report's altitude above ground, if the caller gave one
    link_url: str = ""  # the track on the relay


@dataclass(frozen=True, slots=True)
class CotStyle:
    """The site's choices: [cot] and [tracks] in the config."""

    join_window_s: float = 600.0  # a track closes this long after its latest report
    stale_margin_s: float = 60.0  # an event is never stale sooner than this after it was made
    callsign_prefix: str = "БПЛА"


def uid_of(track_id: str) -> str:
    return f"{UID_PREFIX}{track_id}"


def cot_time(t: float) -> str:
    """xs:dateTime in UTC with milliseconds, as TAK clients write it."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def xml_text(text: str, limit: int, *, multiline: bool = False) -> str:
    clean = _NOT_XML.sub("", normalise(text, multiline=multiline))
    return (clean if multiline else " ".join(clean.split()))[:limit]


def cot_type(uav_type: str) -> str:
    return TYPE_BY_UAV.get(uav_type, DEFAULT_TYPE)


def stale_at(track: CotTrack, now: float, style: CotStyle) -> float:
    """When the map should drop the marker: when the track would close, never sooner than the margin from now;
    a closed track at once."""
    if track.state == "closed":
        return now
    return max(track.estimate.last_seen + style.join_window_s, now + style.stale_margin_s)


def track_event(track: CotTrack, now: float, style: CotStyle) -> bytes:
    est = track.estimate
    event = ET.Element("event", {
        "version": "2.0",
        "uid": uid_of(est.track_id),
        "type": cot_type(est.uav_type),
        "how": HOW,
        "time": cot_time(now),
        "start": cot_time(min(est.last_seen, now)),
        "stale": cot_time(stale_at(track, now, style)),
    })
    if est.status in OPEX:
        event.set("opex", OPEX[est.status])
    hae = UNKNOWN if track.altitude_m is None else float(track.altitude_m)  # above ground: a floor, not a fix
    ET.SubElement(event, "point", {
        "lat": f"{est.lat:.6f}", "lon": f"{est.lon:.6f}", "hae": f"{hae:.1f}",
        "ce": f"{est.error_km * 1000.0:.1f}", "le": f"{UNKNOWN:.1f}",
    })
    detail = ET.SubElement(event, "detail")
    label = track.codes[0] if track.codes else est.track_id
    ET.SubElement(detail, "contact", {"callsign": xml_text(f"{style.callsign_prefix} {label}", 80)})
    speed, course = est.speed_kmh(), est.heading_deg()
    if speed is not None and course is not None:  # both, or the map draws a course the track does not have
        # CoT's <track>: course in degrees true, speed in metres per second
        ET.SubElement(detail, "track", {"course": f"{float(course):.1f}", "speed": f"{speed / 3.6:.2f}"})
    codes = list(track.codes)[-MAX_CODES:]
    ET.SubElement(detail, "uav_relay", {
        "track_id": est.track_id, "state": track.state, "status": est.status, "priority": est.priority,
        "uav_type": est.uav_type, "count": str(est.count), "reports": str(est.reports), "codes": " ".join(codes),
    })
    ET.SubElement(detail, "remarks").text = remarks(track, codes)
    if track.link_url:
        ET.SubElement(detail, "link", {"url": track.link_url, "relation": "r-u", "mime": "application/json",
                                       "remarks": "Трек в uav-relay"})
    return bytes(ET.tostring(event, encoding="utf-8"))


def remarks(track: CotTrack, codes: Sequence[str]) -> str:
    est = track.estimate
    parts = [f"{STATUS_WORD[est.status]}." if est.status in STATUS_WORD else "",
             f"БПЛА ({UAV_WORD.get(est.uav_type, est.uav_type)}), {est.count} шт."]
    speed, course = est.speed_kmh(), est.heading_deg()
    if speed is not None:
        parts.append(f"{round(speed)} км/ч" + (f", курс {course}°." if course is not None else "."))
    parts.append(f"Сообщений: {est.reports}. Коды: {', '.join(codes) or '-'}.")
    if track.place:
        parts.append(xml_text(track.place, MAX_PLACE) + ".")
    if track.notes:
        parts.append(xml_text(track.notes, MAX_NOTES))
    parts.append(STATE_WORD.get(track.state, ""))
    return " ".join(p for p in parts if p)


def delete_event(track_id: str, now: float, *, into: str | None = None, uav_type: str = "unknown") -> bytes:
    """TAK's delete tasking for a track merged away (`into`: the track that holds its reports now): the marker
    goes at once instead of lingering until its stale time."""
    event = ET.Element("event", {
        "version": "2.0", "uid": f"{uid_of(track_id)}.delete", "type": DELETE_TYPE, "how": "h-g-i-g-o",
        "time": cot_time(now), "start": cot_time(now), "stale": cot_time(now + 20.0),
    })
    ET.SubElement(event, "point", {"lat": "0.0", "lon": "0.0", "hae": f"{UNKNOWN:.1f}", "ce": f"{UNKNOWN:.1f}",
                                   "le": f"{UNKNOWN:.1f}"})
    detail = ET.SubElement(event, "detail")
    ET.SubElement(detail, "link", {"uid": uid_of(track_id), "relation": "none", "type": cot_type(uav_type)})
    ET.SubElement(detail, "__forcedelete")
    if into is not None:
        ET.SubElement(detail, "remarks").text = f"Трек объединён с {uid_of(into)}."
    return bytes(ET.tostring(event, encoding="utf-8"))
