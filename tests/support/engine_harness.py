"""The engine wired as relay/operations/daemon.py wires it, on the real SQLite store, under a fake clock, with fake
channels.

Everything but the channels' far ends is the real thing: intake, engine, dispatcher, SMS bundler, store (its
writer task running, its file in the test's directory). A channel here speaks the real shape (channels.base.Channel)
and records each `Outgoing` with the fake time it left, so a test asserts what a dispatcher would notice: what came
over which channel, when. `restart()` stops everything, reopens the same file and builds a new engine on the same
clock, as a relay restarted by systemd would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from channels.base import ChannelHealth, FailureReason, HealthState, Outgoing, SendResult
from relay.domain.clock import to_datetime
from relay.domain.config import DeskConfig
from relay.domain.escalation import Policy
from relay.domain.records import AckResult, AlertRecord, DeliveryRecord, Schedule
from relay.domain.render import Renderer
from relay.domain.routing import Desk
from relay.domain.topics import Topics
from relay.domain.tracks import TrackParams
from relay.engine.ack_links import AckLinkSigner
from relay.engine.dispatch import Dispatcher
from relay.engine.engine import Engine
from relay.engine.events import EventBus
from relay.engine.intake import Intake, Outcome
from relay.engine.jobs import Jobs
from relay.engine.metrics import Metrics
from relay.engine.track_book import TrackBook
from relay.operations.daemon import plugs
from relay.store.sqlite import SQLiteStore
from tests.support.fake_clock import FakeClock

OPERATOR = "op-1"
DESK = "airfield-1"
PHONE = "+79001110001"
EMAIL = "duty@airfield-1.example"
PUBLIC_URL = "http://127.0.0.1:8080"
# The README's defaults: what a relay configured with nothing but its desks does.
DEFAULT_POLICY = Policy(ack_timeout_s=10, repeat_s=60, give_up_s=900, retry_s=5, backups=frozenset({"sms", "email"}))
BUNDLE_WINDOW_S = 0.5


def desk(desk_id: str = DESK, *, sms: Sequence[str] = (PHONE,), email: Sequence[str] = (EMAIL,),
         area: dict[str, float] | None = None) -> Desk:
    """A desk as the daemon makes one: from its validated config."""
    cfg = DeskConfig.model_validate({"id": desk_id, "name": desk_id, "token": f"{desk_id}-token-0123456789",
                                     "sms": list(sms), "email": list(email), "area": area})
    return Desk.from_config(cfg)


def report(clock: FakeClock, report_id: str = "r-1", **fields: Any) -> dict[str, Any]:
    """A valid report as a 112 workstation files it, seen half a minute before the clock's now."""
    body: dict[str, Any] = {
        "report_id": report_id,
        "observed_at": to_datetime(clock.now() - 30).isoformat(),
        "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
        "uav_type": "fixed_wing",
        "count": 2,
        "heading_deg": 315,
        "altitude": "low",
        "caller": {"phone": "+79001234567", "name": "Петров"},
    }
    return {**body, **fields}


@contextlib.contextmanager
def store_file(tmp_path: Path) -> Iterator[Path]:
    """Where the store's file goes: on tmpfs where there is one, since each commit's fsync costs milliseconds on a
    disk and microseconds there, and what these tests time is the fake clock's, not the disk's. The store's code is
    the same either way."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path / "relay.db"
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="uav-relay-test-") as d:
        yield Path(d) / "relay.db"


# ---- channels ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # fake seconds since the clock started
    msg: Outgoing
    ok: bool  # the channel took it
    seq: int  # place in the harness's one journal of sends and acks: who came first within one instant


@dataclass(frozen=True, slots=True)
class Acked:
    at: float
    alert_id: str
    desk_id: str
    channel: str
    first: bool
    seq: int


Script = SendResult | Exception  # what the next send answers, or raises


def fails(reason: FailureReason = FailureReason.UNREACHABLE, *, permanent: bool = False) -> SendResult:
    return SendResult.failed(reason, f"scripted {reason.value}", permanent=permanent)


class FakeChannel:
    """Takes every message (or what the script says), sends it nowhere, remembers it with the fake time."""

    def __init__(self, name: str, clock: FakeClock, journal: itertools.count[int], *, up: bool = True) -> None:
        self.name = name
        self._clock, self._journal = clock, journal
        self.health = ChannelHealth(name, clock=clock.now)
        if up:
            self.health.set(HealthState.UP, "fake channel")
        self.attempts: list[Sent] = []
        self._script: deque[Script] = deque()
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        """Sends from now on wait (a far end that stopped answering) until `release()`."""
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def will(self, *answers: Script) -> None:
        """The next sends answer these, in order; after them every send is accepted again."""
        self._script.extend(answers)

    def down(self, detail: str = "taken down by the test") -> None:
        self.health.set(HealthState.DOWN, detail)

    def up(self) -> None:
        self.health.set(HealthState.UP, "back up")

    async def send(self, msg: Outgoing) -> SendResult:
        if self._gate is not None:
            await self._gate.wait()
        answer = self._script.popleft() if self._script else SendResult.accepted(f"{self.name}-{len(self.attempts)}")
        ok = isinstance(answer, SendResult) and answer.ok
        self.attempts.append(Sent(self._clock.t, msg, ok, next(self._journal)))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run(self) -> None:
        await asyncio.Event().wait()

    def reborn(self) -> FakeChannel:
        """The same far end for a restarted relay: its record, script and state carry over; the old engine's
        health listeners do not."""
        new = FakeChannel(self.name, self._clock, self._journal, up=self.health.is_up)
        new.attempts, new._script = self.attempts, self._script
        return new


class WatchedStore(SQLiteStore):
    """The real store, telling the test the moment a backup round is committed, so that an ack can land between
    a round's outbox commit and its sends, the one interleaving no fake time can pick."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.round_committed = asyncio.Event()

    async def start_backup_round(
        self, alert_id: str, schedule: Schedule, deliveries: Sequence[DeliveryRecord], at: float
    ) -> list[DeliveryRecord] | None:
        started = await super().start_backup_round(alert_id, schedule, deliveries, at)
        self.round_committed.set()
        return started


