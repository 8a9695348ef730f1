"""Several relays on one PostgreSQL database: each relay's CoT feed shows every track, whichever relay took its
reports (the other relays' changes come through the change feed), and a track merged away on one relay is taken
off the map of another: no ghosts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.cot_listener import CotEvent, CotListener
from tests.support.relay import DESK_TOKEN, report, running_relay, settings_dict

if TYPE_CHECKING:
    from tests.support.broker import Mosquitto

pytest_plugins = ("tests.support.postgres",)


def relay_cfg(broker: Mosquitto, data: Path, url: str, client_id: str, **extra: Any) -> dict[str, Any]:
    cfg = settings_dict(broker.port, data, store={"url": url})
    cfg["mqtt"] = {**cfg["mqtt"], "client_id": client_id}
    cfg["tracks"] = {"enabled": True}
    cfg["http"] = {**cfg["http"], "ack_link_key": "k" * 32}
    cfg.update(extra)
    return cfg


def of(track_id: str, reports: int):  # type: ignore[no-untyped-def]
    def match(e: CotEvent) -> bool:
        mine = e.detail("uav_relay")
        return e.uid == f"uav-relay.{track_id}" and mine is not None and mine.get("reports") == str(reports)
    return match


async def test_a_track_made_on_one_relay_is_on_the_map_of_another_and_a_merge_there_removes_it(
    broker: Mosquitto, tmp_path: Path, postgres_url: str,
) -> None:
    listener = CotListener()
    await listener.start()
    try:
        a_cfg = relay_cfg(broker, tmp_path / "a", postgres_url, "relay-a")
        b_cfg = relay_cfg(broker, tmp_path / "b", postgres_url, "relay-b",
                          cot={"enabled": True, "url": listener.url, "reconnect_max_s": 0.2})
        async with running_relay(a_cfg) as a, running_relay(b_cfg):
            status, first = await a.post_report(report("r-1", location={"lat": 52.61, "lon": 39.59}))
            assert status == 201
            track = (await a.alert(first["alert_id"]))["track_id"]
            await listener.wait_for(of(track, 1), timeout=10, what="relay A's track on relay B's feed")
            status, _ = await a.post_report(report("r-2", location={"lat": 52.62, "lon": 39.58}))
            assert status == 201
            await listener.wait_for(of(track, 2), timeout=10, what="relay A's update on relay B's feed")

            status, far = await a.post_report(report("r-3", location={"lat": 53.5, "lon": 41.0}))
            other = (await a.alert(far["alert_id"]))["track_id"]
            assert other != track
            await listener.wait_for(of(other, 1), timeout=10)
            async with a.http.post(f"{a.url}/api/v1/tracks/{other}/merge", json={"into": track},
                                   headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
                assert r.status == 200, await r.text()
            await listener.wait_for(
                lambda e: e.type == "t-x-d-d" and e.detail("link") is not None
                and e.detail("link").get("uid") == f"uav-relay.{other}",  # type: ignore[union-attr]
                timeout=10, what="the merged-away track deleted on relay B's map")
            await listener.wait_for(of(track, 3), timeout=10)
    finally:
        await listener.stop()
