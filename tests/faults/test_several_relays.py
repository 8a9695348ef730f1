"""Two relay processes on one PostgreSQL database and one broker: either may die, mid-burst, and nothing is lost.

Real parts throughout: the relays are `python -m relay run` subprocesses, killed with SIGKILL by their own PID; the
database is the tests' private PostgreSQL server; the broker a private Mosquitto; SMS through the Twilio-shaped
server, e-mail through aiosmtpd.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.faults.test_kill_and_restart import Burst, _seen_all
from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.process import RelayProcess
from tests.support.relay import DESK1_PHONE, DESK_TOKEN, OPERATOR_TOKEN, report, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually, free_port

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

LEASE_S = 2.0
ACK_LINK_KEY = "one-key-for-every-relay-0123456789abcdef"


def relay_settings(broker: Mosquitto, data_dir: Path, db_url: str, name: str, **extra: Any) -> dict[str, Any]:
    port = free_port()
    cfg = settings_dict(broker.port, data_dir)
    cfg["store"] = {"url": db_url, "lease_s": LEASE_S}
    cfg["mqtt"] = {**cfg["mqtt"], "client_id": name, "share_group": "relays"}
    cfg["http"] = {**cfg["http"], "port": port, "public_url": f"http://127.0.0.1:{port}", "rate_per_s": 100000,
                   "rate_burst": 100000, "ack_link_key": ACK_LINK_KEY}
    cfg["relay"]["log_level"] = "info"
    for section, value in extra.items():
        cfg[section] = value
    return cfg


async def two_relays(
    tmp_path: Path, started: list[RelayProcess], cfgs: list[dict[str, Any]]
) -> list[RelayProcess]:
    relays = []
    for n, cfg in enumerate(cfgs):
        workdir = tmp_path / f"relay-{n}"
        workdir.mkdir()
        relay = RelayProcess(cfg, workdir)
        started.append(relay)  # the fixture stops it by its PID, whatever happens
        relay.start()
        relays.append(relay)
    for relay in relays:
        await relay.wait_ready(timeout=30)
    return relays


async def api(relay: RelayProcess, method: str, path: str, token: str = OPERATOR_TOKEN, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as http, http.request(
        method, f"{relay.url}{path}", headers={"Authorization": f"Bearer {token}"}, **kw
    ) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("when", ["mid-burst", "after-burst"])
async def test_a_relay_killed_during_or_right_after_a_burst_loses_nothing(
    broker: Mosquitto, postgres_url: str, tmp_path: Path, relay_process: list[RelayProcess], when: str
) -> None:
    a, b = await two_relays(tmp_path, relay_process, [
        relay_settings(broker, tmp_path / "a", postgres_url, "relay-a"),
        relay_settings(broker, tmp_path / "b", postgres_url, "relay-b"),
    ])
    async with Console(broker.port, "airfield-1") as console:
        burst, posting = await Burst.under_way(a.url, f"kill-{when}")
        if when == "after-burst":
            await posting
        a.kill9()
        killed_at = time.monotonic()
        await posting
        if when == "mid-burst":
            assert 150 <= len(burst.accepted) < 600, "the kill must land in the middle of the burst"

        seen: collections.Counter[str] = collections.Counter()
        wanted = set(burst.accepted.values())
        await eventually(lambda: _seen_all(console, seen, wanted), timeout=LEASE_S + 15,
                         what="every accepted report on the console, from the relay left")
        reached_in = time.monotonic() - killed_at
    duplicated = {x: n for x, n in seen.items() if n > 1}
    assert all(n <= 2 for n in duplicated.values()), duplicated  # at most once more: the dead relay's last sends
    assert len(duplicated) <= 60, f"{len(duplicated)} alerts arrived twice"
    events = [line.get("event") for line in b.log_lines()]
    if len(seen) < len(wanted) + 0 and "takeover" not in events:  # pragma: no cover - said in the failure
        raise AssertionError("relay-b never took over")
    print(f"{when}: {len(wanted)} accepted, all on the console {reached_in:.2f} s after the kill, "
          f"{len(duplicated)} twice")

    async def recorded_sent() -> bool:
        # the survivor answers for every one of them, as sent: what the dead relay published without recording
        # it is published again once its lease lapsed (the same alert_id: recognisable), and recorded
        for alert_id in list(wanted)[-30:]:
            status, alert = await api(b, "GET", f"/api/v1/alerts/{alert_id}")
            assert status == 200
            if alert["deliveries"][0]["state"] not in ("sent", "delivered"):
                return False
        return True

    await eventually(recorded_sent, timeout=LEASE_S + 10, what="the survivor recording every send")


async def test_a_killed_relays_timers_fire_from_the_other_once(
    broker: Mosquitto, postgres_url: str, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path,
    relay_process: list[RelayProcess],
) -> None:
    cfgs = []
    for name in ("relay-a", "relay-b"):
        cfg = with_backups(relay_settings(broker, tmp_path / name, postgres_url, name), smtp_port=smtp.port,
                           twilio_url=twilio.base_url, ack_timeout_s=0.5, repeat_s=4.0)
        cfg["http"]["ack_link_key"] = ACK_LINK_KEY
        cfgs.append(cfg)
    a, b = await two_relays(tmp_path, relay_process, cfgs)
    async with Console(broker.port, "airfield-1") as console:
        status, accepted = await api(a, "POST", "/api/v1/reports", json=report("timer-of-a"))
        assert status == 201
        alert_id = accepted["alert_id"]
        await console.next_alert()
        first = (await twilio.wait_for(1, to=DESK1_PHONE))[0]

        async def sms_recorded_sent() -> bool:
            _, alert = await api(b, "GET", f"/api/v1/alerts/{alert_id}")
            return any(d["target"] == DESK1_PHONE and d["state"] in ("sent", "delivered")
                       for d in alert["deliveries"])

        await eventually(sms_recorded_sent, timeout=5, what="the first SMS recorded as sent")
        a.kill9()
        second = (await twilio.wait_for(2, to=DESK1_PHONE, timeout=LEASE_S + 10))[1]
        # due 4 s after the first; relay-b holds it at the latest lease_s (+ one look) after the kill
        assert 3.7 <= second.at - first.at <= 4.0 + LEASE_S + 1.5
        third = (await twilio.wait_for(3, to=DESK1_PHONE, timeout=10))[2]
        assert third.at - second.at >= 3.5, "a round sent twice"
        status, _ = await api(b, "POST", f"/api/v1/alerts/{alert_id}/ack", token=DESK_TOKEN, json={"by": "Иванов"})
        assert status == 200
    _, history = await api(b, "GET", f"/api/v1/alerts/{alert_id}/history")
    rounds = [e for e in history["events"] if e["kind"] == "backup_round"]
    assert [e["detail"]["round"] for e in rounds] == list(range(1, len(rounds) + 1)), rounds  # each once


async def test_a_call_whose_callbacks_reach_another_relay_passes_to_the_next_number_at_once(
    broker: Mosquitto, postgres_url: str, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path,
    relay_process: list[RelayProcess],
) -> None:
    """Behind a load balancer Twilio's callbacks for a call relay-a placed may land on relay-b. relay-b records them
    on the delivery; relay-a, waiting on the call, reads that and calls the desk's next number at once, not after
    its 180 s wait. Here every callback goes to relay-b: both relays give relay-b's address as their public URL."""
    first_number, second_number = "+79005550001", "+79005550002"
    cfgs = []
    for name, caller in (("relay-a", "+79001110001"), ("relay-b", "+79001110002")):
        cfg = with_backups(relay_settings(broker, tmp_path / name, postgres_url, name), smtp_port=smtp.port,
                           twilio_url=twilio.base_url, ack_timeout_s=0.5, repeat_s=60, voice_after_s=1.0)
        cfg["voice"] = {"enabled": True, "from_number": caller}
        cfg["desks"][0] = {**cfg["desks"][0], "voice": [first_number, second_number]}
        cfgs.append(cfg)
    cfgs[0]["http"]["public_url"] = cfgs[1]["http"]["public_url"]
    a, b = await two_relays(tmp_path, relay_process, cfgs)
    status, accepted = await api(a, "POST", "/api/v1/reports", json=report("call-over-a"))
    assert status == 201
    first = (await twilio.wait_for_calls(1, timeout=15, to=first_number))[0]
    assert first.from_ == "+79001110001", "relay-a, which took the report, places its calls"
    assert first.status_callback.startswith(b.url)
    await twilio.ring_out(first, "busy")  # told to relay-b only
    second = (await twilio.wait_for_calls(1, timeout=10, to=second_number))[0]
    assert second.at - first.at < 5, "the next number waited for a word relay-a never heard itself"
    await twilio.answer(second)
    await twilio.press(second, "1")

    async def acked() -> dict[str, Any] | None:
        _, alert = await api(a, "GET", f"/api/v1/alerts/{accepted['alert_id']}")
        return dict(alert) if alert["state"] == "acknowledged" else None

    alert = await eventually(acked, timeout=10, what="the ack by key 1, heard by relay-b")
    calls = {d["target"]: d for d in alert["deliveries"] if d["channel"] == "voice"}
    assert calls[first_number]["state"] == "failed" and "busy" in (calls[first_number]["error"] or "")
    assert alert["ack"]["channel"] == "voice" and alert["ack"]["by"] == second_number


