"""Which desks an alert goes to: every desk, except those whose area the sighting lies outside."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports render, which shows tracks, which measure distances here
    from relay.domain.config import DeskConfig

log = logging.getLogger("relay.routing")

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class Area:
    lat: float
    lon: float
    radius_km: float

    def contains(self, lat: float, lon: float) -> bool:
        return distance_km(self.lat, self.lon, lat, lon) <= self.radius_km


@dataclass(frozen=True, slots=True)
class Desk:
    id: str
    name: str
    sms: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    area: Area | None = None
    phone: str = ""  # for people to call (the operator's console shows it when nobody acknowledges)

    @classmethod
    def from_config(cls, cfg: DeskConfig) -> Desk:
        area = Area(cfg.area.lat, cfg.area.lon, cfg.area.radius_km) if cfg.area else None
        return cls(cfg.id, cfg.name, tuple(cfg.sms), tuple(cfg.email), area, cfg.call_number)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def route(desks: Sequence[Desk], lat: float, lon: float) -> list[Desk]:
    """Desks without an area take every report; a desk with one, those inside it.

    A sighting outside every area still goes to every desk: a warning that reaches nobody is the one
    outcome this relay must never produce.
    """
    chosen = [d for d in desks if d.area is None or d.area.contains(lat, lon)]
    if not chosen and desks:
        log.warning(
            "sighting outside every desk's area: sent to all desks",
            extra={"event": "routing_fallback", "lat": lat, "lon": lon},
        )
        return list(desks)
    return chosen
