"""The OASIS CAP 1.2 schema shipped with the relay (relay/domain/schemas/README.md says where it comes from).

Every document the relay serves is checked against it before it leaves: the issue's target is 100 % valid
documents, and a document that is not valid is a bug to see in the log (a 500), not a message that a consumer
would drop without a word.
"""

from __future__ import annotations

import functools
from importlib import resources

from lxml import etree

SCHEMA_FILE = ("domain", "schemas", "CAP-v1.2.xsd")


class CapInvalid(Exception):
    """A document the relay built is not valid CAP 1.2."""


@functools.cache
def cap_schema() -> etree.XMLSchema:
    xsd = resources.files("relay").joinpath(*SCHEMA_FILE).read_bytes()
    # The relay's own file, not input: still parsed without network access or entity expansion.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.XMLSchema(etree.fromstring(xsd, parser))


def check_cap(document: etree._Element) -> None:
    schema = cap_schema()
    if not schema.validate(document):
        errors = str(schema.error_log).splitlines()[:3]  # file:line:column:level:domain:type: message
        raise CapInvalid("not valid CAP 1.2: " + "; ".join(errors))
