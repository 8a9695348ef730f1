"""Places a caller can name when they cannot give coordinates: a CSV of settlements (`consoles.gazetteer`).

A 112 caller says "over Сенцово"; the operator types a few letters and the place field fills the coordinates, marked
approximate with the entry's `accuracy_m` (a village is a kilometre or two across). The file is the site's: one
region's list from its own sources; `config/gazetteer-lipetsk.csv` is a small sample for the demo.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from relay.domain.text import normalise

MAX_PLACES = 200_000
DEFAULT_ACCURACY_M = 2000.0  # a settlement's extent: where in it the caller stood is not known
COLUMNS = ("name", "district", "lat", "lon")


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    district: str
    lat: float
    lon: float
    accuracy_m: float


def _key(text: str) -> str:
    # what is compared: case and ё/е do not matter to someone typing fast
    return normalise(text).casefold().replace("ё", "е")


class Gazetteer:
    def __init__(self, places: Iterable[Place]) -> None:
        self._places = sorted(places, key=lambda p: (_key(p.name), _key(p.district)))
        self._keys = [(_key(p.name), p) for p in self._places]

    def __len__(self) -> int:
        return len(self._places)

    @classmethod
    def load(cls, path: str | Path) -> Gazetteer:
        """ValueError naming the line and the problem for a file that cannot be used."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        return cls(parse(text, str(path)))

    def search(self, query: str, limit: int = 10) -> list[Place]:
        """Names starting with the query first, then names with a word starting with it, then any that hold it."""
        q = _key(query)
        if not q:
            return []
        starts, words, inside = [], [], []
        for key, place in self._keys:
            if key.startswith(q):
                starts.append(place)
                if len(starts) >= limit:
                    break
            elif f" {q}" in key or f"-{q}" in key:
                words.append(place)
            elif q in key:
                inside.append(place)
        return (starts + words + inside)[:limit]


def parse(text: str, where: str = "gazetteer") -> list[Place]:
    rows = csv.reader(io.StringIO(text))
    places: list[Place] = []
    header = next(rows, None)
    if header is None:
        raise ValueError(f"{where}: empty (expected a header: name,district,lat,lon[,accuracy_m])")
    names = [h.strip().casefold() for h in header]
    if names[:4] != list(COLUMNS):
        raise ValueError(f"{where}: line 1: the header must start name,district,lat,lon (found {','.join(names)})")
    for n, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(places) >= MAX_PLACES:
            raise ValueError(f"{where}: more than {MAX_PLACES} places")
        places.append(_place(row, f"{where}: line {n}"))
    return places


def _place(row: list[str], where: str) -> Place:
    if len(row) < 4:
        raise ValueError(f"{where}: {len(row)} columns, expected name,district,lat,lon")
    name, district = normalise(row[0]), normalise(row[1])
    if not name or len(name) > 200 or len(district) > 100:
        raise ValueError(f"{where}: name: 1..200 characters, district: at most 100")
    lat, lon = _number(row[2], "lat", where), _number(row[3], "lon", where)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{where}: lat/lon out of range ({lat}, {lon})")
    accuracy = _number(row[4], "accuracy_m", where) if len(row) > 4 and row[4].strip() else DEFAULT_ACCURACY_M
    if not 0 < accuracy <= 1_000_000:
        raise ValueError(f"{where}: accuracy_m must be above 0 and at most 1000000")
    return Place(name, district, lat, lon, accuracy)


def _number(text: str, field: str, where: str) -> float:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        raise ValueError(f"{where}: {field} is not a number ({text.strip()[:20]!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {field} is not a finite number")
    return value
