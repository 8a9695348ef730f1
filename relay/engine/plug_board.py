"""The plug board as the engine sees it: each delivery channel described once, by the daemon's wiring.

A plug says what the engine and the dispatcher need to know of a channel, so that neither names one: where a
desk's messages go on it, in which form they are rendered, how many sends may run at once, and how long a
message stays worth delivering. The wiring (relay/operations/daemon.py) is the only place that says "MQTT", "SMS",
"e-mail".
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from channels.base import Channel, ChannelHealth
from relay.domain.routing import Desk


class Form(enum.StrEnum):
    # The alert as JSON for a dispatcher's console (the primary): sent as it is, even when the alert was acked
    # meanwhile (the console shows the ack state it reads back).
    CONSOLE = "console"
    # A letter: subject, plain text and HTML, with a signed link that acknowledges.
    LETTER = "letter"
    # A short text: several to one target within one scheduler pass go as one bundle.
    TEXT = "text"
    # A call that reads the alert and waits for a key: one desk's numbers one after the other, the next only when
    # a call was not answered (busy, no answer, failed).
    CALL = "call"


@dataclass(frozen=True, slots=True)
class Plug:
    channel: Channel
    form: Form
    targets: Callable[[Desk], Sequence[str]]  # a desk's addresses on this channel (a topic, phones, mailboxes)
    workers: int = 16  # sends at once; TEXT goes through the bundler instead
    expiry_s: int | None = None  # after this a message is not worth delivering (MQTT expiry, SMS validity)

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def health(self) -> ChannelHealth:
        return self.channel.health

    @property
    def bundled(self) -> bool:
        return self.form is Form.TEXT
