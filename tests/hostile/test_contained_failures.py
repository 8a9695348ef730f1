"""An exception nobody foresaw, injected into each channel and each inbound path of the real relay (real broker,
real aiosmtpd, the real twilio client against the Twilio-shaped server): that one job fails with its reason,
counted in relay_job_failures_total, and the relay goes on relaying. Also: replies that guess, names that
reorder text, and the first send's time kept over repeat rounds."""

from __future__ import annotations

import random
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import aiosmtplib
import pytest

from channels.email import SmtpEmailChannel
from channels.mqtt import MqttChannel
from channels.sms import TwilioSmsChannel
from relay.domain import escalation
from relay.engine.engine import Engine
from relay.engine.intake import Intake
from relay.engine.sms_replies import SmsReplies
from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.relay import (
    DESK1_EMAIL,
    DESK1_PHONE,
    DESK_TOKEN,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.site import Site as BackupSite
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import ACCOUNT_SID, TwilioFake, post_signed
from tests.support.wait import eventually

UNFORESEEN: list[type[Exception]] = [RuntimeError, KeyError, ValueError, ZeroDivisionError, AttributeError,
                                     OSError, LookupError, TypeError, AssertionError, UnicodeError]


def unforeseen(seed: int) -> Exception:
    kind = random.Random(seed).choice(UNFORESEEN)
    return kind(f"injected by the test ({kind.__name__})")


def raising(exc: Exception, *, times: int = 1_000_000) -> Callable[..., Any]:
    left = [times]

    async def fail(*args: Any, **kwargs: Any) -> NoReturn:
        left[0] -= 1
        raise exc

    return fail


class Site(BackupSite):
    async def failures(self, kind: str) -> float:
        return await self.relay.metric(f'relay_job_failures_total{{kind="{kind}"}}')

    async def still_relays(self, console: Console, report_id: str) -> None:
        """A fresh report goes all the way: accepted, and on the console."""
        status, accepted = await self.relay.post_report(report(report_id))
        assert status == 201, accepted
        while True:
            alert = await console.next_alert(timeout=10)
            if alert["alert_id"] == accepted["alert_id"]:
                return


@pytest.fixture
async def site(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path) -> AsyncIterator[Site]:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=30, repeat_s=60)
    async with running_relay(cfg) as relay:
        yield Site(relay, broker, smtp, twilio)


@pytest.mark.parametrize(("channel", "seed"), [("mqtt", 1), ("sms", 2), ("email", 3)])
async def test_a_channel_raising_the_unforeseen_fails_that_delivery_alone(
    site: Site, monkeypatch: pytest.MonkeyPatch, channel: str, seed: int
) -> None:
    cls = {"mqtt": MqttChannel, "sms": TwilioSmsChannel, "email": SmtpEmailChannel}[channel]
    original = cls.send
    monkeypatch.setattr(cls, "send", raising(unforeseen(seed)))
    async with Console(site.broker.port, "airfield-1") as console:
        status, accepted = await site.relay.post_report(report("unforeseen", priority="flash"))  # every channel
        assert status == 201
        alert_id = accepted["alert_id"]

        async def failed() -> list[dict[str, Any]] | None:
            ds = await site.deliveries(alert_id, channel)
            return ds if ds and all(d["state"] == "failed" and "unexpected" in d["error"] for d in ds) else None

        await eventually(failed, timeout=10, what=f"{channel} deliveries failed with the reason")
        assert await site.failures("delivery") >= 1
        for other in {"mqtt", "sms", "email"} - {channel}:  # the other channels are not held up
            await eventually(lambda: _sent(site, alert_id, other), timeout=10,  # noqa: B023
                             what=f"{other} delivered beside the failing {channel}")
        monkeypatch.setattr(cls, "send", original)
        await site.still_relays(console, "after-unforeseen")


async def _sent(site: Site, alert_id: str, channel: str) -> bool:
    ds = await site.deliveries(alert_id, channel)
    return bool(ds) and all(d["state"] in ("sent", "delivered") for d in ds)


async def test_a_library_raising_the_unforeseen_is_translated_by_its_channel(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiosmtplib.SMTP, "send_message", raising(unforeseen(4)))
    monkeypatch.setattr(TwilioSmsChannel, "_create", raising(unforeseen(5)))
    status, accepted = await site.relay.post_report(report("library-bug", priority="flash"))
    assert status == 201
    for channel in ("sms", "email"):
        ds = await eventually(lambda: _failed_with(site, accepted["alert_id"], channel),  # noqa: B023
                              timeout=15, what=f"{channel} failed")
        assert all("unexpected:" in d["error"] for d in ds), ds  # the channel's own reason, not a crash
    await eventually(lambda: _sent(site, accepted["alert_id"], "mqtt"), timeout=10, what="mqtt still delivered")


async def _failed_with(site: Site, alert_id: str, channel: str) -> list[dict[str, Any]] | None:
    ds = await site.deliveries(alert_id, channel)
    return ds if ds and all(d["error"] for d in ds) else None