async def test_operators_see_every_relays_changes_and_two_relays_record_one_ack(
    broker: Mosquitto, postgres_url: str, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    a, b = await two_relays(tmp_path, relay_process, [
        relay_settings(broker, tmp_path / "a", postgres_url, "relay-a"),
        relay_settings(broker, tmp_path / "b", postgres_url, "relay-b"),
    ])
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{b.url}/api/v1/events", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as sse,
        MqttPeer(broker.port, "op-1-workstation", ["uav/events/op-1"]) as mqtt_events,
    ):
        status, accepted = await api(a, "POST", "/api/v1/reports", json=report("seen-on-b"))
        assert status == 201
        alert_id = accepted["alert_id"]
        both = await asyncio.gather(
            api(a, "POST", f"/api/v1/alerts/{alert_id}/ack", token=DESK_TOKEN, json={"by": "Иванов"}),
            api(b, "POST", f"/api/v1/alerts/{alert_id}/ack", token=DESK_TOKEN, json={"by": "Петров"}),
        )
        assert [s for s, _ in both] == [200, 200]
        states: list[str] = []
        async with asyncio.timeout(10):  # on relay-b's stream: relay-a's report, and the ack
            while "acknowledged" not in states:
                line = (await sse.content.readline()).decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:"))
                    assert event["alert_id"] == alert_id
                    states.append(event["state"])
        assert states[0] == "pending"
        # on the broker everyone shares: each change once, from the relay that made it
        got = [(await mqtt_events.next())[1]["state"] for _ in range(len(set(states)))]
        assert sorted(set(got)) == sorted(set(states)) and len(got) == len(set(got))
    _, history = await api(b, "GET", f"/api/v1/alerts/{alert_id}/history")
    acks = [e for e in history["events"] if e["kind"] in ("acknowledged", "duplicate_ack")]
    assert sorted(e["kind"] for e in acks) == ["acknowledged", "duplicate_ack"]  # one ack; the other kept as such


