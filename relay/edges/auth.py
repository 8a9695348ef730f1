"""Who is calling: bearer tokens of operators and desks, known only by their SHA-256 in memory."""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from relay.domain.config import DeskConfig, EngineerConfig, OperatorConfig

log = logging.getLogger("relay.auth")


class Role(enum.StrEnum):
    OPERATOR = "operator"
    DESK = "desk"
    ENGINEER = "engineer"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    id: str


class Authenticator:
    """Tokens are kept only as SHA-256 digests; a presented token's digest is compared with every known one in
    constant time, so neither which token matched nor how much of it did shows in the answer's timing."""

    def __init__(
        self, operators: Iterable[OperatorConfig], desks: Iterable[DeskConfig],
        engineers: Iterable[EngineerConfig] = (),
    ) -> None:
        operators, desks, engineers = list(operators), list(desks), list(engineers)
        self._known: list[tuple[bytes, Principal]] = [
            (bytes.fromhex(op.token_digest), Principal(Role.OPERATOR, op.id)) for op in operators
        ] + [(bytes.fromhex(d.token_digest), Principal(Role.DESK, d.id)) for d in desks] + [
            (bytes.fromhex(e.token_digest), Principal(Role.ENGINEER, e.id)) for e in engineers
        ]
        self.operator_ids = frozenset(op.id for op in operators)
        plain = [h.id for h in [*operators, *desks, *engineers] if h.token is not None]
        if plain:
            log.warning(
                "plain tokens in the config: store token_sha256 instead (relay hash-token)",
                extra={"event": "plain_token_in_config", "ids": plain},
            )

    def from_header(self, header: str | None) -> Principal | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.from_token(token.strip())

    def from_token(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, principal in self._known:  # no early exit: every digest is compared, every time
            if hmac.compare_digest(digest, known):
                found = principal
        return found


def may_see(principal: Principal, operator_id: str, desks: Collection[str]) -> bool:
    """The one read rule (alerts, their events, their history): an operator sees its own reports, a desk what
    was sent to it, an engineer everything."""
    if principal.role is Role.OPERATOR:
        return operator_id == principal.id
    if principal.role is Role.ENGINEER:
        return True
    return principal.id in desks
