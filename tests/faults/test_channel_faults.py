"""Channels misbehaving for real while reports flow: the relay stays ready, follows the rule, and its metrics
tell the truth."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.relay import (
    DESK1_PHONE,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import Fault, TwilioFake
from tests.support.wait import eventually


async def _ready(relay: RunningRelay) -> bool:
    status, _ = await relay.get("/readyz", token=None)
    return status == 200


async def test_broker_flapping_during_a_burst_every_alert_still_reaches_the_console(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = settings_dict(broker.port, tmp_path / "data", http={"rate_per_s": 10000, "rate_burst": 10000})
    async with running_relay(cfg) as relay, Console(broker.port, "airfield-1") as console:
        accepted: list[str] = []

        async def post_all() -> None:
            for n in range(150):
                status, body = await relay.post_report(report(f"flap-{n}"))
                assert status == 201, body  # intake never depends on the broker
                accepted.append(body["alert_id"])
                await asyncio.sleep(0.01)  # a steady flow of calls, not a single burst

        posting = asyncio.create_task(post_all())
        for flap in range(3):
            at_least = 20 + 40 * flap
            await eventually(lambda: len(accepted) >= at_least, timeout=10, what="reports flowing")  # noqa: B023
            broker.stop()  # graceful: the broker keeps the console's session
            await eventually(lambda: _metric(relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
            broker.start()
        await posting
        await eventually(lambda: _ready(relay), timeout=10, what="ready again")

        seen: collections.Counter[str] = collections.Counter()

        async def all_seen() -> bool:
            while not console.messages.empty():
                _, body, _ = console.messages.get_nowait()
                seen[body["alert_id"]] += 1
            return set(accepted) <= set(seen)

        await eventually(all_seen, timeout=20, what="all 150 alerts on the console")
        assert await relay.metric('relay_channel_up{channel="mqtt"}') == 1
        assert await relay.metric("relay_reports_total") == 150


async def _metric(relay: RunningRelay, name: str, value: float) -> bool:
    return await relay.metric(name) == value


async def test_an_sms_api_answering_500_429_and_too_slowly_still_gets_every_sms_out(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url)
    cfg["sms"]["timeout_s"] = 0.5
    twilio.faults += [Fault(500), Fault(delay_s=1.0), Fault(429, 20429), Fault(503), Fault(delay_s=1.0)]
    async with running_relay(cfg) as relay:
        broker.kill()
        await eventually(lambda: _metric(relay, 'relay_channel_up{channel="mqtt"}', 0), what="mqtt down")
        ids = []
        for n in range(3):
            status, body = await relay.post_report(report(f"sms-faults-{n}"))
            assert status == 201
            ids.append(body["alert_id"])
        await eventually(lambda: _all_sms_sent(relay, ids), timeout=20, what="every SMS delivery sent")
        status, _ = await relay.get("/readyz", token=None)
        assert status == 200
        assert await relay.metric('relay_channel_up{channel="sms"}') == 1
        assert await relay.metric('relay_channel_send_seconds_count{channel="sms"}') >= 1
    # 500, 429 and 503 created nothing and were retried; a too-slow answer may still have sent its SMS, so the
    # relay's retry after its timeout can make a second copy (same short code: harmless, where a gap is not)
    assert twilio.calls >= len(twilio.messages) + 3


async def _all_sms_sent(relay: RunningRelay, ids: list[str]) -> bool:
    for alert_id in ids:
        alert = await relay.alert(alert_id)
        sms = [d for d in alert["deliveries"] if d["channel"] == "sms"]
        if not sms or any(d["state"] != "sent" for d in sms):
            return False
    return True


async def test_a_slow_console_does_not_hold_up_other_desks_and_escalation_goes_on(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, ack_timeout_s=0.5, repeat_s=30)
    async with (
        running_relay(cfg) as relay,
        Console(broker.port, "airfield-1") as slow,
        Console(broker.port, "airfield-2") as quick,
    ):
        started = time.time()
        _, accepted = await relay.post_report(report("slow-console", location={"lat": 43.2, "lon": 131.8}))
        quick_alert = await quick.next_alert()
        await quick.received(quick_alert["alert_id"])
        assert time.time() - started < 1.0
        await twilio.wait_for(1, to=DESK1_PHONE, timeout=3)  # nobody acked within ack_timeout_s: backups
        slow_alert = await slow.next_alert()  # shown, much later, on the slow console
        await slow.received(slow_alert["alert_id"])
        await slow.ack(slow_alert["alert_id"], by="поздно, но подтвердил")
        acked = await eventually(lambda: _acked(relay, accepted["alert_id"]), what="the late ack counts")
    assert acked["ack"]["desk_id"] == "airfield-1"
    states = {(d["desk_id"], d["channel"]): d["state"] for d in acked["deliveries"] if d["channel"] == "mqtt"}
    assert states == {("airfield-1", "mqtt"): "delivered", ("airfield-2", "mqtt"): "delivered"}


async def _acked(relay: RunningRelay, alert_id: str) -> dict[str, Any] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == "acknowledged" else None
