"""Tracks through the real HTTP API, a real Mosquitto with a real MQTT console, aiosmtpd and the Twilio-shaped
server: a raid as it comes in (seven callers about one drone) is one track, one alarm chain, one acknowledgement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import (
    DESK1_EMAIL,
    DESK1_PHONE,
    DESK1_PHONE2,
    DESK2_TOKEN,
    DESK_TOKEN,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.site import Site
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually, holds_for

AIRFIELD = (52.60, 39.60)
KM_LAT = 1 / 111.2  # degrees of latitude per km
KM_LON = 1 / (111.32 * 0.6076)  # degrees of longitude per km at 52.6° N


def config(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, data: Path) -> dict[str, Any]:
    cfg = with_backups(settings_dict(broker.port, data), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=1.0, repeat_s=1.5, give_up_s=60)
    cfg["desks"][0]["area"] = {"lat": AIRFIELD[0], "lon": AIRFIELD[1], "radius_km": 150}
    cfg["tracks"] = {"enabled": True}
    return cfg


@pytest.fixture
async def site(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path) -> AsyncIterator[Site]:
    async with running_relay(config(broker, smtp, twilio, tmp_path / "data")) as relay:
        yield Site(relay, broker, smtp, twilio)


def call(report_id: str, *, ago_s: float, km_east: float, km_north: float = 0.0, **fields: Any) -> dict[str, Any]:
    """A caller's report of a drone seen `ago_s` seconds ago, `km_east`/`km_north` of the airfield."""
    seen = datetime.now(UTC) - timedelta(seconds=ago_s)
    body = report(report_id, observed_at=seen.isoformat(), heading_deg=90, speed="fast",
                  location={"lat": AIRFIELD[0] + km_north * KM_LAT, "lon": AIRFIELD[1] + km_east * KM_LON,
                            "district": "Грязинский район"})
    body.update(fields)
    return body


def raid(prefix: str = "call", *, km_north: float = 0.0, start_ago_s: float = 200) -> Iterator[dict[str, Any]]:
    """Seven callers along the path of a drone flying east at about 170 km/h, 20 km west of the airfield and closing."""
    for n in range(7):
        ago = start_ago_s - 30 * n
        yield call(f"{prefix}-{n}", ago_s=ago, km_east=-20 + 170 / 3600 * 30 * n, km_north=km_north)


