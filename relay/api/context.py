"""What every request handler may reach, in one place (stored on the aiohttp application)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from channels.base import ChannelHealth
from relay.auth import Authenticator
from relay.clock import Clock
from relay.engine import Engine
from relay.events import EventBus
from relay.intake import Intake
from relay.metrics import Metrics
from relay.ratelimit import RateLimiter
from relay.store.base import Store


@dataclass
class ApiContext:
    public_url: str
    auth: Authenticator
    limiter: RateLimiter
    intake: Intake
    engine: Engine
    store: Store
    bus: EventBus
    metrics: Metrics
    clock: Clock
    channels: Sequence[ChannelHealth]
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)


CONTEXT = web.AppKey("context", ApiContext)
