"""Publishes alert state changes to the operator's `uav/events/{operator_id}` topic."""

from __future__ import annotations

import asyncio
import logging

from channels.mqtt import MqttChannel
from relay.domain.topics import Topics
from relay.edges.api.views import event_json
from relay.engine.events import EventBus
from relay.engine.metrics import Metrics

log = logging.getLogger("relay.mqtt_events")

RETRY_S = 0.5


class MqttEventPublisher:
    def __init__(self, bus: EventBus, channel: MqttChannel, topics: Topics, metrics: Metrics) -> None:
        self._bus, self._channel, self._topics, self._metrics = bus, channel, topics, metrics

    async def run(self) -> None:
        sub = self._bus.subscribe()
        reported_drops = 0
        try:
            while True:
                event = await sub.next()
                if sub.dropped > reported_drops:
                    self._metrics.events_dropped.inc(sub.dropped - reported_drops)
                    reported_drops = sub.dropped
                if event.foreign:  # another relay's change: that relay published it to the broker everyone shares
                    continue
                body = event_json(event)
                # While the broker is away, events wait here (bounded backlog); each is tried until the
                # broker takes it, since operators follow their reports by these.
                while True:
                    await self._channel.health.wait_up()
                    result = await self._channel.publish(self._topics.events(event.operator_id), body)
                    if result.ok:
                        break
                    log.debug("event publish failed, will retry", extra={"alert_id": event.alert_id})
                    await asyncio.sleep(RETRY_S)
        finally:
            self._bus.unsubscribe(sub)
