"""Tracks in the engine, as a dispatcher sees them, on the fake clock: seven callers about one drone are one track,
one alarm chain and one acknowledgement; the real engine, store, dispatcher and SMS bundler (engine_harness)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.domain.states import AlertState
from relay.domain.tracks import TrackParams
from tests.support.engine_harness import DESK, EngineHarness, desk, store_file

AIRFIELD = {"lat": 52.60, "lon": 39.60, "radius_km": 150}
KM_LON = 1 / (111.32 * 0.6076)  # one km of longitude at 52.6° N, in degrees


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EngineHarness]:
    with store_file(tmp_path) as path:
        async with EngineHarness(path, tracks=TrackParams(), desks=[desk(area=AIRFIELD)]) as harness:
            yield harness


def sighting(h: EngineHarness, n: int, *, km_west: float, **fields: Any) -> dict[str, Any]:
    """A caller west of the airfield, on the drone's path east towards it."""
    body = h.report(f"call-{n}", location={"lat": 52.60, "lon": 39.60 - km_west * KM_LON}, heading_deg=90,
                    uav_type="fixed_wing", speed="fast")
    return {**body, **fields}


async def seven_calls(h: EngineHarness) -> list[str]:
    """A drone 20 km west flying east at about 170 km/h; seven callers along its path, one every 30 s."""
    ids = []
    for n in range(7):
        ids.append(await h.accept(sighting(h, n, km_west=20 - 1.4 * n)))
        await h.run_until(30 * (n + 1) - 25)  # 5 s apart on the clock's start, then every 30 s
    return ids


def payloads(h: EngineHarness) -> list[dict[str, Any]]:
    return [json.loads(s.msg.body) for s in h.sent("mqtt")]


