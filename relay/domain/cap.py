"""An alert as an OASIS CAP 1.2 document (CONTRACT.md, "Interoperability: Cursor-on-Target and CAP 1.2").

Pure: the alert, the earlier alerts of its track and the relay's settings in, an lxml element out. The same alert
gives the same document on every relay sharing the database and after any restart (the identifier, `sent` and
the references are functions of stored values only), until a dispatcher moves it to another track (merge,
split): then its `incidents` and `references` follow the track it is in now.

Choices a CAP consumer may want to know (each also said where it is made):
- `scope` is Restricted: see SCOPE.
- urgency, severity, certainty: see `_urgency`, `_severity`, `_certainty`.
- a stale report (observed more than 10 minutes before it reached the relay): an Alert or Update like any other
  (a Cancel would withdraw the earlier messages, which were not wrong), urgency Expected instead of Immediate,
  and it says so in the description and in the `stale` parameter.
- `expires`: when no later report could join the alert's track any more (tracks.join_window_s after it was
  accepted); a later report of the same object comes as an Update before that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo

from lxml import etree

from relay.domain.cap_text import xml_text
from relay.domain.model import Location, Perception, Priority, ReportStatus, UavType
from relay.domain.records import AlertRecord
from relay.domain.render import Renderer, place

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CAP_MEDIA_TYPE = "application/cap+xml"
# the default namespace (lxml-stubs type nsmap without the None key lxml takes for it)
_NSMAP = cast(Mapping[str, str], {None: CAP_NS})

# A raid may put hundreds of reports on one track: an Update names the track's first alert (the incident's
# origin) and its latest ones, not every one, so the document stays small enough for any consumer.
MAX_REFERENCES = 50

# A caller places an object in the sky to a kilometre at best: a smaller circle would claim a precision the report
# does not have (the CoT event's `ce` says the same).
MIN_RADIUS_KM = 1.0

# Restricted, not Public: the recipients are airfield dispatchers and the services behind them. A sighting with
# coordinates near a military airfield, unverified and from one caller, must not be rebroadcast to the public by
# an alert hub that takes every Public message (panic, and it tells the other side what is being seen where);
# Private would need the recipients' addresses, which a consumer that polls the feed does not give.
SCOPE = "Restricted"
RESTRICTION = "Только для дежурных служб аэродромов и экстренных служб; не для оповещения населения"

EVENT = "Обнаружение БПЛА"
HEADLINE_MAX = 160  # CAP 1.2, 3.2.2 headline: "SHOULD be made as direct and actionable as possible ... 160 characters"

_STATUS = {ReportStatus.ACTUAL: "Actual", ReportStatus.EXERCISE: "Exercise", ReportStatus.TEST: "Test"}
_NOTE = {
    ReportStatus.EXERCISE: "УЧЕНИЯ: сообщение учений, не реальная тревога",
    ReportStatus.TEST: "ТЕСТ: техническая проверка, не реальная тревога",
}


@dataclass(frozen=True, slots=True)
class CapSource:
    """What every document of this relay shares."""

    sender: str  # [cap] sender: the same on every relay sharing the database
    sender_name: str
    public_url: str  # base of the <web> link to the alert
    timezone: ZoneInfo  # times in the dispatcher's offset, as SMS and e-mail show them
    expires_after_s: float  # tracks.join_window_s
    default_radius_km: float  # tracks.position_error_km: the circle when the report gives no accuracy


@dataclass(frozen=True, slots=True)
class Earlier:
    """An alert of the same track, accepted before the one the document is of."""

    alert_id: str
    created_at: float


def identifier(alert_id: str) -> str:
    """Stable for ever: the alert id is unique across every relay sharing a database (ULID, random low bits).
    Never equal to the CoT uid of a track (`uav-relay.{track_id}`), though a track's id may be its first alert's."""
    return f"uav-relay.alert.{alert_id}"


def cap_time(t: float, tz: ZoneInfo) -> str:
    """CAP's dateTime: whole seconds and a numeric offset (the schema's pattern refuses `Z` and fractions)."""
    local = datetime.fromtimestamp(int(t), UTC).astimezone(tz)
    offset = local.utcoffset()
    if offset is None or offset.total_seconds() % 60:  # a historic local mean time: not expressible as +hh:mm
        local = local.astimezone(UTC)
    return local.isoformat(timespec="seconds").replace("Z", "+00:00")


def reference(source: CapSource, earlier: Earlier) -> str:
    """CAP 1.2, 3.2.1 references: "sender,identifier,sent" of an earlier message."""
    return f"{source.sender},{identifier(earlier.alert_id)},{cap_time(earlier.created_at, source.timezone)}"


def alert_url(public_url: str, alert_id: str) -> str:
    return f"{public_url}/api/v1/alerts/{alert_id}"


def cap_alert(alert: AlertRecord, earlier: Sequence[Earlier], source: CapSource, renderer: Renderer) -> etree._Element:
    """The alert's CAP 1.2 <alert>; `earlier`: the alerts of its track accepted before it, in any order."""
    before = sorted((e for e in earlier if e.alert_id != alert.alert_id), key=lambda e: (e.created_at, e.alert_id))
    r = alert.report
    root = etree.Element(f"{{{CAP_NS}}}alert", nsmap=_NSMAP)
    _add(root, "identifier", identifier(alert.alert_id))
    _add(root, "sender", source.sender)
    _add(root, "sent", cap_time(alert.created_at, source.timezone))
    _add(root, "status", _STATUS[r.status])
    _add(root, "msgType", "Update" if before else "Alert")
    _add(root, "scope", SCOPE)
    _add(root, "restriction", RESTRICTION)
    if r.status in _NOTE:
        _add(root, "note", _NOTE[r.status])
    if before:
        shown = before if len(before) <= MAX_REFERENCES else [before[0], *before[-(MAX_REFERENCES - 1):]]
        _add(root, "references", " ".join(reference(source, e) for e in shown))
    _add(root, "incidents", alert.track_id or alert.alert_id)
    _info(root, alert, len(before), source, renderer)
    return root


