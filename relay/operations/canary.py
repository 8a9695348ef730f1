"""The canary: a marked test message over each backup channel at start and then every `interval_s`, to a
target of the on-call engineer's, so a backup channel that has rotted is found before the day it is needed."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from channels.base import Channel, Outgoing
from relay.domain.clock import Clock
from relay.engine.engine import CHANNEL_TEST_PREFIX
from relay.engine.metrics import Metrics

log = logging.getLogger("relay.canary")

CANARY_TEXT = "Канарейка uav-relay: проверка резервного канала, не тревога. Отвечать не нужно."


class Canary:
    def __init__(self, targets: Mapping[Channel, str], interval_s: float, clock: Clock, metrics: Metrics) -> None:
        self._targets, self._interval, self._clock, self._metrics = targets, interval_s, clock, metrics

    async def run(self) -> None:
        if not self._interval or not self._targets:
            return
        while True:
            started = self._clock.now()
            for channel, target in self._targets.items():
                await self._send(channel, target, started)
            await self._clock.sleep_until(started + self._interval)

    async def _send(self, channel: Channel, target: str, now: float) -> None:
        msg = Outgoing(key=f"{CHANNEL_TEST_PREFIX}canary-{int(now)}", target=target, body=CANARY_TEXT.encode(),
                       subject="[БПЛА] канарейка: проверка канала e-mail (не тревога)", expiry_s=600)
        result = await channel.send(msg)
        outcome = "ok" if result.ok else (result.reason.value if result.reason else "failed")
        self._metrics.canary.labels(channel.name, outcome).inc()
        if result.ok:
            self._metrics.channel_last_success.labels(channel.name).set(self._clock.now())
            log.info("canary sent", extra={"event": "canary_ok", "channel": channel.name})
        else:
            log.error("canary failed: the backup channel may not work when needed",
                      extra={"event": "canary_failed", "channel": channel.name, "reason": outcome,
                             "detail": result.detail})
