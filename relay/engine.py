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
from typing import Any

from channels.base import Channel, HealthChange, HealthState, Inbound, InboundKind, Outgoing
from relay import escalation, render, short_code
from relay.clock import Clock
from relay.escalation import GiveUp, Policy, SendBackups, SendPrimary
from relay.events import EventBus, StateEvent
from relay.ids import new_id
from relay.metrics import Metrics
from relay.model import Report
from relay.routing import Desk, route
from relay.states import AlertState
from relay.store.base import (
    Accepted,
    AcceptOutcome,
    AckRecord,
    AckResult,
    AlertRecord,
    AttemptOutcome,
    DeliveryRecord,
    NewAlert,
    Store,
    StoreUnavailable,
)
from relay.topics import Topics

log = logging.getLogger("relay.engine")

DISPATCH_WORKERS = 64
SCHEDULER_BATCH = 500


@dataclass(frozen=True, slots=True)
class _Job:
    alert: AlertRecord
    delivery: DeliveryRecord


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
        primary: Channel,
    ) -> None:
        self._store = store
        self._desks = list(desks)
        self._policy = policy
        self._clock = clock
        self._bus = bus
        self._metrics = metrics
        self._topics = topics
        self._primary = primary
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._in_flight: set[str] = set()  # delivery ids queued or being sent right now
        self._poke = asyncio.Event()
        self._wake_at = math.inf  # when the scheduler will look next, unless poked
        self._primary_back = True  # at start, look for deliveries a previous run left unsent
        self.open_alerts = 0
        primary.health.on_change(self._on_primary_health)

    # ---- intake --------------------------------------------------------------------------------------

    async def accept(self, operator_id: str, report: Report, source: str) -> Accepted:
        """Store the report as a new alert (or find its replay/conflict); sending starts after the commit."""
        now = self._clock.now()
        alert_id = new_id(now)
        desks = route(self._desks, report.location.lat, report.location.lon)
        deliveries = tuple(
            DeliveryRecord(f"{alert_id}.{d.id}.mqtt", alert_id, d.id, self._primary.name, self._topics.alerts(d.id))
            for d in desks
        )
        alert = AlertRecord(
            alert_id=alert_id,
            report_id=report.report_id,
            operator_id=operator_id,
            short_code=short_code.new_code(),
            state=AlertState.PENDING,
            priority=report.priority.value,
            stale=report.is_stale(datetime.fromtimestamp(now, report.observed_at.tzinfo)),
            created_at=now,
            report=report.as_submitted(),
            desks=tuple(d.id for d in desks),
            deliveries=deliveries,
        )
        first = escalation.plan(alert, self._policy, now, primary_up=self._primary.health.is_up)
        alert = replace(
            alert,
            next_action_at=first.schedule.next_action_at,
            backup_rounds=first.schedule.backup_rounds,
            last_backup_at=first.schedule.last_backup_at,
        )
        accepted = await self._store.accept(NewAlert(alert, content_digest(report), source))
        if accepted.outcome is AcceptOutcome.CREATED:
            alert = accepted.alert
            self.open_alerts += 1
            self._metrics.reports.labels(source).inc()
            log.info(
                "report accepted",
                extra={"event": "report_accepted", "alert_id": alert.alert_id, "report_id": alert.report_id,
                       "operator_id": operator_id, "source": source, "desks": list(alert.desks),
                       "short_code": alert.short_code, "priority": alert.priority, "stale": alert.stale},
            )
            self._bus.publish(StateEvent.of(alert, now))
            self._due(alert.next_action_at)
            self._act(alert, first.actions)
        return accepted

    # ---- receipts and acks ---------------------------------------------------------------------------

    async def on_inbound(self, inbound: Inbound) -> None:
        try:
            if inbound.kind is InboundKind.RECEIVED:
                await self.receipt(inbound.ref, inbound.sender, inbound.channel)
            else:
                await self.acknowledge(inbound.ref, inbound.sender, inbound.channel, inbound.by)
        except AckRefused as exc:
            self._metrics.acks_rejected.labels(inbound.channel, exc.reason).inc()
            log.warning(
                "acknowledgement refused",
                extra={"event": "ack_refused", "alert_id": inbound.ref, "desk_id": inbound.sender,
                       "channel": inbound.channel, "kind": inbound.kind.value, "reason": str(exc)},
            )
        except StoreUnavailable as exc:
            log.error(
                "store unavailable: inbound not recorded",
                extra={"event": "inbound_lost", "alert_id": inbound.ref, "error": str(exc)},
            )

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
            raise AckRefused("unknown", f"no {channel} delivery of alert {alert_id} to desk {desk_id}")
        self._metrics.deliveries.labels(channel, "delivered").inc()
        log.info(
            "delivery confirmed",
            extra={"event": "delivery_delivered", "alert_id": alert_id, "desk_id": desk_id, "channel": channel},
        )
        if result.newly_delivered:
            self._bus.publish(StateEvent.of(result.alert, now))

    async def acknowledge(self, alert_id: str, desk_id: str, channel: str, by: str) -> AckResult:
        """Record a person's ack from a desk the alert was sent to; the first one closes the alert."""
        alert = await self._store.get_alert(alert_id)
        if alert is None:
            raise AckRefused("unknown", f"no alert {alert_id}")
        if desk_id not in alert.desks:
            raise AckRefused("not_routed", f"alert {alert_id} was not sent to desk {desk_id}")
        now = self._clock.now()
        latency = max(0.0, now - alert.created_at)
        result = await self._store.record_ack(AckRecord(alert_id, desk_id, channel, by, now, latency))
        if result is None:
            raise AckRefused("unknown", f"no alert {alert_id}")
        if not result.first:
            log.info(
                "duplicate acknowledgement recorded",
                extra={"event": "ack_duplicate", "alert_id": alert_id, "desk_id": desk_id, "channel": channel},
            )
            return result
        if result.was_open:
            self.open_alerts -= 1
        self._metrics.ack_seconds.labels(channel).observe(latency)
        log.info(
            "alert acknowledged",
            extra={"event": "ack", "alert_id": alert_id, "desk_id": desk_id, "channel": channel, "by": by,
                   "latency_s": round(latency, 3), "cancelled": result.cancelled},
        )
        self._bus.publish(StateEvent.of(result.alert, now))
        return result

    # ---- running -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.open_alerts = await self._store.count_open()
        async with asyncio.TaskGroup() as tg:
            for _ in range(DISPATCH_WORKERS):
                tg.create_task(self._dispatch_worker())
            tg.create_task(self._scheduler())

    async def drain(self, within_s: float) -> bool:
        """Wait until every queued send finished, at most `within_s` seconds; False if some did not."""
        try:
            async with asyncio.timeout(within_s):
                await self._jobs.join()
        except TimeoutError:
            return False
        return True

    def _on_primary_health(self, change: HealthChange) -> None:
        up = change.state is not HealthState.DOWN
        self._metrics.channel_up.labels(change.channel).set(1 if up else 0)
        log.log(
            logging.INFO if up else logging.WARNING,
            f"channel {change.state.value}",
            extra={"event": f"channel_{change.state.value}", "channel": change.channel, "detail": change.detail},
        )
        if change.state is HealthState.UP:
            self._primary_back = True
            self._poke.set()

    async def _scheduler(self) -> None:
        """Wakes at the earliest stored due time (or when poked) and follows each due alert's plan."""
        while True:
            self._poke.clear()
            self._wake_at = math.inf  # while it runs, any newly stored due time pokes it again
            try:
                await self._run_due()
                next_at = await self._store.next_due_at()
            except StoreUnavailable as exc:
                log.error("scheduler cannot read the store", extra={"event": "scheduler_store", "error": str(exc)})
                next_at = self._clock.now() + 1
            self._wake_at = math.inf if next_at is None else next_at
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._poke.wait())]
            if next_at is not None:
                waits.append(asyncio.ensure_future(self._clock.sleep_until(next_at)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _due(self, at: float | None) -> None:
        """A due time was stored: wake the scheduler if it would otherwise sleep past it."""
        if at is not None and at < self._wake_at:
            self._wake_at = at
            self._poke.set()

    async def _run_due(self) -> None:
        if self._primary_back and self._primary.health.is_up:
            self._primary_back = False
            try:
                for alert in await self._store.alerts_with_queued(self._primary.name, limit=100_000):
                    await self._follow_plan(alert)
            except BaseException:
                self._primary_back = True  # not all were looked at: look again on the next round
                raise
        while True:
            due = await self._store.due_alerts(self._clock.now(), SCHEDULER_BATCH)
            for alert in due:
                await self._follow_plan(alert)
            if len(due) < SCHEDULER_BATCH:
                return

    async def _replan(self, alert_id: str) -> None:
        alert = await self._store.get_alert(alert_id)
        if alert is not None:
            await self._follow_plan(alert)

    async def _follow_plan(self, alert: AlertRecord) -> None:
        now = self._clock.now()
        p = escalation.plan(alert, self._policy, now, primary_up=self._primary.health.is_up)
        if any(isinstance(a, GiveUp) for a in p.actions):
            await self._give_up(alert, now)
            return
        current = (alert.next_action_at, alert.backup_rounds, alert.last_backup_at)
        if current != (p.schedule.next_action_at, p.schedule.backup_rounds, p.schedule.last_backup_at):
            await self._store.save_schedule(alert.alert_id, p.schedule)
            self._due(p.schedule.next_action_at)
        self._act(alert, p.actions)

    def _act(self, alert: AlertRecord, actions: Sequence[escalation.Action]) -> None:
        for action in actions:
            if isinstance(action, SendPrimary):
                wanted = set(action.delivery_ids)
                for d in alert.deliveries:
                    if d.delivery_id in wanted and d.delivery_id not in self._in_flight:
                        self._in_flight.add(d.delivery_id)
                        self._jobs.put_nowait(_Job(alert, d))
            elif isinstance(action, SendBackups):
                # Backup channels (SMS, e-mail) plug in here; with none configured the policy never asks.
                log.warning("backup round planned without backup channels", extra={"alert_id": alert.alert_id})

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

    # ---- sending -------------------------------------------------------------------------------------

    async def _dispatch_worker(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await self._send_primary(job.alert, job.delivery)
            except StoreUnavailable as exc:
                log.error(
                    "store unavailable: delivery outcome not recorded",
                    extra={"event": "delivery_unrecorded", "alert_id": job.alert.alert_id, "error": str(exc)},
                )
            finally:
                self._in_flight.discard(job.delivery.delivery_id)
                self._jobs.task_done()

    async def _send_primary(self, alert: AlertRecord, d: DeliveryRecord) -> None:
        msg = Outgoing(
            key=alert.alert_id,
            target=d.target,
            body=render.mqtt_alert(alert, d.desk_id, self._topics.acks(d.desk_id)),
            expiry_s=int(self._policy.give_up_s),
        )
        result = await self._primary.send(msg)
        now = self._clock.now()
        ctx = {"alert_id": alert.alert_id, "desk_id": d.desk_id, "channel": d.channel, "target": d.target}
        if result.ok:
            await self._store.finish_attempt(d.delivery_id, AttemptOutcome.SENT, now)
            latency = max(0.0, now - alert.created_at)
            self._metrics.delivery_seconds.labels(d.channel).observe(latency)
            self._metrics.deliveries.labels(d.channel, "sent").inc()
            log.info("delivery sent", extra={"event": "delivery_sent", **ctx, "latency_s": round(latency, 4)})
            return
        reason = result.reason.value if result.reason else "unknown"
        outcome = AttemptOutcome.FAILED if result.permanent else AttemptOutcome.RETRY
        await self._store.finish_attempt(d.delivery_id, outcome, now, error=f"{reason}: {result.detail}")
        self._metrics.deliveries.labels(d.channel, reason).inc()
        log.warning(
            "delivery failed",
            extra={"event": "delivery_failed", **ctx, "reason": reason, "detail": result.detail,
                   "permanent": result.permanent},
        )
        self._in_flight.discard(d.delivery_id)
        await self._replan(alert.alert_id)  # failover at once, or a retry later


def content_digest(report: Report) -> str:
    """Same report content, same digest: a replay of one report_id is told apart from a conflict by it."""
    canonical = report.model_dump_json(exclude_unset=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
