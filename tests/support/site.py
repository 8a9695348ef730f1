"""A relay with every channel configured, and the far ends a test looks at: the broker, the SMTP server and the
Twilio-shaped server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.broker import Mosquitto
from tests.support.relay import RunningRelay
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake


@dataclass
class Site:
    relay: RunningRelay
    broker: Mosquitto
    smtp: SmtpServer
    twilio: TwilioFake

    @property
    def public_url(self) -> str:
        return str(self.relay.relay.settings.http.public_url)

    async def deliveries(self, alert_id: str, channel: str) -> list[dict[str, Any]]:
        alert = await self.relay.alert(alert_id)
        return [d for d in alert["deliveries"] if d["channel"] == channel]
