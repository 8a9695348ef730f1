"""Signed acknowledgement links for e-mail: `{public_url}/ack/{token}`.

The token is the only credential (a dispatcher opens it from a phone's mail app): HMAC-SHA256 over the alert,
the desk and an expiry, so it acks exactly one alert for exactly one desk, and not for ever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "ack-link.key"


class BadLink(Exception):
    """Forged, altered, malformed or expired; the message says which, for the page and the audit log."""


@dataclass(frozen=True, slots=True)
class AckLink:
    alert_id: str
    desk_id: str
    expires_at: int


class AckLinkSigner:
    def __init__(self, key: bytes, ttl_s: int) -> None:
        if len(key) < 32:
            raise ValueError("ack link key must be at least 32 bytes")
        self._key, self._ttl = key, ttl_s

    def token(self, alert_id: str, desk_id: str, now: float) -> str:
        payload = f"{alert_id}|{desk_id}|{int(now) + self._ttl}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, now: float) -> AckLink:
        body, _, mac = token.partition(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except ValueError:
            raise BadLink("malformed link") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise BadLink("link signature does not match (forged or altered)")
        alert_id, desk_id, expires = payload.decode().split("|")
        if now > int(expires):
            raise BadLink("link expired")
        return AckLink(alert_id, desk_id, int(expires))

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"uav-relay ack link v1|" + payload, hashlib.sha256).digest()


def load_or_create_key(configured: str, data_dir: Path) -> bytes:
    """The configured key, else the one in data_dir (made once, readable by the relay's user only)."""
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # one encoding per value: a changed padding bit is a changed link
        raise ValueError("not canonical base64url")
    return data
