"""Reports over MQTT (`uav/reports/{operator_id}`) and the answer to a rejected one (`.../rejected`)."""

from __future__ import annotations

import json
from collections.abc import Collection

from channels.mqtt import MqttChannel, RawMessage
from relay.domain.clock import Clock
from relay.domain.topics import Topics
from relay.edges.ratelimit import RateLimiter
from relay.engine.intake import Intake, Outcome

# Bigger than any valid report; a bigger payload is refused before parsing.
MAX_REPORT_BYTES = 64 * 1024


class MqttReportIntake:
    """The same validation, limits and answers as over HTTP; the operator is the topic's last level (the broker's
    ACL lets each operator publish only under its own id)."""

    def __init__(
        self, intake: Intake, channel: MqttChannel, topics: Topics, operator_ids: Collection[str],
        limiter: RateLimiter, clock: Clock,
    ) -> None:
        self._intake, self._channel, self._topics, self._operators = intake, channel, topics, operator_ids
        self._limiter, self._clock = limiter, clock

    async def on_report(self, message: RawMessage) -> None:
        operator_id = Topics.last_level(message.topic)
        if len(message.payload) > MAX_REPORT_BYTES:
            self._intake.reject("too_large", operator_id, "mqtt")
            await self._answer(operator_id, None, "too_large", f"report over {MAX_REPORT_BYTES} bytes")
            return
        report_id = _report_id_of(message.payload)
        if operator_id not in self._operators:
            self._intake.reject("unknown_operator", operator_id, "mqtt")
            await self._answer(operator_id, report_id, "unknown_operator", f"no operator {operator_id!r} configured")
            return
        wait = self._limiter.take(operator_id, self._clock.now())  # one budget per operator, HTTP and MQTT
        if wait > 0:
            self._intake.reject("rate_limited", operator_id, "mqtt")
            await self._answer(operator_id, report_id, "rate_limited", {"retry_after_s": round(wait, 3)})
            return
        result = await self._intake.submit(operator_id, message.payload, "mqtt")
        if result.outcome is Outcome.INVALID:
            await self._answer(operator_id, report_id, "invalid", [p.model_dump() for p in result.problems])
        elif result.outcome in (Outcome.CONFLICT, Outcome.UNAVAILABLE):
            await self._answer(operator_id, report_id, result.outcome.value, result.detail)

    async def _answer(self, operator_id: str, report_id: str | None, error: str, detail: object) -> None:
        body = json.dumps({"report_id": report_id, "error": error, "detail": detail}, ensure_ascii=False)
        await self._channel.publish(self._topics.rejected(operator_id), body)


def _report_id_of(payload: bytes) -> str | None:
    """The report_id, if one can be read, so the 112 system can match the rejection to what it sent."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # hostile nesting included
        return None
    rid = data.get("report_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 64 else None
