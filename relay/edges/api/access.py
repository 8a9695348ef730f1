"""Who may do what: operators file reports and read their own; desks read and ack what was sent to them."""

from __future__ import annotations

from aiohttp import web

from relay.domain.records import AlertRecord
from relay.edges.api.context import ApiContext
from relay.edges.api.errors import ApiError
from relay.edges.api.failures import guard_of
from relay.edges.auth import Principal, Role, may_see

# Longer than any token anyone was given: refused without hashing it.
MAX_AUTHORIZATION = 512


def authenticate(request: web.Request, ctx: ApiContext, *roles: Role) -> Principal:
    """The token's principal; else 401, or 429 once this address has failed too often.

    The token is checked before the address's failure budget: one SHA-256 of a short header costs less than
    aiohttp's parsing of it, and it lets a legitimate workstation through even when it shares its address
    (a NAT, a reverse proxy) with a client flooding bad tokens. Nothing else is done for a failure: no store
    write, no body read (see relay.api.failures)."""
    header = request.headers.get("Authorization")
    principal = None
    if header and len(header) <= MAX_AUTHORIZATION:
        principal = ctx.auth.from_header(header)
    if principal is None:
        guard_of(request).failed(request, "auth_refused", "unknown bearer token" if header else "no bearer token")
        raise ApiError(401, "unauthorized", "missing or unknown bearer token",
                       headers={"WWW-Authenticate": 'Bearer realm="uav-relay"'})
    if roles and principal.role not in roles:
        raise ApiError(403, "forbidden", f"a {principal.role.value} token may not do this")
    return principal


def may_read(principal: Principal, alert: AlertRecord) -> bool:
    return may_see(principal, alert.operator_id, alert.desks)


def check_read(principal: Principal, alert: AlertRecord) -> None:
    if not may_read(principal, alert):
        raise ApiError(403, "forbidden", f"this alert is not visible to {principal.role.value} {principal.id}")
