"""The sending side: takes deliveries the engine decided on, renders them for their channel, sends, records.

Every send follows the outbox order: the delivery was committed (queued, or marked sending) before it gets
here; its outcome is committed after. A failed send's outcome makes its alert due now, in the same commit, and
the scheduler (the one planner) decides the failover or the retry.
Each send is a job (relay/jobs.py): whatever rendering or a channel raises fails that delivery, with the reason,
and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from channels.base import HealthState, Outgoing, SendResult
from channels.voice import spell_code
from relay.domain import render, transitions
from relay.domain.clock import Clock
from relay.domain.records import AlertRecord, AttemptOutcome, DeliveryRecord
from relay.domain.topics import Topics
from relay.engine.ack_links import AckLinkSigner
from relay.engine.jobs import JobKind, Jobs
from relay.engine.metrics import Metrics
from relay.engine.plug_board import Form, Plug
from relay.engine.sms_bundler import SmsBundler, SmsItem
from relay.engine.tasks import stop_if_cancelled
from relay.store.base import Store

log = logging.getLogger("relay.dispatch")

# A call's final word (busy, no answer, answered and hung up) is awaited this long before the desk's next number
# is called anyway: Twilio's ring timeout, a message read twice and the key, with room.
CALL_WAIT_S = 180.0


class CallOutcomes(Protocol):
    async def reached(self, key: str, within_s: float) -> bool | None:
        """Whether the call placed for delivery `key` reached a person; None if no word came within `within_s`."""
        ...

# Each channel has its own queue and workers (Plug.workers): a slow e-mail server (every unacknowledged alert
# sends a round of e-mail every repeat) must never hold a console's alert behind it.

@dataclass(frozen=True, slots=True, order=True)
class _Job:
    # Under a backlog, a warning nobody has had yet goes before a repeat of one some desk already has (a failed
    # try of an alert that reached nobody is such a warning too), then fewer tries first, then in order.
    reached: bool
    attempts: int
    seq: int
    alert: AlertRecord = field(compare=False)
    delivery: DeliveryRecord = field(compare=False)
    then: tuple[DeliveryRecord, ...] = field(default=(), compare=False)  # a desk's next numbers to call in turn


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        plugs: Sequence[Plug],
        renderer: render.Renderer,
        topics: Topics,
        clock: Clock,
        metrics: Metrics,
        bundle_window_s: float,
        ack_links: AckLinkSigner,
        public_url: str,
        poke: asyncio.Event,
        jobs: Jobs,
        calls: CallOutcomes | None = None,
    ) -> None:
        self._store, self._render, self._jobs = store, renderer, jobs
        self._plugs = {p.name: p for p in plugs}
        self._topics, self._clock, self._metrics = topics, clock, metrics
        self._ack_links, self._public_url, self._poke = ack_links, public_url, poke
        self._calls = calls
        self._queues: dict[str, asyncio.PriorityQueue[_Job]] = {
            p.name: asyncio.PriorityQueue() for p in plugs if not p.bundled
        }
        self._seq = itertools.count()
        self._in_flight: set[str] = set()  # delivery ids queued here or being sent
        self._bundlers = {
            p.name: SmsBundler(bundle_window_s, functools.partial(self._send_bundle, p), clock)
            for p in plugs if p.bundled
        }

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Sends submitted inside leave together when it ends (one bundle per target for a scheduler pass)."""
        with contextlib.ExitStack() as stack:
            for bundler in self._bundlers.values():
                stack.enter_context(bundler.together())
            yield

    def submit(self, alert: AlertRecord, deliveries: list[DeliveryRecord]) -> None:
        calls: dict[tuple[str, str], list[DeliveryRecord]] = {}
        for d in deliveries:
            if d.delivery_id in self._in_flight:
                continue
            self._in_flight.add(d.delivery_id)
            if self._plugs[d.channel].form is Form.CALL:
                calls.setdefault((d.channel, d.desk_id), []).append(d)
            elif d.channel in self._bundlers:
                self._bundlers[d.channel].add(SmsItem(alert, d))
            else:
                self._queues[d.channel].put_nowait(
                    _Job(transitions.reached_someone(alert), d.attempts, next(self._seq), alert, d))
        for (channel, _), numbers in calls.items():  # one job per desk: its numbers in their order, one at a time
            numbers.sort(key=_number_order)
            first = numbers[0]
            self._queues[channel].put_nowait(_Job(transitions.reached_someone(alert), first.attempts,
                                                  next(self._seq), alert, first, tuple(numbers[1:])))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, queue in self._queues.items():
                for _ in range(self._plugs[name].workers):
                    tg.create_task(self._worker(queue))
            for bundler in self._bundlers.values():
                tg.create_task(bundler.run())

    async def drain(self, within_s: float) -> bool:
        """Wait until every send handed over so far has finished, at most `within_s`; False if some did not."""
        try:
            async with asyncio.timeout(within_s):
                for queue in self._queues.values():
                    await queue.join()
                for bundler in self._bundlers.values():
                    await bundler.idle()
        except TimeoutError:
            return False
        return True

    async def _worker(self, queue: asyncio.PriorityQueue[_Job]) -> None:
        while True:
            stop_if_cancelled()
            job = await queue.get()
            alert, d = job.alert, job.delivery
            try:
                if self._plugs[d.channel].form is Form.CALL:
                    await self._call_in_turn(alert, [d, *job.then])
                else:
                    await self._jobs.run(
                        JobKind.DELIVERY, functools.partial(self._send, alert, d), alert_id=alert.alert_id,
                        on_failure=functools.partial(self._failed, [d]),
                        delivery_id=d.delivery_id, channel=d.channel,
                    )
            finally:
                self._in_flight.discard(d.delivery_id)
                for later in job.then:
                    self._in_flight.discard(later.delivery_id)
                queue.task_done()

    async def _failed(self, deliveries: list[DeliveryRecord], detail: str) -> None:
        """Deliveries whose send raised: failed for good with the reason (a restart must not replay them into
        the same error; the next backup round tries them afresh), the channel's health told, failover planned."""
        now = self._clock.now()
        health = self._plugs[deliveries[0].channel].health
        if health.state is HealthState.UP:
            health.set(HealthState.DEGRADED, f"a send failed: {detail}")
        for d in deliveries:
            recorded = await self._store.finish_attempt(d.delivery_id, AttemptOutcome.BROKE, now, error=detail)
            if recorded is None:
                continue  # its outcome was recorded before the error, or the alert closed meanwhile
            self._metrics.deliveries.labels(d.channel, "unexpected").inc()
            self._in_flight.discard(d.delivery_id)
        self._poke.set()  # the store made their alerts due now: the scheduler plans the failover or the retry

    async def _send(self, alert: AlertRecord, d: DeliveryRecord) -> None:
        plug = self._plugs[d.channel]
        if plug.form is Form.CONSOLE:
            msg = Outgoing(
                key=alert.alert_id, target=d.target, expiry_s=plug.expiry_s,
                body=render.mqtt_alert(alert, d.desk_id, self._topics.acks(d.desk_id)),
            )
        else:
            if not await self._worth_sending(alert.alert_id):  # acked (or given up) while it waited: not sent
                await self._store.finish_attempt(d.delivery_id, AttemptOutcome.CANCELLED, self._clock.now())
                return
            url = f"{self._public_url}/ack/{self._ack_links.token(alert.alert_id, d.desk_id, self._clock.now())}"
            msg = Outgoing(
                key=d.delivery_id, target=d.target, subject=self._render.email_subject(alert),
                body=self._render.email_text(alert, url).encode(), html=self._render.email_html(alert, url),
            )
        await self._record(alert, d, await self._deliver(d.channel, msg))

    async def _call_in_turn(self, alert: AlertRecord, numbers: list[DeliveryRecord]) -> None:
        """A desk's numbers called one after the other: the next only when a call was not answered (busy, no
        answer, failed, or the call could not be placed). Once one is answered, the rest wait for the next round."""
        for n, d in enumerate(numbers):
            placed = await self._jobs.run(
                JobKind.DELIVERY, functools.partial(self._call, alert, d), alert_id=alert.alert_id,
                on_failure=functools.partial(self._failed, [d]), delivery_id=d.delivery_id, channel=d.channel,
            )
            if not placed:
                continue  # not placed (recorded as failed): the next number at once
            reached = await self._calls.reached(d.delivery_id, CALL_WAIT_S) if self._calls is not None else None
            if reached is False:
                continue  # busy, no answer, failed: recorded by the status callback; the next number at once
            for rest in numbers[n + 1:]:  # answered (or no word in time): these are not called in this round
                await self._store.finish_attempt(rest.delivery_id, AttemptOutcome.RETRY, self._clock.now(),
                                                 error=f"not called: {d.target} was called in this round")
            return

    async def _call(self, alert: AlertRecord, d: DeliveryRecord) -> bool:
        """One call placed and recorded; False when it could not be placed (or the alert was closed meanwhile)."""
        if not await self._worth_sending(alert.alert_id):
            await self._store.finish_attempt(d.delivery_id, AttemptOutcome.CANCELLED, self._clock.now())
            return False
        text = self._render.voice(alert, spell_code)
        result = await self._deliver(d.channel, Outgoing(key=d.delivery_id, target=d.target, body=text.encode()))
        await self._record(alert, d, result)
        return result.ok

    async def _send_bundle(self, plug: Plug, target: str, items: list[SmsItem]) -> None:
        try:
            await self._jobs.run(
                JobKind.DELIVERY, lambda: self._send_texts(plug, target, items),
                alert_id=",".join(i.alert.alert_id for i in items),
                on_failure=functools.partial(self._failed, [i.delivery for i in items]),
                channel=plug.name,
            )
        finally:
            for item in items:
                self._in_flight.discard(item.delivery.delivery_id)

    async def _send_texts(self, plug: Plug, target: str, items: list[SmsItem]) -> None:
        """One target's texts: what is still worth sending goes out, bundled when several; what was acked meanwhile
        is not."""
        worth = []
        for item in items:
            if await self._worth_sending(item.alert.alert_id):
                worth.append(item)
            else:
                await self._store.finish_attempt(item.delivery.delivery_id, AttemptOutcome.CANCELLED,
                                                 self._clock.now())
        if len(worth) > 1:
            # a bundle that runs to many SMS sends those of alerts nobody has had yet first (flash ahead of all)
            worth = sorted(await self._renderable(plug, worth),
                                key=lambda i: (transitions.reached_someone(i.alert), i.delivery.attempts))
        if not worth:  # every one acked meanwhile (or unrenderable): an SMS of no alert, "БПЛА, 0 трев.", is noise
            return
        by_alert = {i.alert.alert_id: i for i in worth}
        pending = [i.alert for i in worth]
        batches = self._render.sms_batches(pending)
        while batches:
            # a bundle runs to several SMS, each a provider call (a second or more): before each, its alerts are
            # looked at again, and one acknowledged meanwhile is cancelled and the rest of the bundle rendered anew
            text, alerts = batches[0]
            gone = {a.alert_id for a in alerts if not await self._worth_sending(a.alert_id)}
            if gone:
                for alert_id in gone:
                    await self._store.finish_attempt(by_alert[alert_id].delivery.delivery_id,
                                                     AttemptOutcome.CANCELLED, self._clock.now())
                pending = [a for a in pending if a.alert_id not in gone]
                batches = self._render.sms_batches(pending) if pending else []  # none left: no SMS of no alert
                continue
            batch = [by_alert[a.alert_id] for a in alerts]
            msg = Outgoing(
                key=",".join(i.delivery.delivery_id for i in batch), target=target, body=text.encode(),
                expiry_s=plug.expiry_s,
            )
            result = await self._deliver(plug.name, msg)
            for i in batch:
                await self._record(i.alert, i.delivery, result)
            sent = {a.alert_id for a in alerts}
            pending = [a for a in pending if a.alert_id not in sent]
            batches = batches[1:]

    async def _renderable(self, plug: Plug, items: list[SmsItem]) -> list[SmsItem]:
        """The items whose alert renders on its own: one that cannot must not take a bundle's others with it."""
        ok = []
        for item in items:
            try:
                self._render.sms(item.alert)
            except Exception as exc:  # noqa: BLE001 - counted and recorded by jobs.failed, the delivery failed
                detail = self._jobs.failed(JobKind.DELIVERY, exc, alert_id=item.alert.alert_id, channel=plug.name)
                await self._failed([item.delivery], detail)
                continue
            ok.append(item)
        return ok

    async def _worth_sending(self, alert_id: str) -> bool:
        current = await self._store.get_alert(alert_id)
        return current is not None and transitions.worth_sending(current)

    async def _deliver(self, channel: str, msg: Outgoing) -> SendResult:
        started = time.perf_counter()
        result = await self._plugs[channel].channel.send(msg)
        m = self._metrics
        m.child(m.channel_send_seconds, channel).observe(time.perf_counter() - started)
        return result

    async def _record(self, alert: AlertRecord, d: DeliveryRecord, result: SendResult) -> None:
        now = self._clock.now()
        m = self._metrics
        if result.ok:
            await self._store.finish_attempt(d.delivery_id, AttemptOutcome.SENT, now, refs=result.receipt_refs,
                                             channel=d.channel)
            latency = max(0.0, now - alert.created_at)
            if d.attempts <= 1:  # the first time this delivery got out: the latency the contract measures
                m.child(m.delivery_seconds, d.channel).observe(latency)
            m.child(m.deliveries, d.channel, "sent").inc()
            m.child(m.channel_last_success, d.channel).set(now)
            if log.isEnabledFor(logging.INFO):  # not building the line is most of its cost when it is not logged
                log.info("delivery sent", extra={
                    "event": "delivery_sent", "alert_id": alert.alert_id, "desk_id": d.desk_id, "channel": d.channel,
                    "target": d.target, "latency_s": round(latency, 4), "provider_ref": result.provider_ref})
            return
        ctx = {"alert_id": alert.alert_id, "desk_id": d.desk_id, "channel": d.channel, "target": d.target}
        reason = result.reason.value if result.reason else "unknown"
        outcome = AttemptOutcome.FAILED if result.permanent else AttemptOutcome.RETRY
        await self._store.finish_attempt(d.delivery_id, outcome, now, error=f"{reason}: {result.detail}")
        self._metrics.deliveries.labels(d.channel, reason).inc()
        log.warning("delivery failed", extra={"event": "delivery_failed", **ctx, "reason": reason,
                                              "detail": result.detail, "permanent": result.permanent})
        self._in_flight.discard(d.delivery_id)
        self._poke.set()  # the store made the alert due now: the scheduler plans the failover or the retry


def _number_order(d: DeliveryRecord) -> int:
    """A call delivery's place among its desk's numbers (its id ends in `.{n}`)."""
    tail = d.delivery_id.rpartition(".")[2]
    return int(tail) if tail.isdigit() else 0