async def test_every_inbound_path_raising_the_unforeseen_fails_that_message_alone(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Engine, "receipt", raising(unforeseen(6)))
    monkeypatch.setattr(Intake, "submit", raising(unforeseen(7)))
    monkeypatch.setattr(SmsReplies, "handle", raising(unforeseen(8)))
    monkeypatch.setattr(Engine, "delivery_report", raising(unforeseen(9)))
    async with Console(site.broker.port, "airfield-1") as console, \
            MqttPeer(site.broker.port, "op-1-system", []) as system:
        await console.received("01NOALERT")  # an MQTT reply
        await system.publish("uav/reports/op-1", report("over-mqtt"))  # an MQTT report
        await eventually(lambda: _at_least(site, "inbound", 2), timeout=10, what="both inbound jobs failed")

        status, _ = await post_signed(f"{site.public_url}/webhooks/twilio/sms",  # an SMS reply
                                      {"MessageSid": "SM" + "1" * 32, "AccountSid": ACCOUNT_SID,
                                       "From": DESK1_PHONE, "Body": "K7QX"})
        assert status == 500
        status, _ = await post_signed(f"{site.public_url}/webhooks/twilio/status?key=x.airfield-1.sms.0",
                                      {"MessageSid": "SM" + "2" * 32, "MessageStatus": "delivered"})
        assert status == 500
        assert await site.failures("request") >= 2

        monkeypatch.undo()  # the same paths work again at once: nothing was left broken
        await site.still_relays(console, "after-inbound")
        status, _ = await site.relay.get("/healthz", token=None)
        assert status == 200


async def _at_least(site: Site, kind: str, n: int) -> bool:
    return await site.failures(kind) >= n


async def test_an_escalation_step_that_raises_is_recorded_and_tried_again(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_plan = escalation.plan
    calls = {"n": 0}

    def plan_failing_twice(*args: Any, **kwargs: Any) -> escalation.Plan:
        calls["n"] += 1
        if calls["n"] in (2, 3):  # the intake's plan (the first) works; the scheduler's next two steps fail
            raise unforeseen(10)
        return real_plan(*args, **kwargs)

    site.broker.kill()  # the step that follows is a failover: the scheduler must run it
    await eventually(lambda: _mqtt_down(site), what="mqtt down")
    monkeypatch.setattr(escalation, "plan", plan_failing_twice)
    status, accepted = await site.relay.post_report(report("step"))
    assert status == 201, accepted
    mails = await site.smtp.wait_for(1, timeout=15, to=DESK1_EMAIL)  # the failover happened after all
    assert accepted["short_code"] in str(mails[0].message["Subject"])
    status, history = await site.relay.get(f"/api/v1/alerts/{accepted['alert_id']}/history")
    assert any(e["kind"] == "job_failed" for e in history["events"]), history


async def _mqtt_down(site: Site) -> bool:
    return await site.relay.metric('relay_channel_up{channel="mqtt"}') == 0


# ---- replies that guess, names that reorder, the first send's time ------------------------------------------


async def test_an_sms_reply_of_hundreds_of_code_guesses_acknowledges_nothing(site: Site) -> None:
    status, accepted = await site.relay.post_report(report("guessed"))
    assert status == 201
    alphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
    rng = random.Random(11)
    guesses = [accepted["short_code"]] + ["".join(rng.choice(alphabet) for _ in range(4)) for _ in range(319)]
    body = " ".join(guesses)[:1599]
    status, twiml = await TwilioFake.inbound(site.public_url, DESK1_PHONE, body)
    assert status == 200
    assert "ничего не подтверждено" in twiml
    alert = await site.relay.alert(accepted["alert_id"])
    assert alert["ack"] is None and alert["state"] != "acknowledged"
    # a dispatcher's real answer with a few codes still works
    status, twiml = await TwilioFake.inbound(site.public_url, DESK1_PHONE, f"принято {accepted['short_code']}")
    assert "подтверждена" in twiml


@pytest.mark.parametrize("via", ["http", "mqtt"])
async def test_a_right_to_left_override_in_by_cannot_reorder_the_history(site: Site, via: str) -> None:
    status, accepted = await site.relay.post_report(report(f"rtl-{via}"))
    assert status == 201
    by = "Сидоров\u202e 12:05 \u2066дежурный\u2069\x1b[2J\n"
    if via == "http":
        status, _ = await site.relay.ack(accepted["alert_id"], DESK_TOKEN, by=by)
        assert status == 200
    else:
        async with Console(site.broker.port, "airfield-1") as console:
            await console.ack(accepted["alert_id"], by=by)
    alert = await eventually(lambda: _acked(site, accepted["alert_id"]), timeout=10, what="acknowledged")
    stored = alert["ack"]["by"]
    assert stored == "Сидоров 12:05 дежурный[2J", stored
    assert not any(unicodedata.bidirectional(c) in ("RLO", "LRO", "RLE", "LRE", "PDF", "LRI", "RLI", "FSI", "PDI")
                   for c in stored)


async def _acked(site: Site, alert_id: str) -> dict[str, Any] | None:
    alert = await site.relay.alert(alert_id)
    return alert if alert["ack"] else None


async def test_a_repeat_round_keeps_the_first_sent_at_and_the_history_has_every_round(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=0.3, repeat_s=0.6)
    async with running_relay(cfg) as relay:
        status, accepted = await relay.post_report(report("rounds"))
        assert status == 201
        mails = await smtp.wait_for(3, timeout=15, to=DESK1_EMAIL)
        alert = await relay.alert(accepted["alert_id"])
        email = next(d for d in alert["deliveries"] if d["channel"] == "email")
        assert email["attempts"] >= 3
        first = min(m.at for m in mails)
        from datetime import datetime

        assert abs(datetime.fromisoformat(email["sent_at"]).timestamp() - first) < 0.5, (email, first)
        status, history = await relay.get(f"/api/v1/alerts/{accepted['alert_id']}/history")
        rounds = [e for e in history["events"] if e["kind"] == "backup_round"]
        assert len(rounds) >= 3 and [e["detail"]["round"] for e in rounds[:3]] == [1, 2, 3], rounds
