"""Tracks under attack, on the real relay (real broker, aiosmtpd, the Twilio-shaped server): hostile text in a
correction, malformed ids and queries, and a flood of reports about one place that makes one huge track."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK1_PHONE,
    DESK_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.site import Site
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually

HOSTILE_BY = "Пет\u202eров\n\x00\x1b[31m\u2028Иван\u2066ов"
PLAIN_BY = "Петров [31m Иванов"  # line breaks a space, controls and bidirectional marks dropped (CONTRACT.md)


@pytest.fixture
async def site(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path) -> AsyncIterator[Site]:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=1.0, repeat_s=30, give_up_s=120)
    cfg["tracks"] = {"enabled": True}
    async with running_relay(cfg) as relay:
        yield Site(relay, broker, smtp, twilio)


async def call(relay: RunningRelay, method: str, path: str, body: Any = None, raw: bytes | None = None,
               token: str = DESK_TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with relay.http.request(method, f"{relay.url}{path}", json=None if raw is not None else body, data=raw,
                                  headers=headers) as r:
        return r.status, await r.json() if r.content_type == "application/json" else await r.text()


async def two_tracks(relay: RunningRelay) -> tuple[str, str]:
    ids = []
    for n, lat in enumerate((52.61, 53.61)):  # 110 km apart: two tracks
        status, accepted = await relay.post_report(report(f"t-{n}", location={"lat": lat, "lon": 39.59}))
        assert status == 201
        ids.append(accepted["alert_id"])
    return ids[0], ids[1]


async def test_controls_and_bidi_in_a_corrections_name_are_stored_plain(site: Site) -> None:
    a, b = await two_tracks(site.relay)
    status, _ = await call(site.relay, "POST", f"/api/v1/tracks/{a}/merge", {"into": b, "by": HOSTILE_BY})
    assert status == 200
    status, history = await site.relay.get(f"/api/v1/alerts/{a}/history", DESK_TOKEN)
    (merged,) = [e for e in history["events"] if e["kind"] == "track_merged"]
    assert merged["detail"]["by"] == PLAIN_BY
    status, _ = await call(site.relay, "POST", f"/api/v1/tracks/{b}/ack", {"by": HOSTILE_BY})
    assert status == 200
    alert = await site.relay.alert(a)
    assert alert["ack"]["by"] == PLAIN_BY and alert["ack"]["via_track"] is True


@pytest.mark.parametrize("into", ["a\nb", "a\u2028b", "", "x" * 65, "трек-1", "a b", "../etc", 17, None])
async def test_a_malformed_merge_target_is_422_naming_into(site: Site, into: object) -> None:
    a, _ = await two_tracks(site.relay)
    status, err = await call(site.relay, "POST", f"/api/v1/tracks/{a}/merge", {"into": into})
    assert status == 422, err
    assert err["detail"][0]["field"] == "into"


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"into": "x", "extra": 1}', b"\xff\xfe", b'"x"'])
async def test_garbage_bodies_are_422_and_change_nothing(site: Site, raw: bytes) -> None:
    a, _ = await two_tracks(site.relay)
    status, _ = await call(site.relay, "POST", f"/api/v1/tracks/{a}/merge", raw=raw)
    assert status == 422
    assert (await site.relay.alert(a))["track_id"] == a


@pytest.mark.parametrize("track_id", ["x" * 5000, "%E2%80%AE", "..%2F..", "%00", "трек"])
async def test_odd_track_ids_in_the_path_are_404_not_500(site: Site, track_id: str) -> None:
    status, _ = await call(site.relay, "GET", f"/api/v1/tracks/{track_id}")
    assert status in (404, 414), status
    status, _ = await call(site.relay, "POST", f"/api/v1/tracks/{track_id}/ack", {"by": "x"})
    assert status in (404, 414), status


@pytest.mark.parametrize("query", ["state=bogus", "limit=0", "limit=abc", "limit=1001", "state=%00"])
async def test_bad_track_queries_are_422(site: Site, query: str) -> None:
    status, err = await call(site.relay, "GET", f"/api/v1/tracks?{query}")
    assert status == 422, err


async def test_a_flood_about_one_place_is_one_track_and_its_sms_stay_readable(site: Site) -> None:
    n = 600
    bodies = [report(f"flood-{i}", location={"lat": 52.61, "lon": 39.59}) for i in range(n)]
    answers = await asyncio.gather(*(site.relay.post_report(b) for b in bodies))
    assert [s for s, _ in answers] == [201] * n
    ids = [a["alert_id"] for _, a in answers]
    tracks = {(await site.relay.alert(i))["track_id"] for i in ids[:: n // 20]}
    assert len(tracks) == 1
    (track_id,) = tracks
    status, track = await call(site.relay, "GET", f"/api/v1/tracks/{track_id}")
    assert status == 200 and track["reports"] == n
    # one backup round: one SMS per phone, naming a few codes and how many more, the reply instruction intact
    sms = await site.twilio.wait_for(1, timeout=15, to=DESK1_PHONE)
    assert "ещё" in sms[0].body and sms[0].body.endswith("ответьте им"), sms[0].body
    assert len(sms[0].body) <= 134
    await eventually(lambda: site.relay.get("/readyz", None), what="the relay still ready")
