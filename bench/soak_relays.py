"""`python -m bench.soak --relays 3`: three relays on one PostgreSQL database and a three-node NATS cluster (MQTT
3.1.1). Reports at a steady rate, round-robin over the relays (one that does not answer, or answers 5xx, gets the
same report_id sent to the next: intake is idempotent), while one relay is SIGKILLed at 1/3 of the posting and
started again later, and one NATS node is SIGKILLed at 2/3 and started again later. Two desks' consoles count every
alert and every copy, and answer like dispatchers (some acks late, so backup rounds fire, and the killed relay's
timers are taken over). Then every accepted report must have reached a console; each alert's history must show
each backup round once. See bench/README.md, "Soak", "Three relays"; the setup is bench/soak_relays_world.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.cli import relay_version
from bench.soak import _counts, exit_text, fmt_ms, loadavg, spans
from bench.soak_hostile import Crash, render_crashes
from bench.soak_relays_world import (
    Cluster,
    ClusterConsole,
    RecordingDesk,
    Usage,
    cluster,
    missing_tools,
    stop_relays,
    wait_serving,
)
from bench.soak_world import AUTH, Backups
from bench.stats import summarize
from bench.table import header, latency_row, rule, value_row
from tests.support.relay import report

if TYPE_CHECKING:
    from bench.soak import Options

CONCURRENCY = 20  # POSTs in flight at most, as the single-relay soak
ATTEMPT_S = 5.0  # a relay that has not answered a POST by then is treated as down: the next one gets the report
GIVE_UP_S = 60.0  # a report no relay accepted within this is "unanswered"
CONSOLE_WITHIN_S = 90.0  # after the posting, how long accepted alerts are waited for on the consoles
ALL_DESKS_S = 10.0  # and then, how long an alert routed to both desks is waited for on the second one
NODE_WINDOW_S = 40.0  # copies this long after the node kill count as "after the node kill" (ack_wait is 10 s)
DESKS = ("airfield-1", "airfield-2")
DESK2_EVERY = 4  # every 4th report is inside airfield-2's area: it goes to both desks (airfield-1 takes all)
DESK2_LOCATION = {"lat": 43.1, "lon": 131.9, "district": "Надеждинский район"}
# the single-relay soak's, but give_up_s 30 (the 20 % never acked make a round every 5 s until then) and acks
# later: 80 % acked after 0-6 s, so about half of those get a first backup round at 3 s
ESCALATION = {"ack_timeout_s": 3.0, "repeat_s": 5.0, "give_up_s": 30.0, "retry_s": 1.0}
ACK_SHARE, ACK_MAX_DELAY_S = 0.8, 6.0
LEASE_S = 5.0  # store.lease_s: the relays' default, not set in their config


# ---- posting --------------------------------------------------------------------------------------------------

@dataclass
class Attempt:
    relay: int  # index into the relays
    at: float  # perf_counter() before the POST
    outcome: str  # the HTTP status, or the exception's type name


@dataclass
class Post:
    report_id: str
    first: int  # the relay tried first (round-robin)
    desk2: bool  # located in airfield-2's area too
    attempts: list[Attempt] = field(default_factory=list)
    status: int | None = None  # the final answer; None: no relay answered 2xx/4xx within GIVE_UP_S
    alert_id: str = ""
    short_code: str = ""
    desks: tuple[str, ...] = ()
    by: int | None = None  # the relay that answered 200/201

    @property
    def t0(self) -> float:
        return self.attempts[0].at if self.attempts else math.nan

    @property
    def owner(self) -> int | None:
        """The relay that stored it: the one that answered 201; for a 200 (the replay of a report already stored),
        the first relay that got it and gave no answer (it stored it and died, or answered too late)."""
        if self.status == 200:
            for a in self.attempts:
                if not a.outcome.isdigit():
                    return a.relay
        return self.by


async def post_round_robin(urls: list[str], n: int, duration: float, start: float) -> list[Post]:
    """Report i at start + i*duration/n to relay i mod 3, then the next, until one answers (at most CONCURRENCY in
    flight, as the single-relay soak)."""
    posts = [Post(f"relays-{i}", i % len(urls), i % DESK2_EVERY == DESK2_EVERY - 1) for i in range(n)]
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(http: aiohttp.ClientSession, p: Post) -> None:
        body = report(p.report_id, location=DESK2_LOCATION) if p.desk2 else report(p.report_id)
        give_up = time.perf_counter() + GIVE_UP_S
        try:
            k = 0
            while time.perf_counter() < give_up:
                i = (p.first + k) % len(urls)
                k += 1
                t = time.perf_counter()
                try:
                    async with asyncio.timeout(ATTEMPT_S), http.post(f"{urls[i]}/api/v1/reports", json=body,
                                                                      headers=AUTH) as r:
                        data = await r.read()
                        outcome = str(r.status)
                        if r.status in (200, 201):
                            answer = json.loads(data)
                            p.status, p.by, p.alert_id = r.status, i, answer["alert_id"]
                            p.short_code, p.desks = answer["short_code"], tuple(answer.get("desks") or ())
                            p.attempts.append(Attempt(i, t, outcome))
                            return
                        if r.status != 429 and r.status < 500:  # refused for good: no other relay would differ
                            p.status = r.status
                            p.attempts.append(Attempt(i, t, outcome))
                            return
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
                    outcome = type(exc).__name__
                p.attempts.append(Attempt(i, t, outcome))
                if k % len(urls) == 0:
                    await asyncio.sleep(0.5)  # no relay took it this round
        finally:
            limit.release()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY * len(urls))
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = []
        for i, p in enumerate(posts):
            await asyncio.sleep(max(0.0, start + i * duration / n - time.perf_counter()))
            await limit.acquire()
            tasks.append(asyncio.create_task(one(http, p)))
        await asyncio.gather(*tasks)
    return posts


async def fetch_each(urls: list[str], ids: list[str], path: str) -> dict[str, Any]:
    """GET path.format(alert_id) as the operator from the first relay that answers, for each id."""
    out: dict[str, Any] = {}
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(http: aiohttp.ClientSession, n: int, alert_id: str) -> None:
        async with limit:
            for k in range(len(urls)):
                url = urls[(n + k) % len(urls)]
                try:
                    async with asyncio.timeout(10), http.get(url + path.format(alert_id), headers=AUTH) as r:
                        if r.status == 200:
                            out[alert_id] = await r.json()
                            return
                        if r.status == 404:
                            return
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    continue

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http, n, a) for n, a in enumerate(ids)))
    return out


# ---- the faults -----------------------------------------------------------------------------------------------

@dataclass
class Faults:
    relay: int  # index of the relay killed
    relay_kill_at: float  # planned, seconds after the posting started
    node_kill_at: float
    relay_down_s: float  # how long each stays down
    node_down_s: float
    timeline: list[tuple[float, str]] = field(default_factory=list)
    relay_kill: float = math.nan  # perf_counter()
    relay_kill_wall: float = math.nan  # time.time(), for the relays' log and history times
    relay_ready_s: float | None = None  # its restart (Popen) -> /readyz 200
    node: int | None = None
    node_kill: float = math.nan
    node_kill_wall: float = math.nan
    node_clients: list[str] = field(default_factory=list)  # MQTT clients on the killed node when it was killed
    node_led: str = ""  # the JetStream groups it led then
    node_serving_s: float | None = None  # its restart -> it accepts an MQTT CONNECT


class Injector:
    def __init__(self, c: Cluster, f: Faults, start: float, client_ids: list[str]) -> None:
        self.c, self.f, self.start, self.client_ids = c, f, start, client_ids

    def _log(self, what: str) -> None:
        self.f.timeline.append((time.perf_counter() - self.start, what))

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.start + at - time.perf_counter()))

    async def run(self) -> None:
        f, c = self.f, self.c
        relay = c.relays[f.relay]
        name = relay.settings["mqtt"]["client_id"]
        await self._until(f.relay_kill_at)
        pid = relay.proc.pid if relay.proc else None
        f.relay_kill, f.relay_kill_wall = time.perf_counter(), time.time()
        relay.kill9()  # SIGKILL by its PID
        self._log(f"{name} SIGKILL (PID {pid})")
        await self._until(f.relay_kill_at + f.relay_down_s)
        t = time.perf_counter()
        relay.start()
        self._log(f"{name} started again")
        with contextlib.suppress(AssertionError):  # it exited at once: the crash watch counts it
            await relay.wait_ready(timeout=60)
            f.relay_ready_s = time.perf_counter() - t
            self._log(f"{name} ready, {f.relay_ready_s:.2f} s after its start")

        await self._until(f.node_kill_at)
        where, leaders = await asyncio.to_thread(self._where)
        clients = Counter(where.values())
        led = Counter(leaders.values())
        # the node that leads the most JetStream groups (the MQTT streams and the sessions' consumers: their
        # elections are what stalls MQTT), then the one most of the relays and consoles are on
        f.node = max(range(len(c.nats.nodes)), key=lambda n: (led[c.nats.nodes[n].name], clients[n], -n))
        node = c.nats.nodes[f.node]
        f.node_clients = sorted(k for k, v in where.items() if v == f.node)
        mine = [g for g, leader in leaders.items() if leader == node.name]
        streams = [g for g in mine if g != "meta" and " > " not in g]
        f.node_led = (f"{'the meta leader, ' if 'meta' in mine else ''}{len(streams)} of "
                      f"{sum(1 for g in leaders if g != 'meta' and ' > ' not in g)} MQTT streams, "
                      f"{len(mine) - len(streams) - ('meta' in mine)} of {sum(1 for g in leaders if ' > ' in g)} "
                      "consumers")
        pid = node.proc.pid if node.proc else None
        f.node_kill, f.node_kill_wall = time.perf_counter(), time.time()
        c.nats.kill(node)  # SIGKILL by its PID
        self._log(f"NATS node {node.name} SIGKILL (PID {pid}); it led {f.node_led}; on it: "
                  f"{', '.join(f.node_clients) or 'nobody'}")
        await self._until(f.node_kill_at + f.node_down_s)
        c.nats.start_node(node)
        self._log(f"NATS node {node.name} started again")
        with contextlib.suppress(TimeoutError, RuntimeError):
            f.node_serving_s = await wait_serving(c.nats, node)
            self._log(f"NATS node {node.name} accepts MQTT CONNECTs, {f.node_serving_s:.2f} s after its start")

    def _where(self) -> tuple[dict[str, int], dict[str, str]]:
        """Which node each MQTT client is on; which node leads each JetStream group (blocking: /connz, /jsz)."""
        out = {}
        for client_id in self.client_ids:
            node = self.c.nats.node_of(client_id)
            if node is not None:
                out[client_id] = self.c.nats.nodes.index(node)
        return out, self.c.nats.leaders()


class CrashWatch:
    """A relay or NATS node that exited on its own (the injector's kills set `proc` to None in the same loop step)
    is a crash: counted, and started again so the soak goes on."""

    def __init__(self, c: Cluster, start: float) -> None:
        self.c, self.start = c, start
        self.crashes: list[Crash] = []
        self.node_exits: list[str] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for r in self.c.relays:
                if r.proc is not None and r.proc.poll() is not None:
                    self.crashes.append(Crash(time.perf_counter() - self.start, r.proc.returncode,
                                              f"{r.settings['mqtt']['client_id']}:\n{r.log_tail(20)}"))
                    r.proc = None
                    r.start()
            for node in self.c.nats.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    self.node_exits.append(f"t={time.perf_counter() - self.start:.1f} s {node.name} exited with "
                                           f"{node.proc.returncode}: {self.c.nats.log_tail(node, 3)}")
                    node.proc = None
                    self.c.nats.start_node(node)


# ---- the run --------------------------------------------------------------------------------------------------

@dataclass
class Result:
    posts: list[Post]
    start: float
    faults: Faults
    desks: list[RecordingDesk]
    console_connects: dict[str, list[tuple[float, int]]]  # desk -> (perf_counter, node) of each CONNECT
    waited_s: float
    views: dict[str, Any]  # alert_id -> GET /api/v1/alerts/{id}
    histories: dict[str, Any]  # alert_id -> GET /api/v1/alerts/{id}/history
    logs: dict[str, list[dict[str, Any]]]  # relay name -> its log lines (every incarnation)
    exits: list[int | None]
    crashes: list[Crash]
    node_exits: list[str]
    usage: list[str]
    sms: int
    mails: int
    start_wall: float  # time.time() when the posting began
    lease_s: float
    started_s: float
    load_before: str
    load_after: str = ""
    accepted: list[Post] = field(init=False)
    seen: dict[str, float] = field(init=False)  # alert_id -> first receipt on any console

    def __post_init__(self) -> None:
        self.accepted = [p for p in self.posts if p.alert_id]
        self.seen = {}
        for d in self.desks:
            for a, t in d.first.items():
                self.seen[a] = min(t, self.seen.get(a, math.inf))

    def dead_alerts(self) -> list[Post]:
        """The killed relay's alerts: stored by it before its SIGKILL."""
        f = self.faults
        return [p for p in self.accepted if p.owner == f.relay and p.t0 < f.relay_kill]


async def soak_relays(o: Options, root: Path) -> int:
    why = missing_tools()
    if why:
        print(f"soak --relays 3 SKIPPED: {why}", file=sys.stderr, flush=True)
        return 0
    rng = random.Random(o.seed)
    # the killed relay stays down past its lease (lease_s 5, the default), so that another takes its work over
    down_s = min(10.0, o.duration / 6)
    faults = Faults(relay=rng.randrange(3), relay_kill_at=o.duration / 3, node_kill_at=2 * o.duration / 3,
                    relay_down_s=max(LEASE_S + 3, down_s), node_down_s=down_s)
    load_before = loadavg()
    async with cluster(root, ESCALATION) as c:
        consoles = [ClusterConsole(c.mqtt_ports, n, desk) for n, desk in enumerate(DESKS)]  # on nodes 1 and 2
        async with contextlib.AsyncExitStack() as stack:
            for console in consoles:
                await stack.enter_async_context(console)
            desks = [RecordingDesk(k, random.Random(rng.random()), ACK_SHARE, ACK_MAX_DELAY_S) for k in consoles]
            readers = [asyncio.create_task(d.run()) for d in desks]
            usage = Usage(c)
            background = [asyncio.create_task(usage.run())]
            start, start_wall = time.perf_counter(), time.time()
            client_ids = [r.settings["mqtt"]["client_id"] for r in c.relays] + [k.identifier for k in consoles]
            injector = asyncio.create_task(Injector(c, faults, start, client_ids).run())
            watch = CrashWatch(c, start)
            background.append(asyncio.create_task(watch.run()))
            try:
                posts = await post_round_robin(c.urls, o.reports, o.duration, start)
                await injector
                accepted = [p for p in posts if p.alert_id]
                t = time.perf_counter()
                await wait_seen(accepted, desks, CONSOLE_WITHIN_S)
                waited_s = time.perf_counter() - t
                for d in desks:
                    await d.settle(within_s=10.0)
                await asyncio.sleep(1.0)  # the last acks reach the relays
                ids = [p.alert_id for p in accepted]
                views = await fetch_each(c.urls, ids, "/api/v1/alerts/{}")
                histories = await fetch_each(c.urls, ids, "/api/v1/alerts/{}/history")
                backups = Backups(c.twilio, c.smtp)
                backups.update()
            finally:
                injector.cancel()
                for task in [*background, *readers]:
                    task.cancel()
                for d in desks:
                    d.close()
        exits = await stop_relays(c.relays)
        result = Result(posts, start, faults, desks, {k.desk_id: k.connects for k in consoles}, waited_s,
                        views, histories, {r.settings["mqtt"]["client_id"]: r.log_lines() for r in c.relays},
                        exits, watch.crashes, watch.node_exits, usage.summary(), backups.sms_count,
                        backups.mail_count, start_wall, c.lease_s, c.started_s, load_before)
    result.load_after = loadavg()
    print("\n".join(render(result, o)), flush=True)
    return 1 if lost(result) or result.crashes or repeated_rounds(result) else 0


async def wait_seen(accepted: list[Post], desks: list[RecordingDesk], within_s: float) -> None:
    """Until every accepted alert is on a console (at most within_s); then at most ALL_DESKS_S more until each is
    on every desk it was routed to."""
    by_desk = {d.desk_id: d for d in desks}

    def on_none(p: Post) -> bool:
        return all(p.alert_id not in d.first for d in desks)

    def on_too_few(p: Post) -> bool:
        return any(p.alert_id not in by_desk[k].first for k in p.desks if k in by_desk)

    for still_missing, bound_s in ((on_none, within_s), (on_too_few, ALL_DESKS_S)):
        end = time.perf_counter() + bound_s
        while True:
            if not any(still_missing(p) for p in accepted) or time.perf_counter() > end:
                break
            await asyncio.sleep(0.2)


# ---- what the numbers say -------------------------------------------------------------------------------------

def lost(r: Result) -> list[Post]:
    return [p for p in r.accepted if p.alert_id not in r.seen]


def wall(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def rounds_of(r: Result, alert_id: str) -> list[tuple[int, float]]:
    """(round, at) of each backup_round event in the alert's history, oldest first."""
    events = (r.histories.get(alert_id) or {}).get("events") or []
    return [(int(e["detail"].get("round", 0)), wall(e["at"])) for e in events if e.get("kind") == "backup_round"]


def repeated_rounds(r: Result) -> dict[str, list[int]]:
    """alert_id -> the round numbers it has more than once."""
    out = {}
    for p in r.accepted:
        counts = Counter(n for n, _ in rounds_of(r, p.alert_id))
        twice = sorted(n for n, k in counts.items() if k > 1)
        if twice:
            out[p.alert_id] = twice
    return out


def lateness(r: Result, alert_id: str) -> list[tuple[float, float]]:
    """(due, late_s) of each backup round: round 1 due ack_timeout_s after the alert was accepted, each later one
    repeat_s after the one before (relay/domain/escalation.py). A round 1 before its due time was a failover."""
    view = r.views.get(alert_id)
    if view is None:
        return []
    out = []
    prev = None
    for n, at in rounds_of(r, alert_id):
        due = (wall(view["created_at"]) + ESCALATION["ack_timeout_s"]) if n <= 1 or prev is None \
            else prev + ESCALATION["repeat_s"]
        if at >= due - 0.05:
            out.append((due, at - due))
        prev = at
    return out


@dataclass
class Dups:
    relay_kill: int = 0
    node_kill: int = 0
    other: int = 0
    alerts: set[str] = field(default_factory=set)
    node_kill_alerts: set[str] = field(default_factory=set)
    max_copies: int = 1


def duplicates(r: Result) -> Dups:
    f = r.faults
    dead = {p.alert_id for p in r.dead_alerts()}
    out = Dups()
    for d in r.desks:
        for alert_id, times in d.copy_at.items():
            out.max_copies = max(out.max_copies, len(times))
            for t in times[1:]:
                out.alerts.add(alert_id)
                if alert_id in dead and t >= f.relay_kill:
                    out.relay_kill += 1
                elif f.node_kill <= t <= f.node_kill + NODE_WINDOW_S:
                    out.node_kill += 1
                    out.node_kill_alerts.add(alert_id)
                else:
                    out.other += 1
    return out


def log_events(r: Result, event: str, since: float = -math.inf) -> list[tuple[float, str, dict[str, Any]]]:
    """(wall time, relay, line) of each log line of this event at or after `since`, in time order."""
    out = []
    for name, lines in r.logs.items():
        for x in lines:
            if x.get("event") == event and "ts" in x and wall(x["ts"]) >= since:
                out.append((wall(x["ts"]), name, x))
    return sorted(out, key=lambda e: e[0])


def back_up(r: Result) -> list[tuple[str, float]]:
    """Each relay's first channel_up for MQTT after the node kill (wall time)."""
    out = []
    for name in r.logs:
        ups = [t for t, n, x in log_events(r, "channel_up", r.faults.node_kill_wall)
               if n == name and x.get("channel") == "mqtt"]
        if ups:
            out.append((name, ups[0]))
    return out


def consoles_back(r: Result) -> list[tuple[str, float, int]]:
    """Each console's first CONNECT after the node kill, where it had to move (perf_counter, node index)."""
    out = []
    for desk, connects in r.console_connects.items():
        after = [(t, node) for t, node in connects if t >= r.faults.node_kill]
        if after:
            out.append((desk, *after[0]))
    return out


# ---- printing -------------------------------------------------------------------------------------------------

def secs(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.2f} s"


def render(r: Result, o: Options) -> list[str]:
    f = r.faults
    names = list(r.logs)
    killed = names[f.relay]
    accepted, seen = r.accepted, [p for p in r.accepted if p.alert_id in r.seen]
    unanswered = [p for p in r.posts if p.status is None]
    refused = [p for p in r.posts if p.status is not None and not p.alert_id]
    retried = [p for p in accepted if len(p.attempts) > 1]
    replays = [p for p in accepted if p.status == 200]
    gone = lost(r)
    both = [p for p in accepted if len(p.desks) > 1]
    one_of_two = [p for p in both if sum(p.alert_id in d.first for d in r.desks) == 1]
    receipts = sum(len(d.first) for d in r.desks)
    dups = duplicates(r)
    n_dups = dups.relay_kill + dups.node_kill + dups.other
    dup_pct = 100 * n_dups / max(1, receipts)
    republished = {x.get("alert_id") for _, _, x in log_events(r, "delivery_failed", f.node_kill_wall)
                   if x.get("channel") == "mqtt"} & dups.node_kill_alerts
    ours = {p.alert_id for p in accepted}
    phantom = {a for d in r.desks for a in d.first} - ours
    twice = repeated_rounds(r)
    all_rounds = sum(len(rounds_of(r, p.alert_id)) for p in accepted)
    escalated = sum(1 for p in accepted if rounds_of(r, p.alert_id))
    missing_history = len(accepted) - len(r.histories)

    # the relay kill
    takeovers = log_events(r, "takeover", f.relay_kill_wall)
    first_takeover = next(((t, n, x) for t, n, x in takeovers if n != killed), None)
    takeover_s = first_takeover[0] - f.relay_kill_wall if first_takeover else None
    dead = r.dead_alerts()
    waiting = [p for p in dead if r.seen.get(p.alert_id, math.inf) > f.relay_kill]
    last_dead = max((r.seen[p.alert_id] - f.relay_kill for p in waiting if p.alert_id in r.seen), default=None)
    late_dead = [late for p in dead for due, late in lateness(r, p.alert_id)
                 if f.relay_kill_wall <= due <= f.relay_kill_wall + f.relay_down_s + r.lease_s + 2]
    dead_ids = {p.alert_id for p in dead}
    late_other = sorted(late for p in accepted if p.alert_id not in dead_ids for _, late in lateness(r, p.alert_id))
    target_s = r.lease_s + 1

    # the node kill
    after_node = [p for p in seen if p.t0 >= f.node_kill]
    flowing = min((r.seen[p.alert_id] for p in after_node), default=math.nan) - f.node_kill
    receipts_at = sorted(t for d in r.desks for t in d.first.values())
    window = [f.node_kill, *[t for t in receipts_at if f.node_kill <= t <= f.node_kill + 30]]
    gap = max((b - a for a, b in itertools.pairwise(window)), default=math.nan)
    stalled = [r.seen[p.alert_id] - p.t0 for p in seen if f.node_kill <= p.t0 <= f.node_kill + 10]

    n_relays = len(names)
    by_relay = Counter(p.by for p in accepted)
    lines = [
        f"uav-relay soak, three relays — {datetime.now().astimezone().isoformat(timespec='seconds')}, seed {o.seed}, "
        f"{o.reports} reports over {o.duration:g} s round-robin to {n_relays} relays, up to 20 in flight; one "
        f"PostgreSQL, NATS 3 nodes (MQTT 3.1.1); relay at {relay_version()}; load average at the start "
        f"{r.load_before}, at the end {r.load_after}",
        rule(),
        value_row("reports posted", str(len(r.posts))),
        value_row("accepted (201, or 200 replay from another relay)", f"{len(accepted)}"),
        "    by relay: " + ", ".join(f"{names[i]} {by_relay[i]}" for i in range(n_relays))
        + f"; needed another relay: {len(retried)} ({len(replays)} of them answered 200, a replay); when: "
        + (spans([p.t0 - r.start for p in retried]) or "-"),
        value_row("unanswered by every relay (60 s) / refused 4xx", f"{len(unanswered)} / {len(refused)}", "0 / 0",
                  not unanswered and not refused),
        value_row("on a desk's console", str(len(seen))),
        value_row("LOST: accepted, never on a console", str(len(gone)), "0", not gone),
        value_row("routed to both desks, on one console only", f"{len(one_of_two)} of {len(both)}"),
        value_row("duplicates on consoles: copies, % of alerts", f"{n_dups}, {dup_pct:.2f} %", "<= 0.1 %",
                  dup_pct <= 0.1),
        value_row("  after the relay kill (its unrecorded sends)", str(dups.relay_kill)),
        value_row(f"  within {NODE_WINDOW_S:g} s after the node kill", str(dups.node_kill)),
        *([f"    of {len(dups.node_kill_alerts)} alerts, {len(republished)} published again by a relay whose "
           "publish failed (no PUBACK) at the kill"] if dups.node_kill_alerts else []),
        value_row("  other", str(dups.other)),
        value_row("backup rounds (alert histories)", f"{all_rounds} on {escalated} alerts"),
        value_row("backup rounds fired twice (alerts)", str(len(twice)), "0", not twice),
        *render_crashes(r.crashes),
        header(),
        latency_row("POST -> first console receipt", summarize([r.seen[p.alert_id] - p.t0 for p in seen])),
        latency_row("backup round lateness, other alerts", summarize(late_other)),
        rule(),
        f"relay kill: {killed} SIGKILLed at t={f.relay_kill - r.start:.1f} s, started again at "
        f"t={f.relay_kill - r.start + f.relay_down_s:.1f} s (ready {secs(f.relay_ready_s)} after its start)",
        value_row("kill -> a survivor's \"takeover\" log event", secs(takeover_s), f"<= {target_s:g} s",
                  takeover_s is not None and takeover_s <= target_s),
        value_row(f"kill -> last of its alerts on a console (n={len(waiting)})", secs(last_dead),
                  f"<= {target_s:g} s", None if last_dead is None else last_dead <= target_s),
        value_row(f"its timers due meanwhile: latest late (n={len(late_dead)})",  # kill .. restart + lease + 2
                  secs(max(late_dead, default=None)), f"<= {target_s:g} s",
                  None if not late_dead else max(late_dead) <= target_s),
        f"node kill: NATS {f'n{f.node + 1}' if f.node is not None else '-'} SIGKILLed at "
        f"t={f.node_kill - r.start:.1f} s (it led {f.node_led or '-'}; on it: "
        f"{', '.join(f.node_clients) or 'nobody'}), started again at "
        f"t={f.node_kill - r.start + f.node_down_s:.1f} s (serving MQTT {secs(f.node_serving_s)} after its start)",
        value_row("kill -> a report posted after it on a console", secs(flowing), "3 s: not with NATS 2.9"),
        value_row("longest pause between console receipts", secs(gap)),
        latency_row("POST -> console, posted 0-10 s after it", summarize(stalled)),
        rule(),
        by_time(r, seen),
        "timeline:",
        *(f"  t={t:6.2f} s  {what}" for t, what in sorted(f.timeline)),
    ]
    lines += [
        f"startup (PostgreSQL, NATS, three relays ready and connected) {r.started_s:.1f} s; after the posting, "
        f"waited {r.waited_s:.1f} s for the consoles",
        "after the node kill, MQTT up again (channel_up, CONNACK): " + ", ".join(
            [f"{n} +{t - f.node_kill_wall:.2f} s" for n, t in back_up(r)]
            + [f"console-{k} +{t - f.node_kill:.2f} s (n{node + 1})" for k, t, node in consoles_back(r)]),
        "takeover events after the kill: " + ("; ".join(
            f"{n} +{t - f.relay_kill_wall:.2f} s ({x.get('alerts')} alerts)" for t, n, x in takeovers) or "none"),
        f"alerts the killed relay had stored before its kill: {len(dead)}; not on a console at the kill: "
        f"{len(waiting)}; backup rounds on them after the kill: "
        f"{sum(1 for p in dead for _, at in rounds_of(r, p.alert_id) if at >= f.relay_kill_wall)}",
        f"relay's alert states at the end: {_counts(Counter(str(v.get('state')) for v in r.views.values()))}; "
        f"histories not read: {missing_history}",
        f"alerts on the consoles for reports no relay answered (stored, answer lost): {len(phantom)}",
        "consoles: " + ", ".join(f"{d.desk_id} {len(d.first)} alerts, {d.acks_sent} acks, {d.answers_failed} "
                                  f"answers not published, moved node {len(r.console_connects[d.desk_id]) - 1}x"
                                  for d in r.desks),
        f"at the fakes: {r.sms} SMS, {r.mails} e-mails",
        *r.usage,
        "relay exit codes after SIGTERM at the end: " + ", ".join(
            f"{n} {exit_text(code)}" for n, code in zip(names, r.exits, strict=True)),
        *(f"NATS node exited on its own: {x}" for x in r.node_exits),
        *render_logs(r),
    ]
    for p in gone[:20]:
        v = r.views.get(p.alert_id)
        deliveries = [(d["desk_id"], d["channel"], d["state"], d["attempts"]) for d in v["deliveries"]] if v else None
        lines.append(f"  LOST {p.report_id} alert {p.alert_id} posted at t={p.t0 - r.start:.2f} s, stored by "
                     f"{names[p.owner] if p.owner is not None else '?'}; relay: {v['state'] if v else 'not found'} "
                     f"{deliveries}")
    for alert_id, numbers in list(twice.items())[:10]:
        lines.append(f"  ROUND TWICE {alert_id}: rounds {numbers}; " + ", ".join(
            f"{n}@{datetime.fromtimestamp(at).time().isoformat(timespec='milliseconds')}"
            for n, at in rounds_of(r, alert_id)))
    return lines


def by_time(r: Result, seen: list[Post], bin_s: float = 10.0) -> str:
    bins: dict[int, list[float]] = {}
    for p in seen:
        bins.setdefault(int((p.t0 - r.start) // bin_s), []).append(r.seen[p.alert_id] - p.t0)
    parts = []
    for b, xs in sorted(bins.items()):
        m = summarize(xs)
        parts.append(f"{b * bin_s:g}-{(b + 1) * bin_s:g} s: {fmt_ms(m.p50_ms)}/{fmt_ms(m.max_ms)}")
    return f"POST -> console by posting time, p50/max: {', '.join(parts)}"


def render_logs(r: Result) -> list[str]:
    """Each relay's warnings and errors by event; the lease and takeover events; the first error lines."""
    out = []
    for name, lines in r.logs.items():
        events = Counter(f"{x.get('level', '?')} {x.get('event') or str(x.get('msg') or x.get('raw', ''))[:50]}"
                         for x in lines if x.get("level") in ("warning", "error", "critical") or "raw" in x)
        out.append(f"{name} log: {len(lines)} lines; warnings and errors: {_counts(events)}")
    watched = ("takeover", "lease_lapsed", "lease_other_instance", "job_failed")
    for event in watched:
        found = log_events(r, event)
        if found:
            out.append(f"  {event}: " + "; ".join(
                f"{n} t={t - r.start_wall:.1f} s"
                f"{' ' + str(x.get('alerts')) + ' alerts' if 'alerts' in x else ''}"
                f"{' ' + str(x.get('error', ''))[:80] if event == 'job_failed' else ''}"
                for t, n, x in found[:12]) + (f" (+{len(found) - 12} more)" if len(found) > 12 else ""))
    bad = [(n, x) for n, lines in r.logs.items() for x in lines
           if (x.get("level") in ("error", "critical") or "raw" in x) and x.get("event") not in watched]
    out += [f"  {n}: {json.dumps(x, ensure_ascii=False)[:300]}" for n, x in bad[:8]]
    return out
