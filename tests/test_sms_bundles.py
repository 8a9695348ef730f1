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
