"""The soak's reports with tracks on (`--tracks`): callers' sightings of drones crossing the region.

Forty drones, each on a straight path at 150-190 km/h (or hovering, one in five) from a seeded start somewhere in a
300 x 300 km region; each report is one of them, seen up to a minute before it is posted, placed with a caller's
error of about a kilometre, with a rough heading now and then. The relay's tracks are then what a real raid makes of
it: a few dozen tracks that grow, not one.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.relay import report

DRONES = 40
CENTRE = (52.0, 39.0)
HALF_SIDE_KM = 150.0
KM_LAT = 1 / 111.2


@dataclass(frozen=True)
class _Drone:
    north_km: float
    east_km: float
    heading_deg: float
    speed_kmh: float
    uav_type: str


class Raid:
    def __init__(self, seed: int, start: float) -> None:
        rng = random.Random(seed * 7919 + 17)
        self._rng, self._start = rng, start  # start: perf_counter() when the posting began
        self._drones = [
            _Drone(rng.uniform(-HALF_SIDE_KM, HALF_SIDE_KM), rng.uniform(-HALF_SIDE_KM, HALF_SIDE_KM),
                   rng.uniform(0, 360), 0.0 if rng.random() < 0.2 else rng.uniform(150, 190),
                   "multirotor" if rng.random() < 0.2 else "fixed_wing")
            for _ in range(DRONES)
        ]

    def body(self, report_id: str) -> dict[str, Any]:
        rng = self._rng
        d = self._drones[rng.randrange(DRONES)]
        ago_s = rng.uniform(5, 60)
        flown_h = max(0.0, time.perf_counter() - self._start - ago_s) / 3600
        north = d.north_km + d.speed_kmh * flown_h * math.cos(math.radians(d.heading_deg)) + rng.gauss(0, 0.8)
        east = d.east_km + d.speed_kmh * flown_h * math.sin(math.radians(d.heading_deg)) + rng.gauss(0, 0.8)
        lat = CENTRE[0] + north * KM_LAT
        lon = CENTRE[1] + east * KM_LAT / math.cos(math.radians(lat))
        seen = datetime.now(UTC) - timedelta(seconds=ago_s)
        fields: dict[str, Any] = {"observed_at": seen.isoformat(), "uav_type": d.uav_type, "heading_deg": None,
                                  "location": {"lat": round(lat, 5), "lon": round(lon, 5)}}
        if d.speed_kmh and rng.random() < 0.5:
            fields["heading_deg"] = int(d.heading_deg + rng.gauss(0, 25)) % 360
            fields["speed"] = "fast"
        elif not d.speed_kmh:
            fields["movement"] = "hovering"
        body = report(report_id, **fields)
        return {k: v for k, v in body.items() if v is not None}
