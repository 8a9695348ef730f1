"""Who is calling: bearer tokens of operators and desks, known only by their SHA-256 in memory."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from relay.config import DeskConfig, OperatorConfig


class Role(enum.StrEnum):
    OPERATOR = "operator"
    DESK = "desk"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    id: str


class Authenticator:
    def __init__(self, operators: Iterable[OperatorConfig], desks: Iterable[DeskConfig]) -> None:
        # Looked up by the digest of the presented token: the time a lookup takes depends on the digest,
        # which tells an attacker nothing about any real token.
        self._by_digest: dict[str, Principal] = {}
        operators = list(operators)
        for op in operators:
            self._by_digest[op.token_digest] = Principal(Role.OPERATOR, op.id)
        for desk in desks:
            self._by_digest[desk.token_digest] = Principal(Role.DESK, desk.id)
        self.operator_ids = frozenset(op.id for op in operators)

    def from_header(self, header: str | None) -> Principal | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.from_token(token.strip())

    def from_token(self, token: str) -> Principal | None:
        return self._by_digest.get(hashlib.sha256(token.encode()).hexdigest())
