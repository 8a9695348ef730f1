"""The Atom index of CAP documents that a CAP consumer polls (GET /api/v1/cap).

Atom, not a plain list: the systems that collect CAP (alert hubs, Google Public Alerts, IPAWS-style aggregators,
the WMO register's feeds) poll Atom or RSS indexes of CAP messages, and Atom (RFC 4287) says exactly where an
entry's id, time and link go and how a feed pages (RFC 5005 `next`). Each entry carries its whole CAP document
inline (`<content type="application/cap+xml">`) and links to it, so a poller gets a page in one request and one
that prefers to fetch each document can.

Paging follows the alert ids, which sort by acceptance (relay.domain.ids): `since` becomes the first id of that
millisecond, and the `next` link carries the last id shown (`after`), so a consumer that follows it sees each
alert once.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from lxml import etree

from relay.domain.cap import CAP_MEDIA_TYPE, CAP_NS

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"

# ---- `since`: an RFC 3339 time from a query string -------------------------------------------------------------

SINCE_MAX_LEN = 40  # the longest RFC 3339 time (9 fraction digits and an offset) is 35 characters
# A consumer whose clock runs ahead, or a typo in the year, gets an error instead of an empty feed for ever.
SINCE_MAX_AHEAD = timedelta(days=1)
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<frac>\.[0-9]{1,9})?"
    # ' ' before the offset: an unescaped '+' in a URL arrives as a space (curl "...?since=...+03:00")
    r"(?P<offset>[Zz]|[+\- ][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)
EXAMPLE = "2026-11-30T10:24:56+03:00"


def parse_since(text: str, now: float) -> float:
    """Seconds since the epoch (never before 0) of an RFC 3339 date-time with an offset; ValueError saying
    what is wrong (for the API's field problem) otherwise."""
    if len(text) > SINCE_MAX_LEN:
        raise ValueError(f"at most {SINCE_MAX_LEN} characters: an RFC 3339 time such as {EXAMPLE}")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"an RFC 3339 date-time with an offset, such as {EXAMPLE}")
    if m["offset"] is None:
        raise ValueError(f"the time has no UTC offset: add Z or one such as +03:00 ({EXAMPLE})")
    offset = "+00:00" if m["offset"] in ("Z", "z") else m["offset"].replace(" ", "+", 1)
    frac = (m["frac"] or "")[:7]  # microseconds: Python's datetime holds no more
    try:
        at = datetime.fromisoformat(f"{m['date']}T{m['time']}{frac}{offset}")
        seconds = at.timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"not a real date and time (month, day, hour, offset in range?), e.g. {EXAMPLE}") from None
    if seconds > now + SINCE_MAX_AHEAD.total_seconds():
        raise ValueError("more than a day in the future: check the clock of the system asking")
    return max(seconds, 0.0)


# ---- alert ids as bounds (the layout of relay.domain.ids: 48-bit milliseconds, 80 bits, Crockford base32) -----

ALERT_ID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}", re.ASCII)
_RANDOM_BITS = 80
_FROM_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def id_before(t: float) -> str:
    """An id just below every alert id made at or after `t`: `alert_id > id_before(t)` is "accepted since t"."""
    return _encode(max(0, (max(0, int(t * 1000)) << _RANDOM_BITS) - 1))


def first_id_at(t: float) -> str:
    """The lowest id of `t`'s millisecond: `alert_id < first_id_at(t)` is "accepted before t"."""
    return _encode(max(0, int(t * 1000)) << _RANDOM_BITS)


def _encode(value: int) -> str:
    return base64.b32encode((value << 30).to_bytes(20, "big")).translate(_FROM_B32)[:26].decode()


# ---- the feed ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedPage:
    feed_id: str  # stable for the relay's sender
    title: str
    author: str
    self_url: str
    next_url: str  # where to poll next: after the last entry shown (or the same place when there was none)
    updated: float


@dataclass(frozen=True, slots=True)
class FeedEntry:
    alert_id: str
    cap: etree._Element  # the CAP <alert>
    cap_url: str
    updated: float  # when the alert was accepted


def stable_iri(name: str) -> str:
    """An Atom id (an IRI that never changes) for a name: a name-based UUID (RFC 4122 version 5)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"uav-relay:{name}").urn


def atom_feed(page: FeedPage, entries: Sequence[FeedEntry]) -> etree._Element:
    feed = etree.Element(f"{{{ATOM_NS}}}feed", nsmap=cast(Mapping[str, str], {None: ATOM_NS}))  # default ns
    _add(feed, "id", page.feed_id)
    _add(feed, "title", page.title)
    _add(feed, "updated", _rfc3339(page.updated))
    _add(_add(feed, "author"), "name", page.author)
    _link(feed, "self", page.self_url, ATOM_MEDIA_TYPE)
    _link(feed, "next", page.next_url, ATOM_MEDIA_TYPE)
    for e in entries:
        entry = _add(feed, "entry")
        _add(entry, "id", stable_iri(f"alert/{e.alert_id}"))
        _add(entry, "title", e.cap.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}headline") or e.alert_id)
        _add(entry, "updated", _rfc3339(e.updated))
        _link(entry, "alternate", e.cap_url, CAP_MEDIA_TYPE)
        content = _add(entry, "content")
        content.set("type", CAP_MEDIA_TYPE)
        content.append(e.cap)
    return feed


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _link(parent: etree._Element, rel: str, href: str, media_type: str) -> None:
    link = _add(parent, "link")
    link.set("rel", rel)
    link.set("type", media_type)
    link.set("href", href)


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, f"{{{ATOM_NS}}}{name}")
    if text is not None:
        child.text = text
    return child
