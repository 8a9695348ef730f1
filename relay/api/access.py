"""Who may do what: operators file reports and read their own; desks read and ack what was sent to them."""

from __future__ import annotations

from aiohttp import web

from relay.api.context import ApiContext
from relay.api.errors import ApiError
from relay.auth import Principal, Role
from relay.store.base import AlertRecord


def authenticate(request: web.Request, ctx: ApiContext, *roles: Role) -> Principal:
    principal = ctx.auth.from_header(request.headers.get("Authorization"))
    if principal is None:
        raise ApiError(401, "unauthorized", "missing or unknown bearer token",
                       headers={"WWW-Authenticate": 'Bearer realm="uav-relay"'})
    if roles and principal.role not in roles:
        raise ApiError(403, "forbidden", f"a {principal.role.value} token may not do this")
    return principal


def may_read(principal: Principal, alert: AlertRecord) -> bool:
    if principal.role is Role.OPERATOR:
        return alert.operator_id == principal.id
    if principal.role is Role.ENGINEER:
        return True
    return principal.id in alert.desks


def check_read(principal: Principal, alert: AlertRecord) -> None:
    if not may_read(principal, alert):
        raise ApiError(403, "forbidden", f"this alert is not visible to {principal.role.value} {principal.id}")