async def test_a_report_over_mqtt_is_taken_once_by_two_relays(
    broker: Mosquitto, postgres_url: str, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    a, b = await two_relays(tmp_path, relay_process, [
        relay_settings(broker, tmp_path / "a", postgres_url, "relay-a"),
        relay_settings(broker, tmp_path / "b", postgres_url, "relay-b"),
    ])
    async with Console(broker.port, "airfield-1") as console, MqttPeer(broker.port, "112-system", []) as system:
        for n in range(20):
            await system.publish("uav/reports/op-1", report(f"mq-shared-{n}"))
        ids = set()
        for _ in range(20):
            alert = await console.next_alert()
            ids.add(alert["report_id"])
        assert ids == {f"mq-shared-{n}" for n in range(20)}
        with pytest.raises(TimeoutError):  # nothing more: each report once
            async with asyncio.timeout(1.5):
                await console.next_alert()
    _, listed = await api(a, "GET", "/api/v1/alerts?limit=100")
    assert len(listed["alerts"]) == 20
    accepted_by = collections.Counter(
        line.get("event") == "report_accepted" for r in (a, b) for line in r.log_lines())
    assert accepted_by[True] == 20


async def test_a_report_to_another_relay_joins_the_track_a_first_relay_started(
    broker: Mosquitto, postgres_url: str, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    a, b = await two_relays(tmp_path, relay_process, [
        relay_settings(broker, tmp_path / "a", postgres_url, "relay-a", tracks={"enabled": True}),
        relay_settings(broker, tmp_path / "b", postgres_url, "relay-b", tracks={"enabled": True}),
    ])
    async with Console(broker.port, "airfield-1") as console:
        status, first = await api(a, "POST", "/api/v1/reports", json=report("same-drone-1"))
        assert status == 201
        await console.next_alert()
        _, alert = await api(a, "GET", f"/api/v1/alerts/{first['alert_id']}")
        track_id = alert["track_id"]

        async def b_knows_it() -> bool:  # relay-b's change feed has passed relay-a's report on
            async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as r:
                text = await r.text()
            return any(line.startswith("relay_change_feed_events_total ") and float(line.split()[1]) >= 1
                       for line in text.splitlines())

        await eventually(b_knows_it, timeout=10, what="relay-a's track known to relay-b")
        # relay-b's correlator places the next call about the same drone in relay-a's track
        status, second = await api(b, "POST", "/api/v1/reports", json=report("same-drone-2"))
        assert status == 201
        _, joined = await api(b, "GET", f"/api/v1/alerts/{second['alert_id']}")
        assert joined["track_id"] == track_id


async def test_postgresql_stopped_under_two_relays_refuses_reports_then_both_resume_by_themselves(
    broker: Mosquitto, postgres_server: PostgresServer, postgres_url: str, tmp_path: Path,
    relay_process: list[RelayProcess],
) -> None:
    a, b = await two_relays(tmp_path, relay_process, [
        relay_settings(broker, tmp_path / "a", postgres_url, "relay-a"),
        relay_settings(broker, tmp_path / "b", postgres_url, "relay-b"),
    ])
    async with Console(broker.port, "airfield-1") as console:
        before = [await api(r, "POST", "/api/v1/reports", json=report(f"before-{n}")) for n, r in enumerate((a, b))]
        assert [s for s, _ in before] == [201, 201]
        postgres_server.stop()
        try:
            for n, r in enumerate((a, b)):  # nothing is claimed accepted while no database answers
                status, body = await api(r, "POST", "/api/v1/reports", json=report(f"during-{n}"))
                assert status == 503, body
            await asyncio.sleep(LEASE_S + 1)  # the fault itself: an outage longer than every lease
        finally:
            postgres_server.start()

        async def accepted_again() -> bool:
            statuses = [(await api(r, "POST", "/api/v1/reports", json=report(f"after-{n}")))[0]
                        for n, r in enumerate((a, b))]
            return statuses == [201, 201]

        await eventually(accepted_again, timeout=30, interval=0.5, what="both relays taking reports again")
        seen: collections.Counter[str] = collections.Counter()
        wanted = {x["alert_id"] for _, x in before}
        await eventually(lambda: _seen_all(console, seen, wanted), timeout=10, what="the reports from before")
    for r in (a, b):  # each renewed its own lease in time: neither took the other's work (and sent it twice)
        assert "takeover" not in {line.get("event") for line in r.log_lines()}, r.log_tail()
