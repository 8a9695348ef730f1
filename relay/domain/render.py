"""One place that turns an alert into what each channel carries, in Russian for the dispatcher.

Only what the relay rendered leaves it: never the caller's phone or name, never a field the contract does not
know. Templates can be replaced from config (`[templates]`); the fields they may use are `FIELDS`.
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from relay.domain.clock import to_datetime
from relay.domain.model import Location, Priority
from relay.domain.records import AlertRecord
from relay.domain.text import has_controls, normalise, single_line
from relay.domain.track_summary import track_json
from relay.domain.vocabulary import compass, label, marks, short, word

# Cyrillic forces UCS-2: 70 characters in one SMS, 67 per segment once split. Two segments arrive together
# on every handset and cost two messages; a third often arrives later or out of order.
SMS_LIMIT = 134

# The fields a template may use ({name}).
FIELDS = (
    "mark", "time", "date", "place", "type", "type_short", "count", "heading", "altitude", "movement", "code",
    "report_id", "alert_id", "lat", "lon", "district", "address", "notes", "stale", "ack_url", "track",
)

DEFAULT_TEMPLATES = {
    # {track}: the other open codes of the alert's track, which one backup round carries together ("(+K7M P2X)")
    "sms": "{mark}БПЛА {time} {place}: {type_short} x{count}{heading}{altitude}. Код {code}{track}, ответьте им",
    "email_subject": "{mark}[БПЛА] {code}: {type}, {place}, {time}",
}


def public_report(alert: AlertRecord) -> dict[str, Any]:
    """The report as a dispatcher may see it: the caller's phone and name stay with the 112 centre."""
    return alert.report.as_submitted(caller=False)


def mqtt_alert(alert: AlertRecord, desk_id: str, ack_topic: str) -> bytes:
    """Payload of `uav/alerts/{desk_id}`."""
    body = {
        "alert_id": alert.alert_id,
        "short_code": alert.short_code,
        "report_id": alert.report_id,
        "priority": alert.priority,
        "created_at": to_datetime(alert.created_at).isoformat(),
        "report": public_report(alert),
        "ack_topic": ack_topic,
        "desk_id": desk_id,
        "operator_id": alert.operator_id,
        "status": alert.report.status.value,
        "stale": alert.stale,
        "track_id": alert.track_id or alert.alert_id,
    }
    t = alert.track
    if t is not None:
        body["update"] = desk_id in t.update_for
        state = "acknowledged" if t.acknowledged and alert.ack is not None else "open"
        body["track"] = track_json(t.estimate, state, t.alert_ids, t.reports)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def check_template(name: str, template: str) -> None:
    """ValueError naming the problem if `template` uses a field that does not exist, is malformed, or holds a
    control character (a line break in a subject would break the e-mail; only `email_text` may have lines)."""
    if has_controls(template, multiline=name == "email_text"):
        raise ValueError("contains control characters (only email_text may contain line breaks)")
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    unknown = sorted(f for f in used if f not in FIELDS)
    if unknown:
        raise ValueError(f"unknown field {', '.join(unknown)} (fields: {', '.join(FIELDS)})")


