"""The faults of a soak run: drawn from the seed up front, injected at their times while reports are posted."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.soak_world import World
from tests.support.twilio_fake import Fault

BROKER_GAP_S = 2.0  # at least this long between the broker coming back and its next fault


@dataclass(frozen=True)
class BrokerFault:
    at: float  # seconds after the posting started
    kill: bool  # SIGKILL (then start after down_s) or a graceful restart
    down_s: float


@dataclass(frozen=True)
class Plan:
    broker: list[BrokerFault]
    sms: list[tuple[float, list[Fault]]]  # bursts pushed into TwilioFake.faults
    smtp_at: float
    smtp_down_s: float
    relay_kill_at: float


def draw(rng: random.Random, duration: float) -> Plan:
    kinds = [True] * rng.randint(2, 3) + [False]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(0.05, 0.85) * duration for _ in kinds)
    broker = [BrokerFault(t, kill, round(rng.uniform(1, 3), 2) if kill else 0.0) for t, kill in zip(times, kinds,
                                                                                                   strict=True)]
    choices = [Fault(500), Fault(429, 20429), Fault(delay_s=3)]
    sms = sorted((rng.uniform(0.05, 0.9) * duration, [rng.choice(choices) for _ in range(rng.randint(3, 8))])
                 for _ in range(3))
    return Plan(broker, sms, rng.uniform(0.1, 0.8) * duration, 5.0, rng.uniform(0.2, 0.8) * duration)


def fault_name(f: Fault) -> str:
    return f"slow {f.delay_s:g} s" if f.delay_s else str(f.status)


@dataclass
class Injected:
    timeline: list[tuple[float, str]] = field(default_factory=list)
    broker_kills: int = 0
    broker_restarts: int = 0
    sms_faults: Counter[str] = field(default_factory=Counter)
    smtp_outages: int = 0
    relay_kills: int = 0
    relay_ready_s: float | None = None  # restart after the SIGKILL -> /readyz 200


class Injector:
    def __init__(self, w: World, plan: Plan, start: float) -> None:
        self.w, self.plan, self.start = w, plan, start  # start: perf_counter() when posting began
        self.done = Injected()

    def _log(self, what: str) -> None:
        self.done.timeline.append((time.perf_counter() - self.start, what))

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.start + at - time.perf_counter()))

    async def run(self) -> Injected:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._broker())
            tg.create_task(self._sms())
            tg.create_task(self._smtp())
            tg.create_task(self._relay())
        self.done.timeline.sort()
        return self.done

    # The blocking calls below (process start/stop, the SMTP controller) take milliseconds; they run on the loop
    # so that a cancellation can never leave one half done in a thread while the cleanup runs.

    async def _broker(self) -> None:
        for f in self.plan.broker:
            await self._until(f.at)
            if f.kill:
                self.w.broker.kill()
                self.done.broker_kills += 1
                self._log("broker SIGKILL")
                await asyncio.sleep(f.down_s)
                self.w.broker.start()
                self._log(f"broker started again after {f.down_s:.1f} s")
            else:
                self.w.broker.restart()
                self.done.broker_restarts += 1
                self._log("broker graceful restart (SIGTERM, start)")
            await asyncio.sleep(BROKER_GAP_S)

    async def _sms(self) -> None:
        for at, burst in self.plan.sms:
            await self._until(at)
            self.w.twilio.faults.extend(burst)
            self.done.sms_faults.update(fault_name(f) for f in burst)
            self._log(f"SMS API faults queued: {', '.join(fault_name(f) for f in burst)}")

    async def _smtp(self) -> None:
        await self._until(self.plan.smtp_at)
        self.w.smtp.stop()
        self.done.smtp_outages += 1
        self._log("SMTP server stopped")
        await asyncio.sleep(self.plan.smtp_down_s)
        self.w.smtp.start()
        self._log(f"SMTP server started again after {self.plan.smtp_down_s:.1f} s")

    async def _relay(self) -> None:
        await self._until(self.plan.relay_kill_at)
        self.w.relay.kill9()
        self.done.relay_kills += 1
        self._log("relay SIGKILL, restarted at once")
        t = time.perf_counter()
        self.w.relay.start()
        await self.w.relay.wait_ready(timeout=30)
        self.done.relay_ready_s = time.perf_counter() - t
        self._log(f"relay ready again, {self.done.relay_ready_s:.2f} s after its restart")
