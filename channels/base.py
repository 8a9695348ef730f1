"""The plug board every delivery channel implements.

A channel delivers rendered messages to targets (a topic, a phone number, an address) and reports back what
it hears (receipts, acknowledgements). It knows nothing of what the messages are about.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FailureReason(enum.StrEnum):
    """The closed set of reasons a send can fail for; every channel maps its library's errors onto it."""

    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    AUTH = "auth"
    # The library raised something no rule of the channel foresaw; the detail names it. The send failed
    # alone: a channel translates every error, expected or not, into a result (style rule 9).
    UNEXPECTED = "unexpected"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One rendered message for one target. `key` identifies it end to end (idempotency, receipts)."""

    key: str
    target: str
    body: bytes
    subject: str = ""
    html: str = ""
    expiry_s: int | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    reason: FailureReason | None = None
    detail: str = ""
    permanent: bool = False
    provider_ref: str | None = None
    # The names a later receipt may use for this message, normalised by the channel; the relay keeps them with
    # the delivery so a receipt that comes after a restart still finds it. () when receipts carry the key.
    receipt_refs: tuple[str, ...] = ()

    @classmethod
    def accepted(cls, provider_ref: str | None = None, receipt_refs: tuple[str, ...] = ()) -> SendResult:
        return cls(ok=True, provider_ref=provider_ref, receipt_refs=receipt_refs)

    @classmethod
    def failed(cls, reason: FailureReason, detail: str, *, permanent: bool = False) -> SendResult:
        return cls(ok=False, reason=reason, detail=detail, permanent=permanent)


class InboundKind(enum.StrEnum):
    RECEIVED = "received"  # the far end shows the message (console displayed it, handset got it)
    ACK = "ack"  # a person acknowledged it


@dataclass(frozen=True, slots=True)
class Inbound:
    """Something a channel heard back: `ref` names the message it is about, `sender` who said it."""

    channel: str
    kind: InboundKind
    ref: str
    sender: str
    by: str = ""


class InboundSink(Protocol):
    async def on_inbound(self, inbound: Inbound) -> None: ...

    async def on_rejected_inbound(self, channel: str, sender: str, problem: str) -> None:
        """A reply that could not be understood; `problem` names the field and what is wrong."""
        ...


class Channel(Protocol):
    name: str
    health: ChannelHealth

    async def send(self, msg: Outgoing) -> SendResult: ...

    async def run(self) -> None:
        """Keep the channel's connection alive until cancelled."""
        ...


class HealthState(enum.StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class HealthChange:
    channel: str
    state: HealthState
    since: float
    detail: str


@dataclass
class ChannelHealth:
    """Up, degraded or down, since when and why; readers can wait for a change."""

    channel: str
    state: HealthState = HealthState.DOWN
    since: float = field(init=False)
    detail: str = "not connected yet"
    # Seconds since the epoch. The relay's clock when it has one, so `since` agrees with the times the relay
    # stores and a test's fake clock governs it too; a channel cannot import the relay's Clock, only a callable.
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False, kw_only=True)
    _listeners: list[Callable[[HealthChange], None]] = field(default_factory=list, repr=False)
    _up: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.since = self.clock()

    @property
    def is_up(self) -> bool:
        """Up or degraded: worth sending to (a failed send will say so)."""
        return self.state is not HealthState.DOWN

    def set(self, state: HealthState, detail: str = "") -> None:
        """A new state is told to the listeners; the same state again only takes the newer reason (a channel
        that keeps failing shows why it fails now, not why it first failed), and tells no one."""
        if state is self.state:
            self.detail = detail or self.detail
            return
        self.state, self.since, self.detail = state, self.clock(), detail
        if state is not HealthState.DOWN:
            self._up.set()
        else:
            self._up.clear()
        change = HealthChange(self.channel, state, self.since, detail)
        for listener in self._listeners:
            listener(change)

    def on_change(self, listener: Callable[[HealthChange], None]) -> None:
        self._listeners.append(listener)

    async def wait_up(self) -> None:
        await self._up.wait()


# ---- what providers call back: webhooks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookCall:
    """An HTTP call a provider made to the relay (a reply, a receipt), as the relay's HTTP edge took it in."""

    hook: str  # which of the receiver's webhooks was called, e.g. "sms" or "status"
    url: str  # the public URL the provider called: what it signed
    headers: Mapping[str, str]
    query: Mapping[str, str]
    form: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    status: int
    body: str = ""
    content_type: str = "text/plain"


class Unauthenticated(Exception):
    """The call did not come from the provider (no signature, or a wrong one); the message says which."""


class ReplySink(Protocol):
    """What the relay does with what providers tell it (the relay implements it; a channel only calls it)."""

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        """A person's free-text reply (an SMS); returns the text to answer with, or None for no answer."""
        ...

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        """The provider's word on the messages sent with these `Outgoing.key`s: delivered (True), never will be
        (False), or not final yet (None); `status` is the provider's own word for it."""
        ...


class Receiver(Protocol):
    """A channel's side of its provider's webhooks: authentication, parsing and the answer's format."""

    hooks: frozenset[str]

    def precheck(self, call_headers: Mapping[str, str]) -> None:
        """Raise Unauthenticated before the body is read if the headers alone show the call is not genuine."""
        ...

    async def receive(self, call: WebhookCall, sink: ReplySink) -> WebhookAnswer:
        """Check, parse, hand over to the sink, answer; Unauthenticated if the call is not the provider's."""
        ...
