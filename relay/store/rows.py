"""The rows both stores keep, named and read alike: the column lists and what turns a row into a record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relay.domain.clock import to_datetime
from relay.domain.model import Priority, stored_report
from relay.domain.records import AckRecord, AlertRecord, AuthFailureTally, DeliveryRecord, EventRecord
from relay.domain.states import AlertState, DeliveryState

WEB_CHANNEL = "web"  # a desk's browser console: not a channel the relay sends on, one that says what it shows
ALERT_COLS = (
    "alert_id, report_id, operator_id, short_code, state, priority, stale, created_at, report_json, "
    "desks_json, next_action_at, backup_rounds, last_backup_at, track_id"
)
DELIVERY_COLS = (
    "delivery_id, alert_id, desk_id, channel, target, state, attempts, sent_at, delivered_at, error, permanent, "
    "attempted_at"
)
ACK_COLS = "alert_id, desk_id, channel, by, at, latency_s, source, via_track"
AUDIT_KINDS = ("acknowledged", "duplicate_ack", "ack_refused", "webhook_refused", "link_refused", "track_merged",
               "track_split")
AUTH_FAILURE_BUCKET_S = 3600.0


def ack_detail(ack: AckRecord) -> dict[str, Any]:
    return {"desk_id": ack.desk_id, "channel": ack.channel, "by": ack.by, "from": ack.source}


def ack_json(ack: AckRecord) -> dict[str, Any]:
    return {"desk_id": ack.desk_id, "channel": ack.channel, "by": ack.by, "at": ack.at, "source": ack.source}


def acks_from_json(text: str | None) -> tuple[AckRecord, ...]:
    return tuple(
        AckRecord("", d["desk_id"], d["channel"], d["by"], d["at"], 0.0, d.get("source", ""), via_track=True)
        for d in sorted(json.loads(text or "{}").values(), key=lambda d: d["at"])
    )


def tally_event(t: AuthFailureTally) -> EventRecord:
    return EventRecord("", t.last_at, t.kind, {
        "endpoint": t.endpoint, "from": t.source, "count": t.count, "reason": t.reason,
        "first_at": to_datetime(t.first_at).isoformat(), "last_at": to_datetime(t.last_at).isoformat(),
    })


def delivery_row(row: Sequence[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        delivery_id=row[0], alert_id=row[1], desk_id=row[2], channel=row[3], target=row[4],
        state=DeliveryState(row[5]), attempts=row[6], sent_at=row[7], delivered_at=row[8], error=row[9],
        permanent=bool(row[10]), attempted_at=row[11],
    )


def alert_row(row: Sequence[Any], deliveries: tuple[DeliveryRecord, ...], ack: AckRecord | None) -> AlertRecord:
    return AlertRecord(
        alert_id=row[0], report_id=row[1], operator_id=row[2], short_code=row[3], state=AlertState(row[4]),
        priority=Priority(row[5]), stale=bool(row[6]), created_at=row[7], report=stored_report(row[8]),
        desks=tuple(json.loads(row[9])), deliveries=deliveries, ack=ack, next_action_at=row[10],
        backup_rounds=row[11], last_backup_at=row[12], track_id=row[13],
    )


def ack_row(row: Sequence[Any]) -> AckRecord:
    return AckRecord(alert_id=row[0], desk_id=row[1], channel=row[2], by=row[3], at=row[4], latency_s=row[5],
                     source=row[6], via_track=bool(row[7]))


def latest_send(rows: Sequence[Sequence[Any]]) -> list[str]:
    """Of (delivery_id, at) rows recorded under one receipt ref, the deliveries of the latest send: an SMS
    bundle is several deliveries sent at one moment; an SMSC that reuses an id days later names the newer one."""
    newest = max(float(r[1]) for r in rows)
    return sorted(str(r[0]) for r in rows if float(r[1]) == newest)
