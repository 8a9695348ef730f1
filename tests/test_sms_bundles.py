"""SMS bundles never hold a warning back: what falls due together leaves together, at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.relay import DESK1_PHONE, report, running_relay, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually


async def test_backups_overdue_after_a_restart_leave_at_once_in_bundles(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path
) -> None:
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=2.0, repeat_s=300)
    cfg["sms"]["bundle_window_s"] = 0.5
    codes = []
    async with running_relay(cfg) as relay:
        for n in range(20):
            status, body = await relay.post_report(report(f"overdue-{n}"))
            assert status == 201
            codes.append(body["short_code"])
        due_by = time.time() + 2.0 + 0.2
    assert not twilio.messages, "the relay stopped before any backup was due"
    await asyncio.sleep(max(0.0, due_by - time.time()))  # the stored due times pass while the relay is down

    async with running_relay(cfg):
        started = time.time()

        def every_code() -> bool:
            bodies = " ".join(m.body for m in twilio.messages if m.to == DESK1_PHONE)
            return all(code in bodies for code in codes)

        await eventually(every_code, timeout=15, what="every overdue alert by SMS")
        sent = [m for m in twilio.messages if m.to == DESK1_PHONE]
        assert len(sent) < len(codes)  # bundled: several codes per SMS
        # one pass, one go: no alert waited a bundle window behind the first
        assert max(m.at for m in sent) - min(m.at for m in sent) < 0.4, [round(m.at - started, 3) for m in sent]


async def test_a_long_scheduler_pass_never_holds_sms_longer_than_the_window() -> None:
    """Under a backlog a pass can run for seconds; what it hands to the bundler still leaves within the window."""
    from relay.domain.records import AlertRecord, DeliveryRecord
    from relay.domain.states import AlertState
    from relay.engine.sms_bundler import SmsBundler, SmsItem
    from tests.support.fake_clock import FakeClock

    clock = FakeClock()
    sent: list[tuple[float, list[str]]] = []

    async def send(phone: str, items: list[SmsItem]) -> None:
        sent.append((clock.t, [i.alert.alert_id for i in items]))

    def item(n: int) -> SmsItem:
        alert = AlertRecord(f"A{n}", f"r{n}", "op", "K7QX", AlertState.PENDING, "immediate", False, 0.0, {}, ("d",))
        return SmsItem(alert, DeliveryRecord(f"A{n}.d.sms.0", f"A{n}", "d", "sms", "+79001110001"))

    bundler = SmsBundler(0.5, send, clock)
    running = asyncio.create_task(bundler.run())
    try:
        with bundler.together():  # a pass that goes on for 2 s of the fake clock
            for n in range(4):
                bundler.add(item(n))
                await clock.advance(0.5)
        await clock.advance(0.5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    waited = [at - n * 0.5 for at, ids in sent for n in range(4) if f"A{n}" in ids]
    assert sorted(a for _, ids in sent for a in ids) == ["A0", "A1", "A2", "A3"]
    assert max(waited) <= 0.5 + 1e-9, sent