def to_bytes(element: etree._Element) -> bytes:
    return etree.tostring(element, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _info(root: etree._Element, alert: AlertRecord, earlier: int, source: CapSource, renderer: Renderer) -> None:
    r, fields = alert.report, renderer.fields(alert)
    info = _add(root, "info")
    _add(info, "language", "ru-RU")
    _add(info, "category", "Security")
    _add(info, "event", EVENT)
    _add(info, "urgency", _urgency(alert))
    _add(info, "severity", _severity(alert))
    _add(info, "certainty", _certainty(r.perception, earlier))
    _add(info, "onset", cap_time(r.observed_at.timestamp(), source.timezone))
    _add(info, "expires", cap_time(alert.created_at + source.expires_after_s, source.timezone))
    _add(info, "senderName", xml_text(source.sender_name))
    _add(info, "headline", _shorten(xml_text(renderer.email_subject(alert)), HEADLINE_MAX))
    _add(info, "description", _description(alert, fields["mark"], renderer))
    _add(info, "instruction", xml_text(
        f"Подтвердите получение кодом {alert.short_code}: ответом на SMS или в консоли дежурного."))
    _add(info, "web", alert_url(source.public_url, alert.alert_id))
    for name, value in _parameters(alert):
        p = _add(info, "parameter")
        _add(p, "valueName", name)
        _add(p, "value", value)
    area = _add(info, "area")
    _add(area, "areaDesc", _area_desc(alert))
    _add(area, "circle", _circle(alert, source.default_radius_km))


def _urgency(alert: AlertRecord) -> str:
    # Immediate: a drone covers 2.5 to 3 km a minute, so the airfield must act now (CAP: "responsive action
    # SHOULD be taken immediately"). Routine reports and stale ones (the object is no longer where it was seen,
    # but may still come) are Expected: "within the next hour". Never Past: nobody knows the object has gone.
    if alert.stale or alert.priority == Priority.ROUTINE:
        return "Expected"
    return "Immediate"


def _severity(alert: AlertRecord) -> str:
    # The operator's priority is the 112 centre's judgement of the threat: flash (every channel at once) is
    # Extreme, as is anything that looks like a missile whatever the priority ("extraordinary threat to life or
    # property"); an immediate report is Severe; a routine one Moderate ("possible threat").
    if alert.priority == Priority.FLASH or alert.report.uav_type == UavType.MISSILE_LIKE:
        return "Extreme"
    return "Moderate" if alert.priority == Priority.ROUTINE else "Severe"


_LADDER = ("Possible", "Likely", "Observed")


def _certainty(perception: Perception, earlier: int) -> str:
    # One caller is not a verified observation: one who saw it is Likely; one who only heard it (a moped, a
    # lawnmower sound alike) or did not say is Possible. Two earlier reports of the same track by other calls
    # corroborate it one step (three independent callers seeing one object: Observed).
    step = 1 if perception in (Perception.SEEN, Perception.SEEN_AND_HEARD) else 0
    if earlier >= 2:
        step += 1
    return _LADDER[min(step, len(_LADDER) - 1)]


def _description(alert: AlertRecord, mark: str, renderer: Renderer) -> str:
    lines = [f"{mark}Сообщение о БПЛА, код {alert.short_code}", ""]
    lines += [f"{k}: {v}" for k, v in renderer.report_lines(alert)]
    return xml_text("\n".join(lines), multiline=True)


def _parameters(alert: AlertRecord) -> list[tuple[str, str]]:
    r = alert.report
    found = [
        ("short_code", alert.short_code),
        ("priority", str(alert.priority)),
        ("uav_type", r.uav_type.value),
        ("count", str(r.count)),
        ("heading_deg", "" if r.heading_deg is None else str(r.heading_deg)),
        ("bearing_deg", "" if r.bearing_deg is None else str(r.bearing_deg)),
        ("movement", r.movement.value),
        ("altitude", r.altitude.value),
        ("altitude_m", "" if r.altitude_m is None else str(r.altitude_m)),
        ("speed", r.speed.value),
        ("sound", r.sound.value),
        ("perception", r.perception.value),
        ("accuracy_m", "" if r.location.accuracy_m is None else f"{r.location.accuracy_m:g}"),
        ("stale", "true" if alert.stale else "false"),
    ]
    return [(k, v) for k, v in found if v]


def _area_desc(alert: AlertRecord) -> str:
    loc = alert.report.location
    named = [xml_text(t) for t in (loc.district, loc.address) if t]
    # without a name (or with one made of nothing XML can carry): the coordinates, as SMS and e-mail name it
    return ", ".join(t for t in named if t) or place(Location(lat=loc.lat, lon=loc.lon))


def _circle(alert: AlertRecord, default_radius_km: float) -> str:
    """CAP 1.2, 3.3.4.2: "lat,lon radius", WGS 84 degrees and kilometres (what the relay's reports carry)."""
    loc = alert.report.location
    km = loc.accuracy_m / 1000 if loc.accuracy_m is not None else default_radius_km
    radius = f"{max(km, MIN_RADIUS_KM):.3f}".rstrip("0").rstrip(".")
    return f"{loc.lat:.5f},{loc.lon:.5f} {radius}"


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{CAP_NS}}}{name}")
    if text is not None:
        child.text = text
    return child


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"

