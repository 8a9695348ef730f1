"""Records as the API shows them."""

from __future__ import annotations

import functools

from relay.domain.clock import to_datetime
from relay.domain.model import AcceptedView, AckView, AlertView, DeliveryView, EventView
from relay.domain.records import AckRecord, AlertRecord, DeliveryRecord
from relay.domain.states import DeliveryState
from relay.engine.events import StateEvent

# An attempt under way is, to a reader, still queued: the contract's states are queued/sent/delivered/failed
# (plus `cancelled`, added: a send stopped by the ack).
_SHOWN_STATE = {DeliveryState.SENDING: "queued"}


def delivery_view(d: DeliveryRecord) -> DeliveryView:
    return DeliveryView(
        desk_id=d.desk_id,
        channel=d.channel,
        target=d.target,
        state=_SHOWN_STATE.get(d.state, d.state.value),
        attempts=d.attempts,
        sent_at=to_datetime(d.sent_at) if d.sent_at else None,
        delivered_at=to_datetime(d.delivered_at) if d.delivered_at else None,
        error=d.error,
    )


def ack_view(a: AckRecord) -> AckView:
    return AckView(desk_id=a.desk_id, channel=a.channel, by=a.by, at=to_datetime(a.at), latency_s=round(a.latency_s, 3),
                   via_track=a.via_track)


def alert_view(a: AlertRecord, *, caller: bool = True) -> AlertView:
    """`caller`: with the caller's phone and name (an operator's view), else without (everyone else's)."""
    return AlertView(
        alert_id=a.alert_id,
        report_id=a.report_id,
        operator_id=a.operator_id,
        short_code=a.short_code,
        state=a.state.value,
        priority=a.priority,
        stale=a.stale,
        created_at=to_datetime(a.created_at),
        report=a.report.as_submitted(caller=caller),
        desks=list(a.desks),
        deliveries=[delivery_view(d) for d in a.deliveries],
        ack=ack_view(a.ack) if a.ack else None,
        track_id=a.track_id or a.alert_id,
    )


def accepted_view(a: AlertRecord, public_url: str) -> AcceptedView:
    return AcceptedView(
        alert_id=a.alert_id,
        report_id=a.report_id,
        short_code=a.short_code,
        state=a.state.value,
        status_url=f"{public_url}/api/v1/alerts/{a.alert_id}",
        desks=list(a.desks),
    )


@functools.lru_cache(maxsize=256)
def event_json(e: StateEvent) -> str:
    """An event serialised through its API model: what the OpenAPI document says is what is sent.

    Once per event, however many listeners (the MQTT publisher, each SSE stream) send it; the models are built
    without validating again what the relay's own records already are (`model_construct`)."""
    ack = None
    if e.ack is not None:
        a = e.ack
        ack = AckView.model_construct(desk_id=a.desk_id, channel=a.channel, by=a.by, at=to_datetime(a.at),
                                      latency_s=round(a.latency_s, 3), via_track=a.via_track)
    return EventView.model_construct(
        alert_id=e.alert_id, report_id=e.report_id, operator_id=e.operator_id, state=e.state, at=to_datetime(e.at),
        short_code=e.short_code, desks=list(e.desks), ack=ack, track_id=e.track_id,
    ).model_dump_json(exclude_none=True)
