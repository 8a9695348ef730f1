"""The one way tests look at CAP: every document a test gets, built in memory or fetched over HTTP, goes through
`valid_cap` (or `valid_feed` for the Atom index), which parses it as inbound XML (defusedxml: no DTD, no entity
expansion) and validates it against the OASIS CAP 1.2 schema the relay ships. A test that produces CAP and
reads it through these helpers cannot forget to validate it.

The schema is read from the source tree's file, not through the relay's own loader (relay.domain.cap_schema):
a mistake there must not be able to hide an invalid document from the tests.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from lxml import etree

from relay.domain.cap import CAP_NS, cap_alert, to_bytes

XSD = Path(__file__).resolve().parents[2] / "relay" / "domain" / "schemas" / "CAP-v1.2.xsd"
ATOM_NS = "http://www.w3.org/2005/Atom"
NS = {"cap": CAP_NS, "atom": ATOM_NS}
VALIDATED: list[str] = []  # identifiers of every document validated in this test process (a test may count them)


@functools.cache
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def _safe_tree(data: bytes) -> etree._Element:
    # defusedxml refuses DTDs, entity declarations and external references; only then does lxml (no network,
    # no entities) build the tree the schema validates
    SafeET.fromstring(data, forbid_dtd=True)
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))


def valid_element(element: etree._Element) -> etree._Element:
    """`element` (a CAP <alert>), validated; AssertionError with the schema's words otherwise."""
    s = schema()
    assert element.tag == f"{{{CAP_NS}}}alert", element.tag
    assert s.validate(element), f"not valid CAP 1.2: {s.error_log}\n{etree.tostring(element, encoding='unicode')}"
    VALIDATED.append(str(element.findtext("cap:identifier", namespaces=NS)))
    return element


def valid_cap(data: bytes) -> etree._Element:
    """A CAP document as bytes (an HTTP body, a golden file): parsed safely and validated."""
    assert data.startswith(b"<?xml"), data[:80]
    return valid_element(_safe_tree(data))


def build(*args: Any, **kwargs: Any) -> etree._Element:
    """relay.domain.cap.cap_alert, then serialised and read back as a consumer would, and validated."""
    return valid_cap(to_bytes(cap_alert(*args, **kwargs)))


def valid_feed(data: bytes) -> tuple[etree._Element, list[etree._Element]]:
    """An Atom feed of CAP documents: the feed and each entry's inline CAP <alert>, each one validated."""
    feed = _safe_tree(data)
    assert feed.tag == f"{{{ATOM_NS}}}feed", feed.tag
    for required in ("atom:id", "atom:title", "atom:updated"):
        assert feed.find(required, NS) is not None, required
    alerts = []
    for entry in feed.findall("atom:entry", NS):
        for required in ("atom:id", "atom:title", "atom:updated", "atom:link[@rel='alternate']"):
            assert entry.find(required, NS) is not None, required
        content = entry.find("atom:content", NS)
        assert content is not None and content.get("type") == "application/cap+xml"
        (cap,) = list(content)
        alerts.append(valid_element(cap))
    return feed, alerts


def text(element: etree._Element, path: str) -> str:
    """The text at `path` (with cap: prefixes), '' if absent."""
    return element.findtext(path, default="", namespaces=NS) or ""


def parameters(element: etree._Element) -> dict[str, str]:
    return {text(p, "cap:valueName"): text(p, "cap:value") for p in element.findall("cap:info/cap:parameter", NS)}
