"""The relay running in the test's own event loop, on real sockets, with its own store and a private broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from relay.domain.config import Settings
from relay.operations.daemon import Relay
from tests.support.wait import eventually

OPERATOR_TOKEN = "op-1-token-0123456789abcdef"
OPERATOR2_TOKEN = "op-2-token-0123456789abcdef"
DESK_TOKEN = "airfield-1-token-0123456789"
DESK2_TOKEN = "airfield-2-token-0123456789"


def settings_dict(broker_port: int, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "relay": {"data_dir": str(data_dir), "log_level": "warning"},
        "store": {"url": f"sqlite:///{data_dir}/relay.db"},
        "http": {"host": "127.0.0.1", "port": 0, "public_url": "http://127.0.0.1:8080"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": "relay-under-test",
                 "reconnect_max_s": 0.5, "keepalive_s": 2},
        "operators": [{"id": "op-1", "token": OPERATOR_TOKEN}, {"id": "op-2", "token": OPERATOR2_TOKEN}],
        "desks": [
            {"id": "airfield-1", "name": "Аэродром-1", "token": DESK_TOKEN},
            {"id": "airfield-2", "name": "Аэродром-2", "token": DESK2_TOKEN,
             "area": {"lat": 43.1, "lon": 131.9, "radius_km": 100}},
        ],
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **value}
        else:
            base[section] = value
    return base


DESK1_PHONE, DESK1_PHONE2, DESK2_PHONE = "+79001110001", "+79001110002", "+79002220001"
DESK1_EMAIL, DESK2_EMAIL = "duty@airfield-1.example", "duty@airfield-2.example"


def with_backups(base: dict[str, Any], *, smtp_port: int, twilio_url: str, **escalation: float) -> dict[str, Any]:
    """`base` plus SMS (Twilio-shaped server) and e-mail (SMTP server), on a fixed HTTP port for public_url."""
    from tests.support.twilio_fake import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER
    from tests.support.wait import free_port

    port = free_port()
    cfg = dict(base)
    cfg["http"] = {**base["http"], "port": port, "public_url": f"http://127.0.0.1:{port}"}
    cfg["sms"] = {"enabled": True, "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from_number": FROM_NUMBER,
                  "api_base_url": twilio_url, "bundle_window_s": 0.5, "timeout_s": 2}
    cfg["email"] = {"enabled": True, "host": "127.0.0.1", "port": smtp_port, "from_address": "relay@uav.example",
                    "timeout_s": 2}
    cfg["escalation"] = {"ack_timeout_s": 1.0, "repeat_s": 1.5, "give_up_s": 60, "retry_s": 0.5, **escalation}
    cfg["desks"] = [
        {**base["desks"][0], "sms": [DESK1_PHONE, DESK1_PHONE2], "email": [DESK1_EMAIL]},
        {**base["desks"][1], "sms": [DESK2_PHONE], "email": [DESK2_EMAIL]},
    ]
    return cfg


def report(report_id: str = "r-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "report_id": report_id,
        "observed_at": (datetime.now(UTC) - timedelta(seconds=30)).isoformat(),
        "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
        "uav_type": "fixed_wing",
        "count": 2,
        "heading_deg": 315,
        "movement": "transit",
        "altitude": "low",
        "sound": "piston",
        "perception": "seen_and_heard",
        "caller": {"phone": "+79001234567", "name": "Петров"},
    }
    body.update(overrides)
    return body


@dataclass
class RunningRelay:
    relay: Relay
    url: str
    http: aiohttp.ClientSession

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def post_report(self, body: Any, token: str | None = OPERATOR_TOKEN) -> tuple[int, Any]:
        data = body if isinstance(body, (bytes, str)) else None
        async with self.http.post(f"{self.url}/api/v1/reports", headers=self._auth(token),
                                  json=None if data is not None else body, data=data) as r:
            return r.status, await _body(r)

    async def get(self, path: str, token: str | None = OPERATOR_TOKEN) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}", headers=self._auth(token)) as r:
            return r.status, await _body(r)

    async def alert(self, alert_id: str, token: str = OPERATOR_TOKEN) -> dict[str, Any]:
        status, body = await self.get(f"/api/v1/alerts/{alert_id}", token)
        assert status == 200, body
        return dict(body)

    async def ack(self, alert_id: str, token: str = DESK_TOKEN, by: str = "Сидоров") -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/api/v1/alerts/{alert_id}/ack", headers=self._auth(token),
                                  json={"by": by}) as r:
            return r.status, await _body(r)

    async def metrics(self) -> str:
        async with self.http.get(f"{self.url}/metrics") as r:
            return await r.text()

    async def metric(self, selector: str) -> float:
        """Sum of the samples matching `name` or `name{label="value",...}` (the labels given, others any)."""
        name, _, labels = selector.partition("{")
        wanted = set(filter(None, labels.rstrip("}").split(",")))
        total = 0.0
        for line in (await self.metrics()).splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            series_name, _, series_labels = series.partition("{")
            if series_name == name and wanted <= set(series_labels.rstrip("}").split(",")):
                total += float(value)
        return total


async def _body(r: aiohttp.ClientResponse) -> Any:
    if r.content_type == "application/json":
        return await r.json()
    return await r.text()


@contextlib.asynccontextmanager
async def running_relay(settings: dict[str, Any], *, wait_connected: bool = True) -> AsyncIterator[RunningRelay]:
    """The relay, started; by default also connected to its broker (as a deployed relay would be)."""
    relay = Relay(Settings(**settings))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    ready = asyncio.create_task(relay.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped it
    assert relay.ready.is_set(), "relay did not start within 10 s"
    try:
        async with aiohttp.ClientSession() as http:
            running = RunningRelay(relay, f"http://127.0.0.1:{relay.http_port}", http)
            if wait_connected:
                await eventually(lambda: running.metric('relay_channel_up{channel="mqtt"}'), timeout=10,
                                 what="relay connected to the broker")
            yield running
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