# ---- the harness ---------------------------------------------------------------------------------------


class EngineHarness:
    def __init__(
        self, path: Path, *, clock: FakeClock | None = None, policy: Policy = DEFAULT_POLICY,
        desks: Sequence[Desk] | None = None, bundle_window_s: float = BUNDLE_WINDOW_S,
        tracks: TrackParams | None = None,
    ) -> None:
        self.path = path
        self.tracks_enabled = tracks is not None
        self.track_params = tracks or TrackParams()
        self.clock = clock or FakeClock()
        self.policy, self.bundle_window_s = policy, bundle_window_s
        self.desks = list(desks) if desks is not None else [desk()]
        self.acks: list[Acked] = []
        self._journal = itertools.count()
        self.channels: dict[str, FakeChannel] = {
            name: FakeChannel(name, self.clock, self._journal) for name in (policy.primary, *sorted(policy.backups))
        }
        self._tasks: list[asyncio.Task[Any]] = []
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> EngineHarness:
        await self._start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    # ---- what a test does --------------------------------------------------------------------------

    def report(self, report_id: str = "r-1", **fields: Any) -> dict[str, Any]:
        return report(self.clock, report_id, **fields)

    async def accept(self, report_dict: dict[str, Any] | None = None) -> str:
        """File a report as the HTTP API does; returns with the loop quiet (the t=0 sends made)."""
        body = json.dumps(report_dict if report_dict is not None else self.report()).encode()
        result = await self.intake.submit(OPERATOR, body, "http")
        assert result.outcome is Outcome.CREATED and result.alert is not None, result
        await self.clock.settle()
        return result.alert.alert_id

    async def ack(self, alert_id: str, desk_id: str = DESK, channel: str = "mqtt", by: str = "Сидоров") -> AckResult:
        result = await self.engine.acknowledge(alert_id, desk_id, channel, by, source=f"test:{channel}")
        self.acks.append(Acked(self.clock.t, alert_id, desk_id, channel, result.first, next(self._journal)))
        await self.clock.settle()
        return result

    async def run_until(self, t: float) -> None:
        """Let the fake clock run to `t` seconds after it started, every due time on the way honoured."""
        await self.clock.advance_to(self.clock.start + t)

    async def alert(self, alert_id: str) -> AlertRecord:
        found = await self.store.get_alert(alert_id)
        assert found is not None, alert_id
        return found

    def sent(self, channel: str) -> list[Sent]:
        """What the channel took (accepted sends), in order."""
        return [s for s in self.channels[channel].attempts if s.ok]

    def times(self, channel: str, target: str | None = None) -> list[float]:
        return [s.at for s in self.sent(channel) if target is None or s.msg.target == target]

    async def restart(self, *, down_for: float = 0.0) -> None:
        """Stop the relay, let `down_for` fake seconds pass with nothing running, start it on the same file."""
        await self._stop()
        await self.clock.advance(down_for)
        self.channels = {name: c.reborn() for name, c in self.channels.items()}
        await self._start()

    # ---- wiring (relay/operations/daemon.py is the reference) ---------------------------------------------------

    async def _start(self) -> None:
        store = await WatchedStore.open(self.path)
        assert isinstance(store, WatchedStore)
        self.store = store
        self.metrics = metrics = Metrics()
        jobs = Jobs(metrics)
        poke = asyncio.Event()
        topics = Topics("uav")
        primary_channel = self.channels[self.policy.primary]
        primary, backups = plugs(topics, primary_channel, self.channels.get("sms"), self.channels.get("email"),
                                 give_up_s=self.policy.give_up_s, sms_validity_s=int(self.policy.repeat_s))
        dispatcher = Dispatcher(
            store=store, plugs=[primary, *backups],
            renderer=Renderer(ZoneInfo("Europe/Moscow"), {}), topics=topics, clock=self.clock, metrics=metrics,
            bundle_window_s=self.bundle_window_s, ack_links=AckLinkSigner(b"k" * 32, 86400),
            public_url=PUBLIC_URL, poke=poke, jobs=jobs,
        )
        self.engine = engine = Engine(
            store=store, desks=self.desks, policy=self.policy, clock=self.clock, bus=EventBus(), metrics=metrics,
            topics=topics, primary=primary, backups=backups, dispatcher=dispatcher, jobs=jobs, poke=poke,
            book=TrackBook(self.track_params, enabled=self.tracks_enabled),
        )
        await engine.load_tracks()
        self.intake = Intake(engine, self.clock, metrics)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        # the order the daemon cancels them in at the end: the store last, so what the others write is committed
        self._tasks = [
            self._tg.create_task(engine.run(), name="engine"),
            self._tg.create_task(dispatcher.run(), name="dispatch"),
            *(self._tg.create_task(p.channel.run(), name=p.name) for p in (primary, *backups)),
            self._tg.create_task(store.run(), name="store"),
        ]
        await self.clock.settle()

    async def _stop(self) -> None:
        if self._tg is None:
            return
        for task in self._tasks:
            task.cancel()
            await asyncio.wait([task])
        tg, self._tg, self._tasks = self._tg, None, []
        await tg.__aexit__(None, None, None)  # raises what a task raised other than its cancellation
