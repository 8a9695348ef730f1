"""Two relays on one PostgreSQL database: a CAP consumer gets the same document for an alert from either of them,
and the feed of either lists the alerts both accepted, each once (CONTRACT.md, "More than one relay")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.broker import Mosquitto
from tests.support.cap_schema import text, valid_cap, valid_feed
from tests.support.relay import DESK_TOKEN, RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually

pytest_plugins = ("tests.support.postgres",)


def relay_config(broker: Mosquitto, data: Path, db_url: str, name: str) -> dict[str, Any]:
    cfg = settings_dict(broker.port, data, tracks={"enabled": True}, store={"url": db_url},
                        cap={"sender": "uav-relay@region.example", "feed_delay_s": 0.2})
    cfg["mqtt"] = {**cfg["mqtt"], "client_id": name}
    return cfg


async def document(relay: RunningRelay, alert_id: str) -> bytes:
    async with relay.http.get(f"{relay.url}/api/v1/alerts/{alert_id}/cap",
                              headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        body = await r.read()
    valid_cap(body)
    return body


async def test_either_relay_gives_the_same_document_and_the_feed_of_each_lists_every_alert_once(
        broker: Mosquitto, postgres_url: str, tmp_path: Path) -> None:
    async with running_relay(relay_config(broker, tmp_path / "a", postgres_url, "relay-a")) as a, \
            running_relay(relay_config(broker, tmp_path / "b", postgres_url, "relay-b")) as b:
        ids = []
        for n, relay in enumerate((a, b, a)):  # one drone, called in to both relays
            seen = (datetime.now(UTC) - timedelta(seconds=120 - 30 * n)).isoformat()
            status, accepted = await relay.post_report(report(f"two-{n}", observed_at=seen))
            assert status == 201, accepted
            ids.append(accepted["alert_id"])
        for alert_id in ids:
            assert await document(a, alert_id) == await document(b, alert_id)
        # relay a's later call joins relay a's track: an Update naming its first alert, whichever relay is asked
        last = valid_cap(await document(b, ids[2]))
        assert text(last, "cap:msgType") == "Update" and f"uav-relay.alert.{ids[0]}," in text(last, "cap:references")

        for relay in (a, b):
            async def listed(relay: RunningRelay = relay) -> list[str]:
                async with relay.http.get(f"{relay.url}/api/v1/cap", params={"limit": "10"},
                                          headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
                    assert r.status == 200
                    _, alerts = valid_feed(await r.read())
                found = [text(x, "cap:identifier").removeprefix("uav-relay.alert.") for x in alerts]
                return found if len(found) >= 3 else []

            assert sorted(await eventually(listed, what="three alerts in the feed")) == sorted(ids)
