"""Every track on a TAK map: each change of a track, as the store has it, rendered and handed to the CoT channel.

It listens to the same state events the consoles do (a report placed, an ack, a give-up, a merge or split, and
with several relays on one database the other relays' changes that the change feed passes on), so every relay's
CoT feed shows every track, whichever relay took its reports: several relays pointed at one TAK server send the
same uid with the same state, and the map shows one marker. Changes are coalesced per track (a raid's hundred
reports in a second are one read and one event for their track), and a CoT listener that is down or slow never
holds an accept or an ack: the channel keeps only the latest event per track.

Nothing is left on a map that is gone here: a track merged away gets TAK's delete, a closed one a last event that
is already stale, and the sweep looks again at every live track when its event would go stale (a track that
closes by time alone changes no alert, so no state event says so).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable

from channels.base import HealthChange, HealthState
from channels.cot import CotChannel
from relay.domain import cot
from relay.domain.clock import Clock
from relay.domain.records import TrackRecord
from relay.domain.track_summary import track_state
from relay.engine.events import EventBus, Subscription
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.store.base import Store

log = logging.getLogger("relay.cot_feed")

SWEEP_S = 1.0  # how often the live tracks are looked at for one whose event is due again
MAX_TRACKED_ALERTS = 200_000  # alerts whose track is remembered (to see one move in a merge or split)


class CotFeed:
    def __init__(
        self, *, store: Store, bus: EventBus, channel: CotChannel, clock: Clock, style: cot.CotStyle,
        public_url: str, metrics: Metrics, jobs: Jobs,
    ) -> None:
        self._store, self._bus, self._channel, self._clock = store, bus, channel, clock
        self._style, self._public_url, self._metrics, self._jobs = style, public_url.rstrip("/"), metrics, jobs
        self._dirty: dict[str, None] = {}  # track ids to render again, in the order they changed
        self._wake = asyncio.Event()
        self._due: dict[str, float] = {}  # live track id -> when to look at it again by time
        self._track_of: dict[str, str] = {}  # alert id -> the track it was last seen in
        self._types: dict[str, str] = {}  # live track id -> its uav_type (the type its delete names)
        metrics.channel_up.labels(channel.name).set(0)
        channel.health.on_change(self._on_health)
        channel.on_written = self.written

    async def run(self) -> None:
        sub = self._bus.subscribe()  # before the first read: no change falls between the two
        try:
            await self._start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen(sub), name="cot_listen")
                tg.create_task(self._render_loop(), name="cot_render")
                tg.create_task(self._sweep(), name="cot_sweep")
        finally:
            self._bus.unsubscribe(sub)

    async def _start(self) -> None:
        """The map gets every track that may still be open, as stored (a restart, or another relay's tracks)."""
        since = self._clock.now() - 2 * self._style.join_window_s
        records = await self._store.recent_tracks(since)
        for record in records:
            self._remember(record.track_id, (a.alert_id for a in record.alerts))
        # a merge whose delete this process never sent (it died first, or the listener was down) may still be on
        # the map until its own stale time: delete those again (a delete of a uid the map lacks does nothing)
        for gone in await self._store.merged_tracks(since):
            self._due[gone.track_id] = self._clock.now()
            self._types[gone.track_id] = gone.estimate.uav_type
        self.mark([r.track_id for r in records] + list(self._due))

    def mark(self, track_ids: Iterable[str]) -> None:
        for track_id in track_ids:
            self._dirty[track_id] = None
        self._wake.set()

    def _remember(self, track_id: str, alert_ids: Iterable[str]) -> None:
        for alert_id in alert_ids:
            if len(self._track_of) < MAX_TRACKED_ALERTS or alert_id in self._track_of:
                self._track_of[alert_id] = track_id

    async def _listen(self, sub: Subscription) -> None:
        while True:
            event = await sub.next()
            track_id = event.track_id or event.alert_id
            before = self._track_of.get(event.alert_id)
            self._remember(track_id, (event.alert_id,))
            # an alert that moved (a merge, a split): the track it left changed too, or is gone
            self.mark([track_id] if before in (None, track_id) else [before, track_id])

    async def _render_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._dirty)
            self._dirty.clear()
            for track_id in batch:
                await self._jobs.run(JobKind.TASK, functools.partial(self._update, track_id), task="cot",
                                     track_id=track_id)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = self._clock.now()
            due = [t for t, at in self._due.items() if at <= now]
            if due:
                self.mark(due)

    async def _update(self, track_id: str) -> None:
        record = await self._store.get_track(track_id)
        now = self._clock.now()
        if record is None:  # gone from the store (retention): nothing to show, nothing to look at again
            self._due.pop(track_id, None)
            return
        if record.merged_into is not None:
            if self._due.pop(track_id, None) is not None:  # on the map: take it off (once)
                body = cot.delete_event(track_id, now, into=record.merged_into,
                                        uav_type=self._types.pop(track_id, "unknown"))
                self._send(track_id, body, final=True)
            return
        state = track_state([a.state for a in record.alerts], bool(record.acks), record.estimate.last_seen, now,
                            self._style.join_window_s)
        if state == "closed":
            if track_id in self._due:  # on the map: a last event, stale at once (never shown: nothing to send)
                self._send(track_id, cot.track_event(await self._view(record, state), now, self._style), final=True)
            self._due.pop(track_id, None)
            self._types.pop(track_id, None)
            for a in record.alerts:
                self._track_of.pop(a.alert_id, None)
        else:
            view = await self._view(record, state)
            self._send(track_id, cot.track_event(view, now, self._style), final=False)
            self._types[track_id] = record.estimate.uav_type
            stale = cot.stale_at(view, now, self._style)
            closes = record.estimate.last_seen + self._style.join_window_s
            # again half a margin before its event goes stale, or when it may have closed if that is sooner
            checks = [stale - self._style.stale_margin_s / 2]
            if closes + SWEEP_S > now:
                checks.append(closes + SWEEP_S)
            self._due[track_id] = max(now + SWEEP_S, min(checks))

    async def _view(self, record: TrackRecord, state: str) -> cot.CotTrack:
        latest = await self._store.get_alert(record.alerts[-1].alert_id) if record.alerts else None
        report = latest.report if latest is not None else None
        place = ""
        if report is not None:
            place = report.location.district or report.location.address or ""
        return cot.CotTrack(
            estimate=record.estimate,
            state=state,
            codes=[a.short_code for a in record.alerts],
            place=place,
            notes=(report.notes or "") if report is not None else "",
            altitude_m=report.altitude_m if report is not None else None,
            link_url=f"{self._public_url}/api/v1/tracks/{record.track_id}",
        )

    def _send(self, track_id: str, body: bytes, *, final: bool) -> None:
        result = self._channel.offer(cot.uid_of(track_id), body, final=final)
        if not result.ok:
            reason = result.reason.value if result.reason is not None else "unexpected"
            self._metrics.deliveries.labels(self._channel.name, reason).inc()
            log.warning("CoT event not taken", extra={"event": "cot_refused", "track_id": track_id,
                                                      "reason": reason, "detail": result.detail})

    def written(self, age_s: float) -> None:
        """The channel put an event on the wire, `age_s` after it was handed over."""
        name = self._channel.name
        self._metrics.child(self._metrics.deliveries, name, "sent").inc()
        self._metrics.child(self._metrics.channel_send_seconds, name).observe(age_s)
        self._metrics.child(self._metrics.channel_last_success, name).set(self._clock.now())

    def _on_health(self, change: HealthChange) -> None:
        self._metrics.channel_up.labels(change.channel).set(0 if change.state is HealthState.DOWN else 1)

