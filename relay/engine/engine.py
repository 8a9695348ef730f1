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
from datetime import datetime
from typing import Any, NoReturn

from channels.base import HealthChange, HealthState, Inbound, InboundKind
from relay.domain import escalation, short_code
from relay.domain.clock import Clock, sleep_until_or
from relay.domain.escalation import BackupReason, GiveUp, Policy, RetryBackups, SendBackups, SendPrimary
from relay.domain.ids import new_id
from relay.domain.model import Report
from relay.domain.records import (
    Accepted,
    AcceptOutcome,
    AckRecord,
    AckResult,
    AlertRecord,
    DeliveryRecord,
    EventRecord,
    NewAlert,
    Schedule,
)
from relay.domain.routing import Desk, route
from relay.domain.states import AlertState, DeliveryState
from relay.domain.text import normalise
from relay.domain.topics import Topics
from relay.engine.dispatch import Dispatcher
from relay.engine.events import EventBus, StateEvent
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.engine.plug_board import Plug
from relay.store.base import Store, StoreUnavailable

log = logging.getLogger("relay.engine")

SCHEDULER_BATCH = 500
STEPS_AT_ONCE = 64  # alerts' escalation steps in flight together (their commits share fsyncs)
SCHEDULER_PAUSE_S = 1.0  # after a store error or a failed step, before the scheduler looks again
CHANNEL_TEST_PREFIX = "test-"  # ids of `relay test-channels` messages; no alert has one
MAX_BY = 100  # an ack's `by`, whichever channel it came from

class AckRefused(Exception):
    """An acknowledgement that must not count; the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        }
        alert = AlertRecord(**fields)
        first = escalation.plan(alert, self._policy, now, primary_up=self._primary.health.is_up)
        schedule = escalation.schedule_at_accept(first, alert)
        alert = AlertRecord(  # built again rather than dataclasses.replace'd: that is several times dearer
            **fields,
            next_action_at=schedule.next_action_at,
            backup_rounds=schedule.backup_rounds,
            last_backup_at=schedule.last_backup_at,
        )
        accepted = await self._store.accept(NewAlert(alert, content_digest(report), source))
        if accepted.outcome is AcceptOutcome.CREATED:
            alert = accepted.alert
            self.open_alerts += 1
            self._metrics.child(self._metrics.reports, source).inc()
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "report accepted",
                    extra={"event": "report_accepted", "alert_id": alert.alert_id, "report_id": alert.report_id,
                           "operator_id": operator_id, "source": source, "desks": list(alert.desks),
                           "short_code": alert.short_code, "priority": alert.priority, "stale": alert.stale},
                )
            self._bus.publish(StateEvent.of(alert, now))
            self._due(alert.next_action_at)
            for action in first.actions:
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
        if result.was_open:
            self.open_alerts -= 1
        self._metrics.ack_seconds.labels(channel).observe(latency)
        log.info(
            "alert acknowledged",
            extra={"event": "ack", "alert_id": alert_id, "desk_id": desk_id, "channel": channel, "by": by,
                   "from": source, "latency_s": round(latency, 3), "cancelled": result.cancelled},
        )
        self._bus.publish(StateEvent.of(result.alert, now))
        return result

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
                next_at = await self._store.next_due_at()
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

    def _due(self, at: float | None) -> None:
        """A due time was stored: wake the scheduler if it would otherwise sleep past it."""
        if at is not None and at < self._wake_at:
            self._wake_at = at
            self._poke.set()

    async def _run_due(self) -> bool:
        """Every due step run; False if one failed (it was recorded, and is due again later)."""
        if self._recover_sending:
            for alert in await self._store.alerts_with_sending(limit=100_000):
                self._dispatcher.submit(alert, [d for d in alert.deliveries if d.state is DeliveryState.SENDING])
            self._recover_sending = False
        all_done = True
        if self._primary_back and self._primary.health.is_up:
            self._primary_back = False
            try:
                all_done &= await self._steps(await self._store.alerts_with_queued(self._primary.name,
                                                                                    limit=100_000))
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
        p = escalation.plan(alert, self._policy, now, primary_up=primary_up)
        if any(isinstance(a, GiveUp) for a in p.actions):
            await self._give_up(alert, now)
            return True
        round_ = next((a for a in p.actions if isinstance(a, SendBackups)), None)
        if round_ is not None:
            await self._backup_round(alert, round_.reason, p.schedule, now, primary_up)
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

    async def _backup_round(
        self, alert: AlertRecord, reason: BackupReason, schedule: Schedule, now: float, primary_up: bool
    ) -> None:
        """One round to every backup target of every routed desk, stored (outbox) before anything is sent."""
        to_send = await self._store.start_backup_round(alert.alert_id, schedule, self._backup_deliveries(alert), now)
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

    def _backup_deliveries(self, alert: AlertRecord) -> list[DeliveryRecord]:
        wanted = []
        for desk_id in alert.desks:
            desk = self._desk_by_id.get(desk_id)
            if desk is None:
                continue  # a desk removed from the config since: nothing to send it
            for plug in self._backups:
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


def _chosen(alert: AlertRecord, delivery_ids: Sequence[str]) -> list[DeliveryRecord]:
    wanted = set(delivery_ids)
    return [d for d in alert.deliveries if d.delivery_id in wanted]


def content_digest(report: Report) -> str:
    """Same report content, same digest: a replay of one report_id is told apart from a conflict by it."""
    canonical = report.model_dump_json(exclude_unset=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
