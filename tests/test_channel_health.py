"""A channel's health as the on-call engineer reads it (`/readyz`, the channel views): the state with the latest
reason, and a change told to the listeners only when the state itself changes."""

from __future__ import annotations

from channels.base import ChannelHealth, HealthChange, HealthState


def test_a_channel_that_keeps_failing_shows_why_it_fails_now_and_tells_the_listeners_once() -> None:
    t = [100.0]
    health = ChannelHealth("sms", clock=lambda: t[0])
    told: list[HealthChange] = []
    health.on_change(told.append)
    assert (health.state, health.detail) == (HealthState.DOWN, "not connected yet")
    t[0] = 110.0
    health.set(HealthState.DOWN, "bind to 10.0.0.5:2775 failed: ESME_RINVPASWD")
    assert health.detail == "bind to 10.0.0.5:2775 failed: ESME_RINVPASWD"
    assert health.since == 100.0 and told == []  # still down since it started: no news for the listeners
    health.set(HealthState.DOWN)  # a repeat without a reason keeps the reason it has
    assert health.detail == "bind to 10.0.0.5:2775 failed: ESME_RINVPASWD"
    t[0] = 120.0
    health.set(HealthState.UP, "bound to 10.0.0.5:2775")
    assert [(c.state, c.since, c.detail) for c in told] == [(HealthState.UP, 120.0, "bound to 10.0.0.5:2775")]
