"""What every request handler may reach, in one place (stored on the aiohttp application)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from channels.base import ChannelHealth, Receiver, ReplySink
from relay.domain.clock import Clock
from relay.domain.config import CapSection, ConsolesSection
from relay.domain.gazetteer import Gazetteer
from relay.domain.render import Renderer
from relay.edges.auth import Authenticator
from relay.edges.ratelimit import RateLimiter
from relay.engine.ack_links import AckLinkSigner
from relay.engine.engine import Engine
from relay.engine.events import EventBus
from relay.engine.intake import Intake
from relay.engine.metrics import Metrics
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
    renderer: Renderer
    ack_links: AckLinkSigner
    receivers: Mapping[str, Receiver] = field(default_factory=dict)  # by provider, as in /webhooks/{provider}/...
    replies: ReplySink | None = None
    consoles: ConsolesSection = field(default_factory=ConsolesSection)
    cap: CapSection = field(default_factory=CapSection)
    places: Gazetteer = field(default_factory=lambda: Gazetteer(()))
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)


CONTEXT = web.AppKey("context", ApiContext)