async def test_seven_callers_about_one_drone_are_one_track_one_alarm_and_six_updates(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    alerts = [await h.alert(i) for i in ids]
    assert {a.track_id for a in alerts} == {ids[0]}  # a track is named after its first alert
    sent = payloads(h)
    assert [p["alert_id"] for p in sent] == ids  # every report still relayed as its own alert
    assert [p["update"] for p in sent] == [False] + [True] * 6
    assert {p["track_id"] for p in sent} == {ids[0]}
    last = sent[-1]["track"]
    assert last["reports"] == 7 and last["alert_ids"] == ids
    assert last["heading_deg"] is not None and 45 <= last["heading_deg"] <= 135  # eastwards
    track = await h.store.get_track(ids[0])
    assert track is not None and [a.alert_id for a in track.alerts] == ids


async def test_a_silent_console_gets_one_backup_per_round_and_target_listing_the_tracks_codes(
    h: EngineHarness,
) -> None:
    ids = await seven_calls(h)
    codes = [(await h.alert(i)).short_code for i in ids]
    await h.run_until(250)  # the track's first alert at t=0: rounds at 10, 70, 130, 190, 250 s
    sms, email = h.sent("sms"), h.sent("email")
    assert h.times("sms") == h.times("email") == [10.0, 70.0, 130.0, 190.0, 250.0]
    last = sms[-1].msg.body.decode()
    assert all(code in last for code in codes), last  # the lead's code and the other six
    assert all(code in email[-1].msg.body.decode() for code in codes)
    assert {s.msg.target for s in sms} == {"+79001110001"}


async def test_an_ack_of_one_alert_acks_the_track_and_later_reports_are_updates_without_backups(
    h: EngineHarness,
) -> None:
    ids = await seven_calls(h)
    before = len(h.sent("sms")), len(h.sent("email"))
    result = await h.ack(ids[3], by="Сидоров")
    assert result.first and len(result.track) == 6
    alerts = [await h.alert(i) for i in ids]
    assert all(a.state is AlertState.ACKNOWLEDGED for a in alerts)
    assert [a.ack.via_track for a in alerts if a.ack] == [True, True, True, False, True, True, True]
    assert h.engine.open_alerts == 0

    later = await h.accept(sighting(h, 7, km_west=8))
    after = await h.alert(later)
    assert after.state is AlertState.ACKNOWLEDGED and after.ack is not None and after.ack.via_track
    assert after.ack.by == "Сидоров" and after.track_id == ids[0]
    assert payloads(h)[-1]["alert_id"] == later and payloads(h)[-1]["update"] is True
    await h.run_until(1000)
    assert (len(h.sent("sms")), len(h.sent("email"))) == before


async def test_a_flash_report_in_an_acknowledged_track_alarms_on_its_own(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    await h.ack(ids[0])
    before = len(h.sent("sms")), len(h.sent("email"))
    flash = await h.accept(sighting(h, 7, km_west=8, priority="flash"))
    alert = await h.alert(flash)
    assert alert.state is AlertState.PENDING and alert.track_id == ids[0]
    assert (len(h.sent("sms")), len(h.sent("email"))) == (before[0] + 1, before[1] + 1)  # every channel at once


async def test_the_track_endpoint_acks_every_alert_and_counts_them_closed(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    results = await h.engine.ack_track(ids[0], DESK, "Петров", "test")
    assert len(results) == 7
    acks = [(await h.alert(i)).ack for i in ids]
    assert all(a is not None and a.via_track for a in acks)
    assert h.engine.open_alerts == 0


async def test_an_exercise_never_joins_an_actual_track(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    drill = await h.accept(sighting(h, 7, km_west=10, status="exercise"))
    assert (await h.alert(drill)).track_id == drill != (await h.alert(ids[0])).track_id


async def test_a_restart_keeps_the_track_its_ack_and_its_one_chain(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    await h.restart(down_for=5)
    later = await h.accept(sighting(h, 7, km_west=9))
    assert (await h.alert(later)).track_id == ids[0]
    await h.run_until(200)
    rounds = h.times("sms")
    assert len(rounds) == len(set(rounds))  # one SMS per round, not one per alert
    await h.ack(later)
    assert {(await h.alert(i)).state for i in [*ids, later]} == {AlertState.ACKNOWLEDGED}


async def test_merge_and_split_by_a_desk_are_kept(h: EngineHarness) -> None:
    ids = await seven_calls(h)
    split = await h.engine.split_alert(ids[6], DESK, "Петров")
    assert split.track_id != ids[0] and [a.alert_id for a in split.alerts] == [ids[6]]
    assert (await h.alert(ids[6])).track_id == split.track_id
    merged = await h.engine.merge_tracks(split.track_id, ids[0], DESK, "Петров")
    assert [a.alert_id for a in merged.alerts] == ids
    gone = await h.store.get_track(split.track_id)
    assert gone is not None and gone.merged_into == ids[0]
    history = [e.kind for e in await h.store.events(ids[6])]
    assert "track_split" in history and "track_merged" in history


async def test_with_tracks_off_every_alert_is_its_own_track(tmp_path: Path) -> None:
    with store_file(tmp_path) as path:
        async with EngineHarness(path) as h:
            ids = [await h.accept(sighting(h, n, km_west=20 - n)) for n in range(3)]
            assert [(await h.alert(i)).track_id for i in ids] == ids
            assert [p["update"] for p in payloads(h)] == [False, False, False]
            await h.run_until(10)
            assert len(h.sent("sms")) == 1  # v1: one bundle of three alerts to the phone
            assert len(h.sent("email")) == 3


async def test_when_the_lead_is_given_up_the_tracks_next_open_alert_carries_the_chain(h: EngineHarness) -> None:
    first = await h.accept(sighting(h, 0, km_west=20))
    await h.run_until(300)
    later = await h.accept(sighting(h, 1, km_west=6))  # the drone, five minutes on
    assert (await h.alert(later)).track_id == first
    await h.run_until(1300)
    times = h.times("sms")
    assert (await h.alert(first)).state is AlertState.UNACKNOWLEDGED  # its own give-up time: 900 s
    assert (await h.alert(later)).state is AlertState.UNACKNOWLEDGED  # 300 + 900 s
    before, after = [t for t in times if t < 900], [t for t in times if 900 <= t <= 1200]
    assert before == [10.0 + 60 * n for n in range(15)]  # one chain: the later alert adds no rounds of its own
    assert after and max(b - a for a, b in zip([before[-1], *after], after, strict=False)) <= 60.0
    assert len(after) >= 4  # the later alert went on being escalated until its own give-up


async def test_a_later_report_alarms_every_desk_that_has_not_acknowledged_the_track(tmp_path: Path) -> None:
    # airfield-1 takes every report; airfield-2 the sightings within 50 km of it: this drone goes to both
    desks = [desk(area=AIRFIELD), desk("airfield-2", sms=["+79002220001"], email=[],
                                       area={"lat": 52.60, "lon": 39.60, "radius_km": 50})]
    with store_file(tmp_path) as path:
        async with EngineHarness(path, tracks=TrackParams(), desks=desks) as h:
            ids = await seven_calls(h)
            assert (await h.alert(ids[0])).desks == ("airfield-1", "airfield-2")
            await h.engine.ack_track(ids[0], "airfield-1", "Петров", "test")
            assert {(await h.alert(i)).state for i in ids} == {AlertState.ACKNOWLEDGED}  # v1: one ack closes an alert

            later = await h.accept(sighting(h, 7, km_west=8))
            assert (await h.alert(later)).state is AlertState.PENDING  # airfield-2 has not acknowledged this drone
            await h.engine.ack_track(ids[0], "airfield-2", "Сидоров", "test")
            assert (await h.alert(later)).state is AlertState.ACKNOWLEDGED

            last = await h.accept(sighting(h, 8, km_west=6))
            acked = await h.alert(last)
            assert acked.state is AlertState.ACKNOWLEDGED and acked.ack is not None and acked.ack.via_track
            track = await h.store.get_track(ids[0])
            assert track is not None and [a.desk_id for a in track.acks] == ["airfield-1", "airfield-2"]
