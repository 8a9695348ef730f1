"""The tracks a new report may join, in memory for the correlator; the store holds them durably.

A report is placed the moment it is accepted, before its commit: reports of one raid arrive within milliseconds
of each other and the next one must see the track the last one joined. A report the store then does not take (a
replay, a conflict, a store error) is taken out again and its track rebuilt from the reports that remain.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.domain import tracks
from relay.domain.records import AckRecord, TrackContext, TrackRecord
from relay.domain.tracks import Sighting, TrackParams, TrackState

SWEEP_EVERY_S = 10.0
# A console's payload names at most this many of a track's alerts, the latest (`reports` is the whole count):
# a flood of calls about one place must not grow every message without bound (a hundred ids made each update
# 3 KB longer and cost a burst 0.1-0.2 ms of relay CPU per report). The API lists them all.
PAYLOAD_ALERT_IDS = 20


@dataclass
class _Track:
    estimate: TrackState
    opened_at: float
    sightings: dict[str, Sighting] = field(default_factory=dict)  # by alert_id, in the order they joined
    desks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # each alert's desks, by alert_id
    acks: dict[str, AckRecord] = field(default_factory=dict)  # each desk's first ack of the track
    seen_by: set[str] = field(default_factory=set)  # every desk any of its alerts went to

    def desks_before(self, alert_id: str) -> frozenset[str]:
        had: set[str] = set()
        for other, desks in self.desks.items():
            if other == alert_id:
                break
            had.update(desks)
        return frozenset(had)


@dataclass(frozen=True, slots=True)
class Placement:
    track_id: str
    estimate: TrackState  # with the report in it
    opened_at: float
    new: bool
    reports: int
    update_for: frozenset[str]  # desks that already had an alert of this track
    acks: tuple[AckRecord, ...]  # the desks' acks of the track so far

    alert_ids: tuple[str, ...] = ()

    def context(self) -> TrackContext:
        return TrackContext(self.estimate, self.alert_ids, bool(self.acks), self.update_for, reports=self.reports)


class TrackBook:
    def __init__(self, params: TrackParams, *, enabled: bool) -> None:
        self._params, self._enabled = params, enabled
        self._tracks: dict[str, _Track] = {}
        self._next_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def params(self) -> TrackParams:
        return self._params

    def load(self, records: Iterable[TrackRecord]) -> None:
        for r in records:
            t = _Track(r.estimate, r.opened_at, acks={a.desk_id: a for a in r.acks})
            for a in r.alerts:
                t.sightings[a.alert_id] = a.sighting
                t.desks[a.alert_id] = a.desks
                t.seen_by.update(a.desks)
            self._tracks[r.track_id] = t

    def place(self, alert_id: str, sighting: Sighting, desks: tuple[str, ...], now: float) -> Placement:
        """Which track the report joins (a new one, named after its alert, if none), applied at once."""
        if now >= self._next_sweep:
            self._forget_old(now)
            self._next_sweep = now + SWEEP_EVERY_S
        joined: _Track | None = None
        if self._enabled:
            decision = tracks.assign(sighting, [t.estimate for t in self._tracks.values()], now, self._params)
            joined = self._tracks.get(decision.track_id) if decision.track_id is not None else None
        if joined is None:
            track = _Track(tracks.start(sighting, alert_id, params=self._params), now)
            if self._enabled:  # off: every alert is its own track, and none is kept for others to join
                self._tracks[alert_id] = track
        else:
            track = joined
            track.estimate = tracks.join(track.estimate, sighting, params=self._params)
        before = frozenset(track.seen_by)
        track.sightings[alert_id] = sighting
        track.desks[alert_id] = desks
        track.seen_by.update(desks)
        return Placement(track.estimate.track_id, track.estimate, track.opened_at, joined is None,
                         len(track.sightings), before, tuple(track.acks.values()), _latest(track.sightings))

    def context(self, track_id: str, alert_id: str) -> TrackContext | None:
        """What a console's payload says of the track, for an alert sent again (a retry, the primary back)."""
        track = self._tracks.get(track_id)
        if track is None:
            return None
        return TrackContext(track.estimate, _latest(track.sightings), bool(track.acks),
                            track.desks_before(alert_id), reports=len(track.sightings))

    def undo(self, alert_id: str, track_id: str) -> None:
        """The report was not stored after all: its track is as if it had never come."""
        track = self._tracks.get(track_id)
        if track is None or track.sightings.pop(alert_id, None) is None:
            return
        track.desks.pop(alert_id, None)
        track.seen_by = {d for desks in track.desks.values() for d in desks}
        if not track.sightings:
            del self._tracks[track_id]
        else:
            track.estimate = tracks.rebuild(track_id, list(track.sightings.values()), params=self._params)

    def acknowledged(self, track_id: str, ack: AckRecord) -> None:
        track = self._tracks.get(track_id)
        if track is not None:
            track.acks.setdefault(ack.desk_id, ack)

    def replace(self, record: TrackRecord | None, *, gone: str | None = None) -> None:
        """After a dispatcher's merge or split: the track as stored now (`gone`: a track merged away)."""
        if gone is not None:
            self._tracks.pop(gone, None)
        if record is not None and self._enabled:
            self.load([record])

    def _forget_old(self, now: float) -> None:
        # a report observed up to join_window_s before a track's latest may still join it, and callers report
        # minutes after they saw it: a track is kept twice the window
        horizon = now - 2 * self._params.join_window_s
        for track_id in [k for k, t in self._tracks.items() if t.estimate.last_seen < horizon]:
            del self._tracks[track_id]


def _latest(sightings: dict[str, Sighting]) -> tuple[str, ...]:
    return tuple(itertools.islice(reversed(sightings), PAYLOAD_ALERT_IDS))[::-1]
