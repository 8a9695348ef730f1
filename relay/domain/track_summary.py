"""A track as the contract shows it (CONTRACT.md, "Tracks"): its state, its JSON, and how it looks from a desk."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from relay.domain.clock import to_datetime
from relay.domain.states import OPEN_ALERT_STATES, AlertState
from relay.domain.tracks import TrackState, desk_view


def track_state(states: Collection[AlertState], acknowledged: bool, last_seen: float, now: float,
                join_window_s: float) -> str:
    """`open` while any alert of it is open, or no desk has acknowledged it and a report may still join it;
    `closed` once the window has passed with nothing open; else `acknowledged`."""
    if any(s in OPEN_ALERT_STATES for s in states):
        return "open"
    if now - last_seen > join_window_s:
        return "closed"
    return "acknowledged" if acknowledged else "open"


def track_json(estimate: TrackState, state: str, alert_ids: Sequence[str], reports: int = 0) -> dict[str, Any]:
    """The track JSON without `desks` (the MQTT alert payload's `track`); `reports` when `alert_ids` are only the
    latest of them."""
    speed = estimate.speed_kmh()
    return {
        "track_id": estimate.track_id,
        "state": state,
        "alert_ids": list(alert_ids),
        "reports": reports or len(alert_ids),
        "first_seen": to_datetime(estimate.first_seen).isoformat(),
        "last_seen": to_datetime(estimate.last_seen).isoformat(),
        "position": {"lat": round(estimate.lat, 5), "lon": round(estimate.lon, 5)},
        "heading_deg": estimate.heading_deg(),
        "speed_kmh": None if speed is None else round(speed, 1),
        "uav_type": estimate.uav_type,
        "count": estimate.count,
        "status": estimate.status,
        "priority": estimate.priority,
    }


def desk_json(desk_id: str, airfield: tuple[float, float] | None, estimate: TrackState, acknowledged: bool,
              now: float) -> dict[str, Any]:
    """Where the track is from the desk's airfield (its area's centre); nulls for a desk without an area."""
    view = None if airfield is None else desk_view(estimate, airfield[0], airfield[1], now)
    return {
        "desk_id": desk_id,
        "acknowledged": acknowledged,
        "distance_km": None if view is None else round(view.distance_km, 1),
        "bearing_deg": None if view is None else view.bearing_deg,
        "eta_s": None if view is None or view.eta_s is None else round(view.eta_s),
    }