async def post_all(relay: RunningRelay, bodies: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    accepted = []
    for body in bodies:
        status, answer = await relay.post_report(body)
        assert status == 201, answer
        accepted.append(answer)
    return accepted


async def api(relay: RunningRelay, method: str, path: str, token: str = DESK_TOKEN,
              body: Any = None) -> tuple[int, Any]:
    async with relay.http.request(method, f"{relay.url}{path}", json=body,
                                  headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_seven_callers_are_one_track_one_alarm_six_updates_and_one_sms_per_phone_per_round(site: Site) -> None:
    relay = site.relay
    async with Console(site.broker.port, "airfield-1") as console:
        accepted = await post_all(relay, raid())
        got = [await console.next_alert() for _ in accepted]
        assert [a["alert_id"] for a in got] == [a["alert_id"] for a in accepted]
        track_id = got[0]["track_id"]
        assert {a["track_id"] for a in got} == {track_id}
        assert [a["update"] for a in got] == [False] + [True] * 6
        assert got[-1]["track"]["reports"] == 7 and got[-1]["track"]["state"] == "open"

        # the console stays silent: the first round is one SMS per phone and one e-mail, listing every code
        codes = [a["short_code"] for a in accepted]
        first = await site.twilio.wait_for(2, timeout=10)
        assert {s.to for s in first} == {DESK1_PHONE, DESK1_PHONE2}
        for sms in first:
            assert all(code in sms.body for code in codes), sms.body
        mails = await site.smtp.wait_for(1, timeout=10, to=DESK1_EMAIL)
        assert all(code in mails[0].text for code in codes)

        status, listed = await api(relay, "GET", "/api/v1/tracks")
        assert status == 200 and [t["track_id"] for t in listed["tracks"]] == [track_id]
        track = listed["tracks"][0]
        assert track["reports"] == 7 and track["alert_ids"] == [a["alert_id"] for a in accepted]
        (desk,) = track["desks"]
        assert desk["desk_id"] == "airfield-1" and not desk["acknowledged"]
        assert 5 <= desk["distance_km"] <= 20 and 225 <= desk["bearing_deg"] <= 315  # west of the airfield
        assert desk["eta_s"] is not None  # heading for it
        assert 45 <= track["heading_deg"] <= 135

        status, acked = await api(relay, "POST", f"/api/v1/tracks/{track_id}/ack", body={"by": "Майор Иванов"})
        assert status == 200 and acked["state"] == "acknowledged", acked
        for a in accepted:
            alert = await relay.alert(a["alert_id"])
            assert alert["state"] == "acknowledged" and alert["ack"]["via_track"] is True
            assert alert["ack"]["by"] == "Майор Иванов" and alert["track_id"] == track_id
        sent = len(site.twilio.messages)

        status, later = await relay.post_report(call("call-7", ago_s=5, km_east=-10))
        assert status == 201 and later["state"] == "acknowledged"
        update = await console.next_alert()
        assert update["alert_id"] == later["alert_id"] and update["update"] is True
        alert = await relay.alert(later["alert_id"])
        assert alert["ack"]["via_track"] is True and alert["track_id"] == track_id
        await holds_for(lambda: len(site.twilio.messages) == sent, 3.0, what="no backups after the track's ack")


async def test_the_operator_sees_which_track_its_report_joined(site: Site) -> None:
    accepted = await post_all(site.relay, raid())
    alert = await site.relay.alert(accepted[-1]["alert_id"])
    assert alert["track_id"] == accepted[0]["alert_id"]
    status, mine = await api(site.relay, "GET", f"/api/v1/tracks/{alert['track_id']}", token=OPERATOR_TOKEN)
    assert status == 200 and mine["reports"] == 7
    status, _ = await api(site.relay, "GET", f"/api/v1/tracks/{alert['track_id']}", token=OPERATOR2_TOKEN)
    assert status == 403  # another operator's reports


async def test_two_drones_30_km_apart_and_a_second_drone_on_the_corridor_are_separate_tracks(site: Site) -> None:
    north = await post_all(site.relay, raid("north", km_north=15))
    south = await post_all(site.relay, raid("south", km_north=-15))
    # minutes after the first drone went through, another one enters the same corridor where the first one began
    second = await post_all(site.relay, raid("second", km_north=15, start_ago_s=20))
    tracks = {(await site.relay.alert(a["alert_id"]))["track_id"] for a in [*north, *south, *second]}
    assert len(tracks) == 3, tracks


async def test_a_flash_report_in_an_acknowledged_track_alarms_and_an_exercise_never_joins(site: Site) -> None:
    accepted = await post_all(site.relay, raid())
    track_id = accepted[0]["alert_id"]
    status, _ = await api(site.relay, "POST", f"/api/v1/tracks/{track_id}/ack", body={"by": "Иванов"})
    assert status == 200
    sent = len(site.twilio.messages)
    status, flash = await site.relay.post_report(call("flash", ago_s=5, km_east=-10, priority="flash"))
    assert status == 201 and flash["state"] == "pending"
    await site.twilio.wait_for(sent + 2, timeout=10)  # at once, to both phones
    assert (await site.relay.alert(flash["alert_id"]))["track_id"] == track_id

    status, drill = await site.relay.post_report(call("drill", ago_s=5, km_east=-10, status="exercise"))
    assert status == 201
    assert (await site.relay.alert(drill["alert_id"]))["track_id"] != track_id


async def test_merge_and_split_by_a_desk_and_the_errors_they_answer(site: Site) -> None:
    north = await post_all(site.relay, raid("north", km_north=15))
    south = await post_all(site.relay, raid("south", km_north=-15))
    a, b = north[0]["alert_id"], south[0]["alert_id"]

    status, err = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": a})
    assert status == 409 and "itself" in err["detail"]
    status, err = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": "no-such-track"})
    assert status == 404 and "no-such-track" in err["detail"]
    status, err = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": "bad id!"})
    assert status == 422 and err["detail"][0]["field"] == "into"
    status, err = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": b}, token=DESK2_TOKEN)
    assert status == 403
    status, err = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": b}, token=OPERATOR_TOKEN)
    assert status == 403

    status, merged = await api(site.relay, "POST", f"/api/v1/tracks/{a}/merge", body={"into": b, "by": "Петров"})
    assert status == 200 and merged["reports"] == 14 and merged["track_id"] == b
    status, _ = await api(site.relay, "GET", f"/api/v1/tracks/{a}")
    assert status == 404
    assert {(await site.relay.alert(x["alert_id"]))["track_id"] for x in north} == {b}

    lone = north[3]["alert_id"]
    status, split = await api(site.relay, "POST", f"/api/v1/alerts/{lone}/split", body={"by": "Петров"})
    assert status == 200 and split["alert_ids"] == [lone] and split["track_id"] != b
    status, _ = await api(site.relay, "POST", f"/api/v1/alerts/{lone}/split", body={})
    assert status == 409  # alone in its track already
    status, _ = await api(site.relay, "POST", "/api/v1/alerts/nope/split", body={})
    assert status == 404
    status, history = await site.relay.get(f"/api/v1/alerts/{lone}/history", DESK_TOKEN)
    kinds = [e["kind"] for e in history["events"]]
    assert "track_merged" in kinds and "track_split" in kinds
    # the correction is kept: the next report near it is placed by the correlator, the split alert stays where it is
    await site.relay.post_report(call("after-split", ago_s=1, km_east=-5, km_north=15))
    assert (await site.relay.alert(lone))["track_id"] == split["track_id"]


async def test_a_restart_keeps_every_track_and_its_escalation(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = config(broker, smtp, twilio, tmp_path / "data")
    async with running_relay(cfg) as relay:
        accepted = await post_all(relay, raid())
    track_id = accepted[0]["alert_id"]
    async with running_relay(cfg) as relay:
        status, later = await relay.post_report(call("after-restart", ago_s=1, km_east=-9))
        assert status == 201
        assert (await relay.alert(later["alert_id"]))["track_id"] == track_id
        status, track = await api(relay, "GET", f"/api/v1/tracks/{track_id}")
        assert status == 200 and track["reports"] == 8

        async def one_per_phone_per_round() -> bool:
            by_phone: dict[str, int] = {}
            for sms in twilio.messages:
                by_phone[sms.to] = by_phone.get(sms.to, 0) + 1
            return bool(by_phone) and max(by_phone.values()) >= 2

        await eventually(one_per_phone_per_round, timeout=10, what="two backup rounds")
        rounds = [s for s in twilio.messages if s.to == DESK1_PHONE]
        # each round one SMS to the phone, whichever of the track's eight alerts it carries
        assert all(len([c for c in (a["short_code"] for a in accepted) if c in s.body]) == 7 for s in rounds)
        status, _ = await api(relay, "POST", f"/api/v1/tracks/{track_id}/ack", body={"by": "Иванов"})
        assert status == 200
        assert (await relay.alert(later["alert_id"]))["state"] == "acknowledged"


async def test_a_merge_into_a_closed_track_is_409(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = config(broker, smtp, twilio, tmp_path / "data")
    cfg["tracks"] = {"enabled": True, "join_window_s": 60}
    async with running_relay(cfg) as relay:
        # seen two minutes ago: once acknowledged, nothing more can join it, and it is closed
        status, old = await relay.post_report(call("old", ago_s=120, km_east=-20))
        assert status == 201
        status, new = await relay.post_report(call("new", ago_s=5, km_east=-20, km_north=30))
        assert status == 201
        status, acked = await api(relay, "POST", f"/api/v1/tracks/{old['alert_id']}/ack", body={"by": "Иванов"})
        assert status == 200 and acked["state"] == "closed"
        status, err = await api(relay, "POST", f"/api/v1/tracks/{new['alert_id']}/merge",
                                body={"into": old["alert_id"]})
        assert status == 409 and "closed" in err["detail"], err
        assert (await relay.alert(new["alert_id"]))["track_id"] == new["alert_id"]
