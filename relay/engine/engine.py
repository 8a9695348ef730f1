"""The engine: takes accepted reports, sends them out, follows the escalation plan, hears receipts and acks.

Everything it decides is stored before it acts on it (the alert and its deliveries are committed before the
first publish; timers are due times in the store), so a restart picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NoReturn

from channels.base import HealthChange, HealthState, Inbound, InboundKind
from relay.domain import escalation, short_code, tracks, transitions
from relay.domain.clock import Clock, sleep_until_or
from relay.domain.escalation import (
    VOICE,
    BackupReason,
    GiveUp,
    Policy,
    RetryBackups,
    SendBackups,
    SendCalls,
    SendPrimary,
    TrackChain,
    calls_at,
)
from relay.domain.ids import new_id
from relay.domain.model import Priority, Report
from relay.domain.records import (
    Accepted,
    AcceptOutcome,
    AckRecord,
    AckResult,
    AlertRecord,
    DeliveryRecord,
    EventRecord,
    NewAlert,
    OpenInTrack,
    Schedule,
    TrackContext,
    TrackRecord,
)
from relay.domain.routing import Desk, route
from relay.domain.states import AlertState, DeliveryState
from relay.domain.text import normalise
from relay.domain.topics import Topics
from relay.domain.track_summary import track_state
from relay.domain.tracks import Sighting
from relay.engine.dispatch import Dispatcher
from relay.engine.events import EventBus, StateEvent
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.engine.plug_board import Plug
from relay.engine.track_book import Placement, TrackBook
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.engine")

SCHEDULER_BATCH = 500
STEPS_AT_ONCE = 64  # alerts' escalation steps in flight together (their commits share fsyncs)
SCHEDULER_PAUSE_S = 1.0  # after a store error or a failed step, before the scheduler looks again
SHARED_LOOK_S = 1.0  # with several relays on one store, the scheduler looks at least this often
CHANNEL_TEST_PREFIX = "test-"  # ids of `relay test-channels` messages; no alert has one
MAX_BY = 100  # an ack's `by`, whichever channel it came from

class AckRefused(Exception):
    """An acknowledgement that must not count; the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TrackRefused(Exception):
    """A dispatcher's track change that cannot be made; `status` is the HTTP answer that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        desks: Sequence[Desk],
        policy: Policy,
        clock: Clock,
        bus: EventBus,
        metrics: Metrics,
        topics: Topics,
        primary: Plug,
        backups: Sequence[Plug] = (),
        dispatcher: Dispatcher,
        jobs: Jobs,
        poke: asyncio.Event,
        book: TrackBook,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._desks = list(desks)
        self._desk_by_id = {d.id: d for d in desks}
        self._policy = policy
        self._clock = clock
        self._bus = bus
        self._metrics = metrics
        self._topics = topics
        self._primary = primary
        self._backups = list(backups)
        self._dispatcher = dispatcher
        self._book = book
        self._pass_tracks: dict[str, _Chain] = {}  # read once per scheduler pass (see _in_track)
        self._poke = poke  # set by whoever stored an earlier due time (a failed send): the scheduler looks again
        self._wake_at = math.inf  # when the scheduler will look next, unless poked
        self._primary_back = True  # at start, look for deliveries a previous run left unsent
        self._recover_sending = True  # at start, resend what a previous run marked as being sent
        self.open_alerts = 0
        for channel in (primary, *backups):
            channel.health.on_change(self._on_channel_health)

    # ---- intake --------------------------------------------------------------------------------------

    async def accept(self, operator_id: str, report: Report, source: str) -> Accepted:
        """Store the report as a new alert (or find its replay/conflict); sending starts after the commit."""
        now = self._clock.now()
        alert_id = new_id(now)
        desks = route(self._desks, report.location.lat, report.location.lon)
        placed = self._book.place(alert_id, Sighting.of(report), tuple(d.id for d in desks), now)
        return await self._accept(operator_id, report, source, now, alert_id, desks, placed)

    async def _accept(
        self, operator_id: str, report: Report, source: str, now: float, alert_id: str, desks: list[Desk],
        placed: Placement,
    ) -> Accepted:
        p = self._primary
        deliveries = tuple(
            DeliveryRecord(f"{alert_id}.{d.id}.{p.name}", alert_id, d.id, p.name, target)
            for d in desks for target in p.targets(d)[:1]  # one console per desk
        )
        fields: dict[str, Any] = {
            "alert_id": alert_id,
            "report_id": report.report_id,
            "operator_id": operator_id,
            "short_code": short_code.new_code(),
            "state": AlertState.PENDING,
            "priority": report.priority,
            "stale": report.is_stale(datetime.fromtimestamp(now, report.observed_at.tzinfo)),
            "created_at": now,
            "report": report,
            "desks": tuple(d.id for d in desks),
            "deliveries": deliveries,
            "track_id": placed.track_id,
            "track": placed.context(),
        }
        alert = transitions.covered_by_track(AlertRecord(**fields), placed.acks)
        if alert.ack is None:
            chain = TrackChain(lead=placed.new or report.priority == Priority.FLASH, opened_at=placed.opened_at)
            first = escalation.plan(alert, self._policy, now, primary_up=self._primary.health.is_up, track=chain)
            schedule = escalation.schedule_at_accept(first, alert)
            alert = AlertRecord(  # built again rather than dataclasses.replace'd: that is several times dearer
                **fields,
                next_action_at=schedule.next_action_at,
                backup_rounds=schedule.backup_rounds,
                last_backup_at=schedule.last_backup_at,
            )
            actions = first.actions
        else:  # its track is acknowledged: it reaches the console as an update, and starts no backups
            actions = (SendPrimary(tuple(d.delivery_id for d in deliveries)),)
        try:
            accepted = await self._store.accept(NewAlert(alert, content_digest(report), source, placed.estimate))
        except BaseException:
            self._book.undo(alert_id, placed.track_id)
            raise
        if accepted.outcome is not AcceptOutcome.CREATED:
            self._book.undo(alert_id, placed.track_id)
        else:
            alert = accepted.alert
            self.open_alerts += alert.ack is None
            self._metrics.child(self._metrics.reports, source).inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "report accepted",
                    extra={"event": "report_accepted", "alert_id": alert.alert_id, "report_id": alert.report_id,
                           "operator_id": operator_id, "source": source, "desks": list(alert.desks),
                           "short_code": alert.short_code, "priority": alert.priority, "stale": alert.stale,
                           "track_id": alert.track_id, "track_reports": placed.reports},
                )
            self._bus.publish(StateEvent.of(alert, now))
            self._due(alert.next_action_at)
            for action in actions:
                if isinstance(action, SendPrimary):
                    self._dispatcher.submit(alert, _chosen(alert, action.delivery_ids))
        return accepted

    # ---- receipts and acks ---------------------------------------------------------------------------

    async def on_inbound(self, inbound: Inbound) -> None:
        """A console's `received` or `ack` (its desk is the topic it came on: the broker's ACL says who may)."""
        if inbound.ref.startswith(CHANNEL_TEST_PREFIX):  # a console answering `relay test-channels`
            log.info("channel test reply", extra={"event": "channel_test_reply", "desk_id": inbound.sender,
                                                  "kind": inbound.kind.value})
            return
        await self._jobs.run(JobKind.INBOUND, lambda: self._inbound(inbound), alert_id=inbound.ref[:64],
                             channel=inbound.channel, sender=inbound.sender[:64])

    async def _inbound(self, inbound: Inbound) -> None:
        try:
            if inbound.kind is InboundKind.RECEIVED:
                await self.receipt(inbound.ref, inbound.sender, inbound.channel)
            else:
                source = f"{self._topics.acks(inbound.sender)}"
                await self.acknowledge(inbound.ref, inbound.sender, inbound.channel, inbound.by, source)
        except AckRefused:
            pass  # counted, logged and written down where it was refused

    def count_refused(self, channel: str, reason: str) -> None:
        self._metrics.acks_rejected.labels(channel, reason).inc()

    async def on_rejected_inbound(self, channel: str, sender: str, problem: str) -> None:
        self._metrics.acks_rejected.labels(channel, "malformed").inc()
        log.warning(
            "malformed reply ignored",
            extra={"event": "reply_malformed", "channel": channel, "sender": sender, "problem": problem},
        )

    async def receipt(self, alert_id: str, desk_id: str, channel: str) -> None:
        now = self._clock.now()
        result = await self._store.mark_delivered(alert_id, desk_id, channel, now)
        if result is None:
            self._metrics.acks_rejected.labels(channel, "unknown").inc()
            log.warning("receipt for no delivery of ours", extra={"event": "receipt_refused", "alert_id": alert_id,
                                                                  "desk_id": desk_id, "channel": channel})
            return
        self._metrics.deliveries.labels(channel, "delivered").inc()
        log.info(
            "delivery confirmed",
            extra={"event": "delivery_delivered", "alert_id": alert_id, "desk_id": desk_id, "channel": channel},
        )
        if result.newly_delivered:
            self._bus.publish(StateEvent.of(result.alert, now))

    async def shown(self, alert_id: str, desk_id: str) -> None:
        """A desk's browser console shows the alert: a `web` delivery, delivered, for that desk."""
        now = self._clock.now()
        result = await self._store.mark_shown(alert_id, desk_id, now)
        if result is None or not result.newly_shown:
            return
        self._metrics.deliveries.labels("web", "delivered").inc()
        log.info("shown on the web console", extra={"event": "delivery_delivered", "alert_id": alert_id,
                                                    "desk_id": desk_id, "channel": "web"})
        if result.newly_delivered:
            self._bus.publish(StateEvent.of(result.alert, now))

    async def delivery_report(
        self, delivery_id: str, channel: str, *, delivered: bool, error: str | None = None
    ) -> None:
        """A provider's receipt for one delivery (an SMS status callback)."""
        now = self._clock.now()
        result = await self._store.delivery_report(delivery_id, now, delivered=delivered, error=error)
        if result is None:
            return
        self._metrics.deliveries.labels(channel, "delivered" if delivered else "undelivered").inc()
        log.log(
            logging.INFO if delivered else logging.WARNING,
            "delivery confirmed" if delivered else "delivery failed after sending",
            extra={"event": "delivery_delivered" if delivered else "delivery_undelivered",
                   "alert_id": result.alert.alert_id, "delivery_id": delivery_id, "error": error},
        )
        if result.newly_delivered:
            self._bus.publish(StateEvent.of(result.alert, now))

    async def acknowledge(
        self, alert_id: str, desk_id: str, channel: str, by: str, source: str = ""
    ) -> AckResult:
        """Record a person's ack from a desk the alert was sent to; the first one closes the alert.

        `source` says where it came from (a remote address, a phone, a topic) for the audit trail.
        """
        by = normalise(by)[:MAX_BY]  # every channel's name text, cleaned in one place before it is stored
        alert = await self._store.get_alert(alert_id)
        if alert is None:
            await self.refuse(alert_id, channel, "unknown", source, f"no alert {alert_id}", known=False)
        elif desk_id not in alert.desks:
            await self.refuse(alert_id, channel, "not_routed", source,
                              f"alert {alert_id} was not sent to desk {desk_id}")
        assert alert is not None
        now = self._clock.now()
        latency = max(0.0, now - alert.created_at)
        result = await self._store.record_ack(AckRecord(alert_id, desk_id, channel, by, now, latency, source))
        if result is None:
            raise AckRefused("unknown", f"no alert {alert_id}")
        if not result.first:
            log.info(
                "duplicate acknowledgement recorded",
                extra={"event": "ack_duplicate", "alert_id": alert_id, "desk_id": desk_id, "channel": channel,
                       "from": source},
            )
            return result
        self._closed_by_ack(result)
        self._metrics.ack_seconds.labels(channel).observe(latency)
        log.info(
            "alert acknowledged",
            extra={"event": "ack", "alert_id": alert_id, "desk_id": desk_id, "channel": channel, "by": by,
                   "from": source, "latency_s": round(latency, 3), "cancelled": result.cancelled},
        )
        for covered in result.track:
            self._bus.publish(StateEvent.of(covered.alert, now))
        self._bus.publish(StateEvent.of(result.alert, now))
        return result

    def _closed_by_ack(self, result: AckResult) -> None:
        self.open_alerts -= result.was_open + sum(r.was_open for r in result.track)
        if result.alert.ack is not None:
            self._book.acknowledged(result.alert.track_id, result.alert.ack)

    async def ack_track(self, track_id: str, desk_id: str, by: str, source: str) -> list[AckResult]:
        """A desk acknowledges a whole track (POST /api/v1/tracks/{id}/ack): each of its alerts routed to that desk
        and not yet acknowledged is, via the track; later ones will be too."""
        now = self._clock.now()
        ack = AckRecord("", desk_id, "web", normalise(by)[:MAX_BY], now, 0.0, source, via_track=True)
        results = await self._store.ack_track(track_id, ack)
        self._book.acknowledged(track_id, ack)
        for r in results:
            self.open_alerts -= r.was_open
            self._metrics.ack_seconds.labels("web").observe(r.alert.ack.latency_s if r.alert.ack else 0.0)
            self._bus.publish(StateEvent.of(r.alert, now))
        log.info("track acknowledged", extra={"event": "track_ack", "track_id": track_id, "desk_id": desk_id,
                                              "by": ack.by, "from": source, "alerts": len(results)})
        return results

    # ---- a dispatcher's corrections (kept: the correlator only ever places new reports) -----------------------

    @property
    def tracks(self) -> TrackBook:
        return self._book

    @property
    def policy(self) -> Policy:
        return self._policy

    def desk(self, desk_id: str) -> Desk | None:
        return self._desk_by_id.get(desk_id)

    @property
    def desks(self) -> Sequence[Desk]:
        return self._desks

    async def merge_tracks(self, track_id: str, into: str, desk_id: str, by: str) -> TrackRecord:
        """The alerts of `track_id` move into `into` (one object after all); the history of each says who did it."""
        if track_id == into:
            raise TrackRefused(409, "a track cannot be merged into itself")
        src, dst = await self._store.get_track(track_id), await self._store.get_track(into)
        for tid, t in ((track_id, src), (into, dst)):
            if t is None:
                raise TrackRefused(404, f"no track {tid}")
            if t.merged_into is not None:
                raise TrackRefused(409, f"track {tid} was merged into {t.merged_into}")
        assert src is not None
        assert dst is not None
        if not all(any(desk_id in a.desks for a in t.alerts) for t in (src, dst)):
            raise TrackRefused(403, f"desk {desk_id} was not sent both tracks")
        now = self._clock.now()
        if self._closed(dst, now):
            raise TrackRefused(409, f"track {into} is closed")
        alerts = sorted((*dst.alerts, *src.alerts), key=lambda a: a.alert_id)
        estimate = tracks.rebuild(into, [a.sighting for a in alerts], params=self._book.params)
        await self._store.merge_tracks(track_id, into, estimate, desk_id, normalise(by)[:MAX_BY], now)
        merged = await self._store.get_track(into)
        assert merged is not None
        self._book.replace(merged, gone=track_id)
        log.info("tracks merged", extra={"event": "track_merged", "from": track_id, "into": into, "desk_id": desk_id})
        await self._tell_operators([a.alert_id for a in src.alerts], now)
        return merged

    async def split_alert(self, alert_id: str, desk_id: str, by: str) -> TrackRecord:
        """The alert leaves its track and starts a new one (another object after all)."""
        alert = await self._store.get_alert(alert_id)
        if alert is None:
            raise TrackRefused(404, f"no alert {alert_id}")
        if desk_id not in alert.desks:
            raise TrackRefused(403, f"alert {alert_id} was not sent to desk {desk_id}")
        track = await self._store.get_track(alert.track_id or alert_id)
        if track is None or len(track.alerts) < 2:
            raise TrackRefused(409, f"alert {alert_id} is alone in its track already")
        now = self._clock.now()
        rest = [a.sighting for a in track.alerts if a.alert_id != alert_id]
        old = tracks.rebuild(track.track_id, rest, params=self._book.params)
        new = tracks.start(Sighting.of(alert.report), new_id(now), params=self._book.params)
        await self._store.split_alert(alert_id, old, new, desk_id, normalise(by)[:MAX_BY], now)
        split_off = await self._store.get_track(new.track_id)
        self._book.replace(await self._store.get_track(track.track_id))
        self._book.replace(split_off)
        assert split_off is not None
        log.info("alert split from its track", extra={"event": "track_split", "alert_id": alert_id,
                                                       "from": track.track_id, "into": new.track_id})
        await self._tell_operators([alert_id], now)
        return split_off

    def _closed(self, track: TrackRecord, now: float) -> bool:
        window = self._book.params.join_window_s
        return track_state([a.state for a in track.alerts], bool(track.acks), track.estimate.last_seen, now,
                           window) == "closed"

    async def _tell_operators(self, alert_ids: Sequence[str], now: float) -> None:
        for alert_id in alert_ids:  # their track changed: the operators' views say which track each is in now
            moved = await self._store.get_alert(alert_id)
            if moved is not None:
                self._bus.publish(StateEvent.of(moved, now))

    async def refuse(
        self, alert_id: str, channel: str, reason: str, source: str, detail: str, *, known: bool = True
    ) -> NoReturn:
        """An ack that must not count: counted, logged, written to the alert's history (the audit trail), raised."""
        self._metrics.acks_rejected.labels(channel, reason).inc()
        log.warning("acknowledgement refused", extra={"event": "ack_refused", "alert_id": alert_id,
                                                      "channel": channel, "reason": reason, "from": source,
                                                      "detail": detail})
        await self._store.add_event(EventRecord(alert_id if known else "", self._clock.now(), "ack_refused", {
            "channel": channel, "reason": reason, "from": source, "detail": detail,
            **({} if known else {"alert_id": alert_id[:64]}),
        }))
        raise AckRefused(reason, detail)

    # ---- running -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The scheduler, until cancelled (the daemon runs the dispatcher beside it)."""
        self.open_alerts = await self._store.count_open()
        await self._scheduler()

    async def load_tracks(self) -> None:
        """Before intake opens: the tracks a new report may join, as stored (a restart keeps every track)."""
        if self._book.enabled:
            since = self._clock.now() - 2 * self._book.params.join_window_s
            self._book.load(await self._store.recent_tracks(since))

    def _on_channel_health(self, change: HealthChange) -> None:
        up = change.state is not HealthState.DOWN
        self._metrics.channel_up.labels(change.channel).set(1 if up else 0)
        log.log(
            logging.INFO if up else logging.WARNING,
            f"channel {change.state.value}",
            extra={"event": f"channel_{change.state.value}", "channel": change.channel, "detail": change.detail},
        )
        if change.channel == self._primary.name and change.state is HealthState.UP:
            self._primary_back = True
            self._poke.set()

    async def _scheduler(self) -> None:
        """Wakes at the earliest stored due time (or when poked) and follows each due alert's plan."""
        while True:
            self._poke.clear()
            self._wake_at = math.inf  # while it runs, any newly stored due time pokes it again
            try:
                with self._dispatcher.together():  # what falls due in one pass leaves in one go
                    all_done = await self._run_due()
                now = self._clock.now()
                next_at = await self._store.next_due_at(now)
                if self._store.shared:
                    # another relay may have made one of this relay's alerts due (a failed send it heard of):
                    # nothing wakes this one for it but a look
                    next_at = min(next_at if next_at is not None else math.inf, now + SHARED_LOOK_S)
                if not all_done:  # a step that failed is not tried again in a tight loop
                    next_at = max(next_at or 0.0, self._clock.now() + SCHEDULER_PAUSE_S)
            except StoreUnavailable as exc:
                log.error("scheduler cannot read the store", extra={"event": "scheduler_store", "error": str(exc)})
                next_at = self._clock.now() + SCHEDULER_PAUSE_S
            except Exception as exc:  # noqa: BLE001 - counted and logged by jobs.failed; the scheduler goes on
                self._jobs.failed(JobKind.SCHEDULED, exc, stage="scheduler pass")
                next_at = self._clock.now() + SCHEDULER_PAUSE_S
            self._wake_at = math.inf if next_at is None else next_at
            await sleep_until_or(self._clock, next_at, self._poke)

    def took_over(self, alerts: Sequence[AlertRecord]) -> None:
        """Alerts of a relay that died, now this relay's (Store.take_over): the sends it left marked sending go out
        again under their own delivery ids (a console or a phone may get one twice, recognisably); the scheduler
        looks at once at the rest (those never sent were made due now)."""
        now = self._clock.now()
        for alert in alerts:
            sending = [d for d in alert.deliveries if d.state is DeliveryState.SENDING]
            if sending:
                self._dispatcher.submit(alert, sending)
        self._metrics.takeovers.inc(len(alerts))
        log.warning("took over a dead relay's alerts", extra={"event": "takeover", "alerts": len(alerts)})
        self._due(now)

    async def recount_open(self) -> None:
        """Other relays open and close alerts too: the open count is the store's."""
        self.open_alerts = await self._store.count_open()

    def _due(self, at: float | None) -> None:
        """A due time was stored: wake the scheduler if it would otherwise sleep past it."""
        if at is not None and at < self._wake_at:
            self._wake_at = at
            self._poke.set()

    async def _run_due(self) -> bool:
        """Every due step run; False if one failed (it was recorded, and is due again later)."""
        self._pass_tracks.clear()
        if self._recover_sending:
            for alert in await self._store.alerts_with_sending(limit=100_000, now=self._clock.now()):
                self._dispatcher.submit(alert, [d for d in alert.deliveries if d.state is DeliveryState.SENDING])
            self._recover_sending = False
        all_done = True
        if self._primary_back and self._primary.health.is_up:
            self._primary_back = False
            try:
                all_done &= await self._steps(await self._store.alerts_with_queued(
                    self._primary.name, limit=100_000, now=self._clock.now()))
            except BaseException:
                self._primary_back = True  # not all were looked at: look again on the next round
                raise
        while True:
            due = await self._store.due_alerts(self._clock.now(), SCHEDULER_BATCH)
            all_done &= await self._steps(due)
            if len(due) < SCHEDULER_BATCH or not all_done:
                return all_done

    async def _steps(self, alerts: Sequence[AlertRecord]) -> bool:
        """The alerts' steps side by side (each alert once): each awaits its own durable commit, and the store's
        writer puts those that wait together into one fsync. One after the other, a backlog of due rounds cost an
        fsync each and the scheduler fell behind its due times under load (the hostile soak: backup rounds a
        minute late, alerts given up having reached nobody)."""
        if len(alerts) <= 1:
            return all([await self._step(a) for a in alerts])
        limit = asyncio.Semaphore(STEPS_AT_ONCE)

        async def bounded(alert: AlertRecord) -> bool:
            async with limit:
                return await self._step(alert)

        async with asyncio.TaskGroup() as tg:
            done = [tg.create_task(bounded(a)) for a in alerts]
        return all(t.result() for t in done)

    async def _step(self, alert: AlertRecord) -> bool:
        """One alert's escalation step, as a job: if it fails, the alert's history says why and the step is due
        again after `retry_s`, so one alert that cannot be handled never stops the others' escalation."""
        done = await self._jobs.run(
            JobKind.SCHEDULED, lambda: self._follow_plan(alert), alert_id=alert.alert_id,
            on_failure=lambda detail: self._step_failed(alert, detail),
        )
        return done is not None

    async def _step_failed(self, alert: AlertRecord, detail: str) -> None:
        now = self._clock.now()
        later = Schedule(now + self._policy.retry_s, alert.backup_rounds, alert.last_backup_at)
        await self._store.save_schedule(alert.alert_id, later)
        await self._store.add_event(EventRecord(alert.alert_id, now, "job_failed", {"job": "escalation step",
                                                                                    "error": detail}))

    async def _follow_plan(self, alert: AlertRecord) -> bool:
        now = self._clock.now()
        primary_up = self._primary.health.is_up
        chain, alert = await self._in_track(alert)
        p = escalation.plan(alert, self._policy, now, primary_up=primary_up, track=chain)
        if any(isinstance(a, GiveUp) for a in p.actions):
            await self._give_up(alert, now)
            return True
        round_ = next((a for a in p.actions if isinstance(a, SendBackups)), None)
        calls_from = calls_at(alert, self._policy, chain)
        calls = calls_from is not None and now >= calls_from
        if round_ is not None:
            await self._backup_round(alert, round_.reason, p.schedule, now, primary_up, calls=calls)
        elif any(isinstance(a, SendCalls) for a in p.actions):
            await self._call_round(alert, p.schedule, now)
        elif (alert.next_action_at, alert.backup_rounds, alert.last_backup_at) != (
            p.schedule.next_action_at, p.schedule.backup_rounds, p.schedule.last_backup_at,
        ):
            await self._store.save_schedule(alert.alert_id, p.schedule)
        self._due(p.schedule.next_action_at)
        for action in p.actions:
            if isinstance(action, SendPrimary):
                self._dispatcher.submit(alert, _chosen(alert, action.delivery_ids))
            elif isinstance(action, RetryBackups):
                for d in _chosen(alert, action.delivery_ids):
                    started = await self._store.start_attempt(d.delivery_id, now)
                    if started is not None:
                        self._dispatcher.submit(alert, [started])
        return True

    async def _in_track(self, alert: AlertRecord) -> tuple[TrackChain | None, AlertRecord]:
        """The alert's place in its track's one backup chain, and the alert with what its messages say of the
        track; (None, alert) when tracks are off or the alert is `flash` (it escalates on its own)."""
        if not self._book.enabled:
            return None, alert
        chain = self._pass_tracks.get(alert.track_id)
        if chain is None:  # once per track and scheduler pass: a raid's alerts often fall due together
            chain = self._pass_tracks[alert.track_id] = self._chain_of(await self._store.open_in_track(alert.track_id))
        context = self._book.context(alert.track_id, alert.alert_id) or TrackContext(
            tracks.start(Sighting.of(alert.report), alert.track_id, params=self._book.params), (alert.alert_id,))
        alert = replace(alert, track=replace(context, other_codes=chain.codes))
        if alert.priority == Priority.FLASH:
            return None, alert
        lead = chain.lead or alert.alert_id  # none open in the store's view: this one carries it
        return TrackChain(lead == alert.alert_id, min(chain.opened_at, alert.created_at)), alert

    def _chain_of(self, found: OpenInTrack) -> _Chain:
        # an alert at its give-up time is given up in this pass: it no longer carries the chain
        until = self._clock.now() - self._policy.give_up_s
        chained = [o for o in found.open if o.priority != Priority.FLASH and o.created_at > until]
        return _Chain(chained[0].alert_id if chained else "", found.opened_at, tuple(o.short_code for o in chained))

    async def _backup_round(
        self, alert: AlertRecord, reason: BackupReason, schedule: Schedule, now: float, primary_up: bool, *,
        calls: bool,
    ) -> None:
        """One round to every backup target of every routed desk (calls too from voice_after_s), stored (outbox)
        before anything is sent."""
        to_send = await self._store.start_backup_round(alert.alert_id, schedule,
                                                       self._backup_deliveries(alert, calls=calls), now)
        if to_send is None:
            return  # acknowledged meanwhile
        self._metrics.backup_rounds.labels(reason.value).inc()
        if reason is BackupReason.FAILOVER:
            self._metrics.failovers.labels("publish_failed" if primary_up else "primary_down").inc()
        log.warning(
            "backup round",
            extra={"event": "backup_round", "alert_id": alert.alert_id, "reason": reason.value,
                   "round": schedule.backup_rounds, "sends": len(to_send)},
        )
        self._dispatcher.submit(alert, to_send)

    async def _call_round(self, alert: AlertRecord, schedule: Schedule, now: float) -> None:
        """The first calls, at voice_after_s, between two rounds: stored before they are placed, as a round is."""
        calls = [d for d in self._backup_deliveries(alert, calls=True) if d.channel == VOICE]
        to_send = await self._store.start_backup_round(alert.alert_id, schedule, calls, now)
        if not to_send:
            return  # acknowledged meanwhile, or no desk has a number to call
        self._metrics.backup_rounds.labels("voice").inc()
        log.warning("calls", extra={"event": "call_round", "alert_id": alert.alert_id, "calls": len(to_send)})
        self._dispatcher.submit(alert, to_send)

    def _backup_deliveries(self, alert: AlertRecord, *, calls: bool) -> list[DeliveryRecord]:
        wanted = []
        for desk_id in alert.desks:
            desk = self._desk_by_id.get(desk_id)
            if desk is None:
                continue  # a desk removed from the config since: nothing to send it
            for plug in self._backups:
                if plug.name == VOICE and not calls:
                    continue
                wanted += [
                    DeliveryRecord(f"{alert.alert_id}.{desk_id}.{plug.name}.{n}", alert.alert_id, desk_id,
                                   plug.name, target)
                    for n, target in enumerate(plug.targets(desk))
                ]
        return wanted

    async def _give_up(self, alert: AlertRecord, now: float) -> None:
        closed = await self._store.give_up(alert.alert_id, now)
        if closed is None:
            return
        self.open_alerts -= 1
        self._metrics.unacknowledged.inc()
        log.warning(
            "alert unacknowledged: sending stopped",
            extra={"event": "alert_unacknowledged", "alert_id": alert.alert_id, "operator_id": alert.operator_id},
        )
        self._bus.publish(StateEvent.of(closed, now))
        self._pass_tracks.pop(alert.track_id, None)
        self._due(now)


@dataclass(frozen=True, slots=True)
class _Chain:
    """A track's backup chain in one scheduler pass: its lead, when it began, its open codes (shared by every
    alert of the track: a raid's hundreds of alerts must not each copy the others' codes)."""

    lead: str
    opened_at: float
    codes: tuple[str, ...]


def _chosen(alert: AlertRecord, delivery_ids: Sequence[str]) -> list[DeliveryRecord]:
    wanted = set(delivery_ids)
    return [d for d in alert.deliveries if d.delivery_id in wanted]


def content_digest(report: Report) -> str:
    """Same report content, same digest: a replay of one report_id is told apart from a conflict by it."""
    canonical = report.model_dump_json(exclude_unset=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
