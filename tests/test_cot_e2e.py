"""A TAK user's view, end to end: the relay on real sockets (HTTP in, a real Mosquitto for its consoles) with
`[cot]` pointed at a CoT listener; reports filed over HTTP put a marker on the map, move it, and an ack, a merge,
a split and the track's close change or remove it. The listener restarting gets every open track again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.cot_listener import CotEvent, CotListener
from tests.support.relay import DESK_TOKEN, RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually

AIRFIELD = (52.60, 39.60)
KM_LAT = 1 / 111.2
KM_LON = 1 / (111.32 * 0.6076)


def config(broker: Mosquitto, data: Path, listener: CotListener, **tracks: Any) -> dict[str, Any]:
    cfg = settings_dict(broker.port, data)
    cfg["desks"][0]["area"] = {"lat": AIRFIELD[0], "lon": AIRFIELD[1], "radius_km": 150}
    cfg["tracks"] = {"enabled": True, **tracks}
    cfg["cot"] = {"enabled": True, "url": listener.url, "reconnect_max_s": 0.2, "stale_margin_s": 10}
    return cfg


def call(report_id: str, *, ago_s: float, km_east: float, km_north: float = 0.0, **fields: Any) -> dict[str, Any]:
    seen = datetime.now(UTC) - timedelta(seconds=ago_s)
    body = report(report_id, observed_at=seen.isoformat(), heading_deg=90, speed="fast",
                  location={"lat": AIRFIELD[0] + km_north * KM_LAT, "lon": AIRFIELD[1] + km_east * KM_LON,
                            "district": "Грязинский район\u2028\x0bул. Ленина"})
    body.update(fields)
    return body


async def desk(relay: RunningRelay, path: str, body: Any) -> Any:
    async with relay.http.post(f"{relay.url}{path}", json=body, headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def filed(relay: RunningRelay, body: dict[str, Any]) -> str:
    status, accepted = await relay.post_report(body)
    assert status == 201, accepted
    return str((await relay.alert(accepted["alert_id"]))["track_id"])


def of(track_id: str, *, reports: int | None = None, state: str | None = None):  # type: ignore[no-untyped-def]
    def match(e: CotEvent) -> bool:
        mine = e.detail("uav_relay")
        return (e.uid == f"uav-relay.{track_id}" and mine is not None
                and (reports is None or mine.get("reports") == str(reports))
                and (state is None or mine.get("state") == state))
    return match


@pytest.fixture
async def listener() -> AsyncIterator[CotListener]:
    cot = CotListener()
    await cot.start()
    try:
        yield cot
    finally:
        await cot.stop()


async def test_a_track_appears_moves_is_acknowledged_and_a_merged_one_is_deleted(
    broker: Mosquitto, tmp_path: Path, listener: CotListener,
) -> None:
    async with running_relay(config(broker, tmp_path / "data", listener)) as relay:
        a = await filed(relay, call("r-1", ago_s=120, km_east=-40))
        first = await listener.wait_for(of(a, reports=1, state="open"), what="the track on the map")
        assert first.type == "a-u-A-M-F-Q" and first.attr("how") == "h-e"
        assert first.point()["ce"] >= 500.0
        assert "Грязинский район ул. Ленина" in first.remarks()

        assert await filed(relay, call("r-2", ago_s=60, km_east=-37)) == a
        moved = await listener.wait_for(of(a, reports=2), what="the update")
        assert moved.point()["lon"] > first.point()["lon"]
        assert moved.detail("track") is not None  # two reports, a course: heading east
        assert 45 <= float(moved.detail("track").get("course")) <= 135  # type: ignore[union-attr]

        b = await filed(relay, call("r-3", ago_s=30, km_east=20, km_north=60))
        assert b != a
        await listener.wait_for(of(b, reports=1), what="a second track")

        await desk(relay, f"/api/v1/tracks/{a}/ack", {"by": "Сидоров"})
        await listener.wait_for(of(a, state="acknowledged"), what="the ack on the map")

        await desk(relay, f"/api/v1/tracks/{b}/merge", {"into": a, "by": "Сидоров"})
        gone = await listener.wait_for(
            lambda e: e.type == "t-x-d-d" and e.detail("link") is not None
            and e.detail("link").get("uid") == f"uav-relay.{b}", what="the merged-away track deleted")  # type: ignore[union-attr]
        assert gone.detail("link").get("relation") == "none"  # type: ignore[union-attr]
        await listener.wait_for(of(a, reports=3), what="the merged track with every report")

        status, accepted = await relay.post_report(call("r-4", ago_s=20, km_east=20, km_north=60))
        assert status == 201
        placed = (await relay.alert(accepted["alert_id"]))["track_id"]
        if placed != a:  # the correlator's call; either way the desk wants it in `a`
            await desk(relay, f"/api/v1/tracks/{placed}/merge", {"into": a, "by": "Сидоров"})
        await listener.wait_for(of(a, reports=4))
        before_split = len(listener.events)  # `a` had 3 reports once already: only an event after the split counts
        split = await desk(relay, f"/api/v1/alerts/{accepted['alert_id']}/split", {"by": "Сидоров"})
        await listener.wait_for(of(split["track_id"], reports=1), what="the split-off track")
        await listener.wait_for(of(a, reports=3), after=before_split, what="the track it left")
        assert not listener.unparsable

        # the TAK server restarts: every track still open is on its map again, the merged-away one is not
        live = {a, split["track_id"]}
        await listener.restart()
        seen = await eventually(lambda: {e.uid for e in listener.events if e.connection >= 2} >= {
            f"uav-relay.{t}" for t in live} and listener.events, timeout=5, what="every open track resent")
        assert seen
        assert f"uav-relay.{b}" not in {e.uid for e in listener.events if e.connection >= 2}
        assert await relay.metric('relay_channel_up{channel="cot"}') == 1
        assert await relay.metric('relay_deliveries_total{channel="cot",outcome="sent"}') >= 8


async def test_an_acknowledged_track_goes_off_the_map_when_it_closes(
    broker: Mosquitto, tmp_path: Path, listener: CotListener,
) -> None:
    async with running_relay(config(broker, tmp_path / "data", listener, join_window_s=2)) as relay:
        a = await filed(relay, call("r-1", ago_s=0, km_east=-40, status="exercise"))
        shown = await listener.wait_for(of(a, state="open"))
        assert shown.attr("opex") == "e-uav-relay" and shown.remarks().startswith("УЧЕНИЯ.")
        await desk(relay, f"/api/v1/tracks/{a}/ack", {"by": "Сидоров"})
        last = await listener.wait_for(of(a, state="closed"), timeout=8, what="the closed track's last event")
        assert last.attr("stale") == last.attr("time")  # stale at once: the map drops it


async def test_cot_down_does_not_hold_reports_and_the_map_catches_up(broker: Mosquitto, tmp_path: Path) -> None:
    listener = CotListener()  # not started: nobody listens at the configured address
    async with running_relay(config(broker, tmp_path / "data", listener)) as relay:
        tracks = [await filed(relay, call(f"r-{n}", ago_s=30, km_east=-40 + 30 * n, km_north=40 * n))
                  for n in range(3)]
        assert await relay.metric('relay_channel_up{channel="cot"}') == 0
        await listener.start()
        try:
            for t in tracks:
                await listener.wait_for(of(t), timeout=5, what=f"track {t} once the listener is up")
        finally:
            await listener.stop()


async def test_a_track_that_cannot_be_rendered_fails_alone_and_the_next_change_goes_out(
    broker: Mosquitto, tmp_path: Path, listener: CotListener, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.domain import cot

    real = cot.track_event
    broken = {"n": 0}

    def once_broken(track: cot.CotTrack, now: float, style: cot.CotStyle) -> bytes:
        if broken["n"] == 0:
            broken["n"] += 1
            raise ValueError("a bug in the renderer")
        return real(track, now, style)

    monkeypatch.setattr(cot, "track_event", once_broken)
    async with running_relay(config(broker, tmp_path / "data", listener)) as relay:
        await filed(relay, call("r-1", ago_s=30, km_east=-40))
        await eventually(lambda: relay.metric('relay_job_failures_total{kind="task"}'),
                         what="the job's failure counted")
        a = await filed(relay, call("r-2", ago_s=20, km_east=-39))
        await listener.wait_for(of(a, reports=2), what="the next change on the map")
        status, _ = await relay.get("/healthz")
        assert status == 200


async def test_a_merge_whose_delete_never_went_out_is_deleted_by_the_restarted_relay(
    broker: Mosquitto, tmp_path: Path, listener: CotListener,
) -> None:
    cfg = config(broker, tmp_path / "data", listener)
    async with running_relay(cfg) as relay:
        a = await filed(relay, call("r-1", ago_s=120, km_east=-40))
        b = await filed(relay, call("r-2", ago_s=30, km_east=20, km_north=60))
        assert a != b
        await listener.wait_for(of(b), what="both tracks on the map")
        await listener.stop()  # the TAK server is away while the dispatcher merges
        await desk(relay, f"/api/v1/tracks/{b}/merge", {"into": a, "by": "Сидоров"})
    # the relay stopped with the delete unsent; the map still shows b
    await listener.start()
    async with running_relay(cfg):
        await listener.wait_for(
            lambda e: e.type == "t-x-d-d" and e.detail("link") is not None
            and e.detail("link").get("uid") == f"uav-relay.{b}",  # type: ignore[union-attr]
            timeout=10, what="the merged-away track deleted after the restart")
        await listener.wait_for(of(a, reports=2), what="the merged track as it is now")
