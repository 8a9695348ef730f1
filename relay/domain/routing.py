"""Which desks an alert goes to: every desk, except those whose area the sighting lies outside."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.domain.geo import distance_km

if TYPE_CHECKING:
    from relay.domain.config import DeskConfig

log = logging.getLogger("relay.routing")


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
    voice: tuple[str, ...] = ()  # numbers the relay calls, in order

    @classmethod
    def from_config(cls, cfg: DeskConfig) -> Desk:
        area = Area(cfg.area.lat, cfg.area.lon, cfg.area.radius_km) if cfg.area else None
        return cls(cfg.id, cfg.name, tuple(cfg.sms), tuple(cfg.email), area, cfg.call_number, tuple(cfg.voice))


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