@dataclass(frozen=True, slots=True)
class Renderer:
    timezone: ZoneInfo
    templates: Mapping[str, str]

    # ---- fields ---------------------------------------------------------------------------------------

    def fields(self, alert: AlertRecord, ack_url: str = "") -> dict[str, str]:
        r = alert.report
        loc = r.location
        seen = r.observed_at.astimezone(self.timezone)
        heading = r.heading_deg
        alt = word("altitude", r.altitude)
        if r.altitude_m is not None:
            alt = f"~{r.altitude_m} м" if not alt else f"{alt} (~{r.altitude_m} м)"
        return {
            "mark": marks(r.status, alert.priority),
            "time": seen.strftime("%H:%M"),
            "date": seen.strftime("%d.%m.%Y"),
            "place": place(loc),
            "type": word("uav_type", r.uav_type, unknown="тип неизвестен"),
            "type_short": short("uav_type", r.uav_type),
            "count": str(r.count),
            "heading": f", курс {compass(heading)}" if heading is not None else "",
            "altitude": f", {alt}" if alt else "",
            "movement": word("movement", r.movement),
            "code": alert.short_code,
            "report_id": alert.report_id,
            "alert_id": alert.alert_id,
            "lat": f"{loc.lat:.5f}",
            "lon": f"{loc.lon:.5f}",
            "district": normalise(loc.district or ""),
            "address": normalise(loc.address or ""),
            "notes": normalise(r.notes or ""),
            "stale": "наблюдение устарело (более 10 мин)" if alert.stale else "",
            "ack_url": ack_url,
            "track": f" (+{_codes(self.other_codes(alert), ' ')})" if self.other_codes(alert) else "",
        }

    @staticmethod
    def other_codes(alert: AlertRecord) -> tuple[str, ...]:
        return () if alert.track is None else tuple(c for c in alert.track.other_codes if c != alert.short_code)

    # ---- a call ---------------------------------------------------------------------------------------

    def voice(self, alert: AlertRecord, spell: Callable[[str], str]) -> str:
        """What a call reads (the voice channel reads it twice, slowly, then asks for the key): the code spelled
        out by `spell` (letter by letter, a phonetic alphabet for Latin letters), then where, what, when."""
        f = self.fields(alert)
        parts = [
            f"{f['mark']}Внимание! Беспилотник.",
            f"Код: {spell(alert.short_code)}.",
            f"Место: {f['place']}." if f["place"] else "",
            f"{f['type']}, количество: {f['count']}{f['heading']}.",
            f"Время наблюдения: {f['time']}.",
        ]
        return single_line(" ".join(p for p in parts if p))

    # ---- SMS ------------------------------------------------------------------------------------------

    def sms(self, alert: AlertRecord) -> str:
        """At most SMS_LIMIT characters: the place is shortened first, then the whole text."""
        f = self.fields(alert)
        template = self.templates.get("sms", DEFAULT_TEMPLATES["sms"])
        text = single_line(template.format(**f))
        if len(text) > SMS_LIMIT and f["place"]:
            room = len(f["place"]) - (len(text) - SMS_LIMIT)
            f["place"] = _shorten(f["place"], max(8, room))
            text = single_line(template.format(**f))
        return _shorten(text, SMS_LIMIT)

    def sms_batches(self, alerts: Sequence[AlertRecord]) -> list[tuple[str, list[AlertRecord]]]:
        """Alerts for one phone as SMS texts of at most SMS_LIMIT, each with the alerts it carries."""
        if len(alerts) == 1:
            return [(self.sms(alerts[0]), [alerts[0]])]
        batches: list[tuple[str, list[AlertRecord]]] = []
        items: list[str] = []
        carried: list[AlertRecord] = []
        # Flash first (sorted() keeps the rest in order); each item keeps its own marks: an exercise inside a
        # bundle of real alerts must still read as an exercise.
        for a in sorted(alerts, key=lambda a: a.priority != Priority.FLASH):
            f = self.fields(a)
            count = f" x{f['count']}" if f["count"] != "1" else ""
            item = f"{f['mark']}{a.short_code} {f['time']} {_shorten(f['place'], 14)}{count}"
            if items and len(_bundle_text([*items, item], len(alerts))) > SMS_LIMIT:
                batches.append((_bundle_text(items, len(alerts)), carried))
                items, carried = [], []
            items.append(item)
            carried.append(a)
        batches.append((_shorten(_bundle_text(items, len(alerts)), SMS_LIMIT), carried))
        return batches

    # ---- e-mail ---------------------------------------------------------------------------------------

    def email_subject(self, alert: AlertRecord) -> str:
        """A header value: one line whatever the template or the stored report holds."""
        return single_line(
            self.templates.get("email_subject", DEFAULT_TEMPLATES["email_subject"]).format(**self.fields(alert))
        )

    def email_text(self, alert: AlertRecord, ack_url: str) -> str:
        if "email_text" in self.templates:
            return normalise(self.templates["email_text"].format(**self.fields(alert, ack_url)), multiline=True)
        lines = [f"{label}: {value}" for label, value in self.report_lines(alert)]
        return "\n".join([
            f"{self.fields(alert)['mark']}Сообщение о БПЛА, код {alert.short_code}", "", *lines, "",
            f"Подтвердите получение: {ack_url}",
            f"или ответьте на SMS кодом {alert.short_code}, или в консоли дежурного.",
            "", f"Тревога {alert.alert_id}, сообщение оператора 112 {alert.report_id}.",
        ])

    def email_html(self, alert: AlertRecord, ack_url: str) -> str:
        rows = "".join(
            f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self.report_lines(alert)
        )
        mark = html.escape(self.fields(alert)["mark"])
        code = html.escape(alert.short_code)
        url = html.escape(ack_url, quote=True)
        return (
            "<!doctype html><html lang='ru'><meta charset='utf-8'><body>"
            f"<h2>{mark}Сообщение о БПЛА, код {code}</h2><table>{rows}</table>"
            f"<p><a href='{url}'>Подтвердить получение</a> (откроется страница с кнопкой «Подтвердить»)</p>"
            f"<p>Или ответьте на SMS кодом <b>{code}</b>.</p>"
            f"<p style='color:#666'>Тревога {html.escape(alert.alert_id)}, сообщение оператора 112 "
            f"{html.escape(alert.report_id)}.</p></body></html>"
        )

    def report_lines(self, alert: AlertRecord) -> list[tuple[str, str]]:
        """The whole report (without the caller), as label/value pairs, for e-mail and the ack page."""
        r, f = alert.report, self.fields(alert)
        loc = r.location
        lines = [
            (label("observed"), f"{f['date']} {f['time']}".strip()),
            (label("place"), f["place"]),
            (label("coords"), f"{f['lat']}, {f['lon']}" + (f" (±{loc.accuracy_m:g} м)" if loc.accuracy_m else "")),
            (label("address"), f["address"]),
            (label("type"), f["type"]),
            (label("count"), f["count"]),
            (label("heading"), f"{r.heading_deg}° ({compass(r.heading_deg)})" if r.heading_deg is not None else ""),
            (label("bearing"), f"{r.bearing_deg}°" if r.bearing_deg is not None else ""),
            (label("movement"), f["movement"]),
            (label("altitude"), f["altitude"].removeprefix(", ")),
            (label("speed"), word("speed", r.speed)),
            (label("sound"), word("sound", r.sound)),
            (label("perception"), word("perception", r.perception)),
            (label("notes"), f["notes"]),
            (label("attention"), f["stale"]),
            (label("track"), label("track_codes").format(codes=_codes(self.other_codes(alert), ", ", 50))
             if self.other_codes(alert) else ""),
        ]
        return [(k, v) for k, v in lines if v]


def place(loc: Location) -> str:
    """District, else address, else the coordinates: what a dispatcher can find on a map fastest."""
    named = normalise(loc.district or "") or normalise(loc.address or "")
    return named or f"{loc.lat:.3f},{loc.lon:.3f}"


# A raid of many calls about one drone: an SMS names a few of the track's other codes (any one acks the whole
# track), not so many that the text loses the place and the reply instruction.
SMS_TRACK_CODES = 6


def _codes(codes: Sequence[str], sep: str, shown: int = SMS_TRACK_CODES) -> str:
    more = len(codes) - shown
    return sep.join(codes[:shown]) + (f"{sep}ещё {more}" if more > 0 else "")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _bundle_text(items: Sequence[str], total: int) -> str:
    return f"БПЛА, {total} трев.: " + "; ".join(items) + ". Ответьте кодами"
