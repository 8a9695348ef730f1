"""One place that turns an alert into what each channel carries. Only what the relay rendered leaves it:
never the caller's data, never fields the operator's system sent that the contract does not know."""

from __future__ import annotations

import json
from typing import Any

from relay.clock import to_datetime
from relay.store.base import AlertRecord


def public_report(alert: AlertRecord) -> dict[str, Any]:
    """The report as a dispatcher may see it: the caller's phone and name stay with the 112 centre."""
    return {k: v for k, v in alert.report.items() if k != "caller"}


def mqtt_alert(alert: AlertRecord, desk_id: str, ack_topic: str) -> bytes:
    """Payload of `uav/alerts/{desk_id}`."""
    body = {
        "alert_id": alert.alert_id,
        "short_code": alert.short_code,
        "report_id": alert.report_id,
        "priority": alert.priority,
        "created_at": to_datetime(alert.created_at).isoformat(),
        "report": public_report(alert),
        "ack_topic": ack_topic,
        "desk_id": desk_id,
        "operator_id": alert.operator_id,
        "status": alert.report.get("status", "actual"),
        "stale": alert.stale,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
