"""The tests use the demo's Twilio-shaped server (relay/demo/twilio_sink.py), plus waiting for what it received."""

from __future__ import annotations

from relay.operations.demo.twilio_sink import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, Fault, Sms, TwilioSink, post_signed
from tests.support.wait import eventually

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "FROM_NUMBER", "Fault", "Sms", "TwilioFake", "post_signed"]


class TwilioFake(TwilioSink):
    async def wait_for(self, count: int, timeout: float = 5.0, to: str | None = None) -> list[Sms]:
        def got() -> list[Sms] | None:
            mine = [m for m in self.messages if to is None or m.to == to]
            return mine if len(mine) >= count else None

        return await eventually(got, timeout=timeout, what=f"{count} SMS at the Twilio-shaped server")
