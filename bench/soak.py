"""`python -m bench.soak`: reports at a steady rate for a minute while the broker, the SMS API, the SMTP server and
the relay itself fail; then every accepted report must have reached someone. Then a recovery measurement: a relay
with N open alerts SIGKILLed and restarted. See bench/README.md, "Soak"."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.cli import relay_version
from bench.env import REPO
from bench.soak_faults import Injected, Injector, draw
from bench.soak_hostile import Crash, CrashWatch, Hostile, HostileResult, hostile_ok, render_crashes, render_hostile
from bench.soak_raid import Raid
from bench.soak_recovery import Recovery, recovery
from bench.soak_world import AUTH, Backups, CpuSampler, Desk, World, send_times, stop_relay, world
from bench.stats import summarize
from bench.table import header, latency_row, rule, value_row
from tests.support.console import Console
from tests.support.relay import report

CONCURRENCY = 20
RESOLVE_WITHIN_S = 90.0
BACKUP_CHANNELS = ("sms", "email")
SENT = ("sent", "delivered")


@dataclass(frozen=True)
class Options:
    reports: int
    duration: float
    seed: int
    open: int
    keep: bool
    hostile: bool = False
    tracks: bool = False
    relays: int = 1


def parse(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--reports", type=int, default=2000, help="reports posted during the soak (2000)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds the posting takes (60)")
    p.add_argument("--seed", type=int, default=1, help="seed for the fault times and the console's acks (1)")
    p.add_argument("--open", type=int, default=10000, help="open alerts for the recovery phase; 0 skips it (10000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 reports in 12 s, 1000 open (about 45 s)")
    p.add_argument("--keep", action="store_true", help="keep var/soak-<pid>/ (logs, stores) afterwards")
    p.add_argument("--hostile", action="store_true", help="mix hostile traffic into the load (bench/soak_hostile.py)")
    p.add_argument("--tracks", action="store_true",
                   help="tracks on, and the reports are callers' sightings of 40 drones crossing the region")
    p.add_argument("--relays", type=int, choices=(1, 3), default=1,
                   help="3: three relays on one PostgreSQL and a three-node NATS cluster, one relay SIGKILLed at 1/3 "
                        "and one NATS node at 2/3 (bench/soak_relays.py); no recovery phase, --open ignored")
    a = p.parse_args(argv)
    if a.relays > 1 and (a.hostile or a.tracks):
        p.error("--relays 3 goes without --hostile and --tracks")
    if a.quick:
        a.reports, a.duration, a.open = 300, 12.0, min(a.open, 1000)
    if a.reports < 1 or a.duration <= 0 or a.open < 0:
        p.error("--reports and --duration must be positive, --open not negative")
    return Options(a.reports, a.duration, a.seed, a.open, a.keep, a.hostile, a.tracks, a.relays)


# ---- posting --------------------------------------------------------------------------------------------------

@dataclass
class Post:
    report_id: str
    t0: float = 0.0  # perf_counter() just before the POST
    status: int | None = None  # None: no answer (connection refused or reset, timeout)
    error: str = ""  # the exception's type name
    detail: str = ""
    alert_id: str = ""  # set only on a 201 with its body
    short_code: str = ""


async def post_steadily(url: str, n: int, duration: float, start: float,
                        body_of: Callable[[str], dict[str, Any]] = report) -> list[Post]:
    """n reports, the i-th started at start + i*duration/n, at most CONCURRENCY in flight."""
    posts = [Post(f"soak-{i}") for i in range(n)]
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(http: aiohttp.ClientSession, p: Post) -> None:
        body = body_of(p.report_id)
        try:
            p.t0 = time.perf_counter()
            async with http.post(f"{url}/api/v1/reports", json=body, headers=AUTH) as r:
                data = await r.read()
                p.status = r.status
                if r.status == 201:
                    answer = json.loads(data)
                    p.alert_id, p.short_code = answer["alert_id"], answer["short_code"]
        except (TimeoutError, aiohttp.ClientError) as exc:
            p.status, p.error, p.detail = None, type(exc).__name__, str(exc)[:160]
        finally:
            limit.release()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        tasks = []
        for i, p in enumerate(posts):
            await asyncio.sleep(max(0.0, start + i * duration / n - time.perf_counter()))
            await limit.acquire()
            tasks.append(asyncio.create_task(one(http, p)))
        await asyncio.gather(*tasks)
    return posts


async def fetch_alerts(url: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """GET /api/v1/alerts/{id} as the operator, for each id (those that answer 200)."""
    out: dict[str, dict[str, Any]] = {}
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(http: aiohttp.ClientSession, alert_id: str) -> None:
        async with limit:
            try:
                async with http.get(f"{url}/api/v1/alerts/{alert_id}", headers=AUTH) as r:
                    if r.status == 200:
                        out[alert_id] = await r.json()
            except (TimeoutError, aiohttp.ClientError):
                pass

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(one(http, a) for a in ids))
    return out


def sent_over(alert: dict[str, Any] | None, channel: str) -> bool:
    return alert is not None and any(d["channel"] == channel and d["state"] in SENT for d in alert["deliveries"])


# ---- the soak phase -------------------------------------------------------------------------------------------

@dataclass
class Soak:
    posts: list[Post]
    start: float  # perf_counter() when the posting began
    injected: Injected
    seen: dict[str, float]  # alert_id -> first console receipt (perf_counter)
    copies: Counter[str]
    console_reports: set[str]  # report ids of every alert the console got
    final: dict[str, dict[str, Any]]  # alert_id -> the relay's view after the wait
    sms_codes: set[str]
    mail_codes: set[str]
    sms_count: int
    mail_count: int
    twilio_calls: int
    sms_faults_left: int
    resolve_s: float
    unresolved: set[str]
    acks_sent: int
    answers_failed: int
    cpu: str
    relay_metrics: str
    load_before: str = ""
    relay_exit: int | None = None
    crashes: list[Crash] = field(default_factory=list)
    hostile: HostileResult | None = None
    relay_log: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[Post] = field(init=False)
    shared_codes: set[str] = field(init=False)  # short codes two or more accepted alerts got
    tracks_escalated: dict[str, set[str]] = field(init=False)  # by channel: tracks a code of which reached the fake

    def __post_init__(self) -> None:
        self.accepted = [p for p in self.posts if p.alert_id]
        counts = Counter(p.short_code for p in self.accepted)
        self.shared_codes = {c for c, k in counts.items() if k > 1}
        self.tracks_escalated = {
            channel: {self.track_of(p) for p in self.accepted if p.short_code not in self.shared_codes
                      and p.short_code in codes}
            for channel, codes in (("sms", self.sms_codes), ("email", self.mail_codes))
        }

    def escalated(self, p: Post, channel: str) -> bool:
        """Its code reached the fake (or, for a code two accepted alerts share, the relay says it was sent); with
        tracks, also a code of its track (a round names a few of the track's codes: any one acks the drone)."""
        if p.short_code in self.shared_codes:
            own = sent_over(self.final.get(p.alert_id), channel)
        else:
            own = p.short_code in (self.sms_codes if channel == "sms" else self.mail_codes)
        return own or self.track_of(p) in self.tracks_escalated[channel]

    def track_of(self, p: Post) -> str:
        return str(self.final.get(p.alert_id, {}).get("track_id") or p.alert_id)

    def acknowledged(self, p: Post) -> bool:
        return self.final.get(p.alert_id, {}).get("state") == "acknowledged"

    def lost(self) -> list[Post]:
        return [p for p in self.accepted if p.alert_id not in self.seen and not self.acknowledged(p)
                and not any(self.escalated(p, c) for c in BACKUP_CHANNELS)]


async def wait_resolved(w: World, accepted: list[Post], desk: Desk, backups: Backups, within_s: float) -> set[str]:
    """Until every accepted alert was seen by the console, escalated or acknowledged; returns those that were not."""
    end = time.monotonic() + within_s
    counts = Counter(p.short_code for p in accepted)
    confirmed: set[str] = set()  # by the relay's API: acknowledged, or (shared code) sent over a backup channel
    next_query = 0.0
    while True:
        backups.update()
        codes = backups.sms | backups.mail
        pending = [p for p in accepted if p.alert_id not in desk.first and p.alert_id not in confirmed
                   and (counts[p.short_code] > 1 or p.short_code not in codes)]
        if pending and time.monotonic() >= next_query:
            views = await fetch_alerts(w.url, [p.alert_id for p in pending])
            for alert_id, a in views.items():
                if a["state"] == "acknowledged" or any(sent_over(a, c) for c in BACKUP_CHANNELS):
                    confirmed.add(alert_id)
            next_query = time.monotonic() + 2.0
            continue
        if not pending or time.monotonic() > end:
            return {p.alert_id for p in pending}
        await asyncio.sleep(0.5)


async def soak(root: Path, o: Options) -> Soak:
    rng = random.Random(o.seed)
    plan = draw(rng, o.duration)
    load_before = loadavg()
    async with world(root, tracks=o.tracks, ack_timeout_s=2, repeat_s=5, give_up_s=60, retry_s=1) as w:
        console = Console(w.broker.port, "airfield-1")
        async with console:
            desk = Desk(console, random.Random(rng.random()))
            reader = asyncio.create_task(desk.run())
            cpu = CpuSampler(w)
            sampler = asyncio.create_task(cpu.run())
            start = time.perf_counter()
            faults = asyncio.create_task(Injector(w, plan, start).run())
            watch = CrashWatch(w, start)
            watcher = asyncio.create_task(watch.run())
            hostile = Hostile(w, o.seed, o.duration) if o.hostile else None
            attack = asyncio.create_task(hostile.run(start)) if hostile else None
            try:
                body = hostile.body if hostile else Raid(o.seed, start).body if o.tracks else report
                posts = await post_steadily(w.url, o.reports, o.duration, start, body)
                injected = await faults
                accepted = [p for p in posts if p.alert_id]
                backups = Backups(w.twilio, w.smtp)
                t = time.perf_counter()
                unresolved = await wait_resolved(w, accepted, desk, backups, RESOLVE_WITHIN_S)
                resolve_s = time.perf_counter() - t
                await desk.settle(within_s=5.0)
                if attack is not None:
                    await attack  # bounded: ends by itself shortly after the posting
                await asyncio.sleep(1.0)  # the last acks reach the relay
                final = await fetch_alerts(w.url, [p.alert_id for p in accepted])
                backups.update()
                metrics = await send_times(w.url)
                if hostile is not None:
                    hostile.check_text(final, {p.report_id: p.alert_id for p in accepted})
            finally:
                faults.cancel()
                watcher.cancel()
                if attack is not None:
                    attack.cancel()
                sampler.cancel()
                reader.cancel()
                desk.close()
        result = Soak(posts, start, injected, dict(desk.first), desk.copies, set(desk.report_of.values()), final,
                      backups.sms, backups.mail, backups.sms_count, backups.mail_count, w.twilio.calls,
                      len(w.twilio.faults), resolve_s, unresolved, desk.acks_sent, desk.answers_failed,
                      cpu.summary(), metrics)
        result.load_before = load_before
        result.crashes = watch.crashes
        result.hostile = hostile.result if hostile else None
        result.relay_exit = await stop_relay(w.relay)
        result.relay_log = w.relay.log_lines()
        return result


# ---- printing -------------------------------------------------------------------------------------------------

def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in c.most_common()) or "none"


def render_soak(s: Soak, o: Options) -> list[str]:
    accepted = s.accepted
    refused = [p for p in s.posts if not p.alert_id]
    why = Counter(p.error or f"HTTP {p.status}" for p in refused)
    seen = [p for p in accepted if p.alert_id in s.seen]
    sms = sum(1 for p in accepted if s.escalated(p, "sms"))
    mail = sum(1 for p in accepted if s.escalated(p, "email"))
    acked = sum(1 for p in accepted if s.acknowledged(p))
    lost = s.lost()
    dups = {a: n for a, n in s.copies.items() if n > 1}
    inj = s.injected
    states = Counter(str(a.get("state")) for a in s.final.values())
    phantom = s.console_reports - {p.report_id for p in accepted}
    ready = f"{inj.relay_ready_s:.2f} s" if inj.relay_ready_s is not None else "-"
    lines = [
        f"uav-relay soak — {datetime.now().astimezone().isoformat(timespec='seconds')}, seed {o.seed}, "
        f"{o.reports} reports over {o.duration:g} s, up to {CONCURRENCY} in flight{', hostile' if o.hostile else ''}"
        f"{', tracks on (40 drones)' if o.tracks else ''}; "
        f"relay at {relay_version()}; "
        f"load average at the start {s.load_before}, at the end {loadavg()}",
        rule(),
        value_row("reports posted", str(len(s.posts))),
        value_row("accepted (201)", str(len(accepted))),
        value_row("refused / unanswered (the 112 system resends)", str(len(refused))),
        *([f"    {_counts(why)}; when: {spans([p.t0 - s.start for p in refused])}"] if refused else []),
        *(f"    e.g. {d}" for d in sorted({p.detail for p in refused if p.detail})[:3]),
        value_row("delivered to the console", str(len(seen))),
        value_row("acknowledged (the relay's state at the end)", str(acked)),
        value_row("escalated by SMS / e-mail (code at the fakes)", f"{sms} / {mail}"),
        *([value_row("tracks at the end", str(len({s.track_of(p) for p in accepted})))] if o.tracks else []),
        value_row("LOST: accepted, none of the above", str(len(lost)), "0", not lost),
        *render_crashes(s.crashes),
        value_row("duplicate console deliveries: alerts, max copies",
                  f"{len(dups)}, {max(dups.values(), default=1)}"),
        header(),
        latency_row("POST -> first console receipt", summarize([s.seen[p.alert_id] - p.t0 for p in seen])),
        value_row("relay restart -> ready, after its SIGKILL", ready),
        rule(),
        by_time(s, seen),
        f"faults: broker SIGKILL {inj.broker_kills}, broker graceful restart {inj.broker_restarts}, "
        f"SMS API faults {sum(inj.sms_faults.values())} ({_counts(inj.sms_faults)}; "
        f"{sum(inj.sms_faults.values()) - s.sms_faults_left} hit a send), SMTP outage {inj.smtp_outages}, "
        f"relay SIGKILL {inj.relay_kills}",
        *(f"  t={t:6.2f} s  {what}" for t, what in inj.timeline),
        f"every accepted report resolved {s.resolve_s:.1f} s after the posting ended"
        if not s.unresolved else f"{len(s.unresolved)} still unresolved {RESOLVE_WITHIN_S:g} s after the posting",
        f"relay's alert states at the end: {_counts(states)}; not found by the API: {len(accepted) - len(s.final)}",
        f"alerts on the console for reports that got no 201 (stored, answer lost): {len(phantom)}",
        f"at the fakes: {s.sms_count} SMS ({s.twilio_calls} create calls), {s.mail_count} e-mails; codes shared by "
        f"two accepted alerts: {len(s.shared_codes)}; console: {s.acks_sent} acks sent, {s.answers_failed} answers "
        f"not published",
        s.cpu,
        s.relay_metrics,
        f"relay exit code after SIGTERM at the end: {exit_text(s.relay_exit)}",
        *render_log(s.relay_log),
        *(render_hostile(s.hostile, sum(1 for p in accepted if p.report_id in s.hostile.text_reports))
          if s.hostile else []),
    ]
    for p in lost[:20]:
        a = s.final.get(p.alert_id)
        deliveries = [(d["channel"], d["target"], d["state"], d["attempts"]) for d in a["deliveries"]] if a else None
        lines.append(f"  LOST {p.report_id} alert {p.alert_id} code {p.short_code} posted at "
                     f"t={p.t0 - s.start:.2f} s; relay: {a['state'] if a else 'not found'} {deliveries}")
        mine = [x for x in s.relay_log if x.get("alert_id") == p.alert_id]
        lines += [f"    relay: {json.dumps(x, ensure_ascii=False)}" for x in mine]
    return lines


def by_time(s: Soak, seen: list[Post], bin_s: float = 10.0) -> str:
    """POST -> console latency by when the report was posted: where in the run the time went."""
    bins: dict[int, list[float]] = {}
    for p in seen:
        bins.setdefault(int((p.t0 - s.start) // bin_s), []).append(s.seen[p.alert_id] - p.t0)
    parts = []
    for b, xs in sorted(bins.items()):
        m = summarize(xs)
        parts.append(f"{b * bin_s:g}-{(b + 1) * bin_s:g} s: {fmt_ms(m.p50_ms)}/{fmt_ms(m.max_ms)}")
    return f"POST -> console by posting time, p50/max: {', '.join(parts)}"


def loadavg() -> str:
    """The 1-minute load average: other work on the machine skews every number here."""
    return Path("/proc/loadavg").read_text().split()[0]


def spans(ts: list[float], gap_s: float = 1.0) -> str:
    """Times as runs: '35.4-36.6 s (40)'."""
    runs: list[list[float]] = []
    for t in sorted(ts):
        if runs and t - runs[-1][-1] <= gap_s:
            runs[-1].append(t)
        else:
            runs.append([t])
    return ", ".join(f"t={r[0]:.1f}-{r[-1]:.1f} s ({len(r)})" for r in runs)


def fmt_ms(v: float) -> str:
    return f"{v:.0f}ms" if v < 1000 else f"{v / 1000:.1f}s"


def exit_text(code: int | None) -> str:
    return "none: still running 15 s after SIGTERM, SIGKILLed" if code is None else str(code)


def render_log(log: list[dict[str, Any]]) -> list[str]:
    def kind(x: dict[str, Any]) -> str:
        what = x.get("event") or str(x.get("msg") or x.get("raw", "")).split("\n")[0][:60]
        return f"{x.get('level', '?')} {what}{'/' + x['channel'] if 'channel' in x else ''}"

    events = Counter(kind(x) for x in log)
    out = [f"relay stderr (log_level warning): {len(log)} lines: {_counts(events)}"]
    bad = [x for x in log if x.get("level") in ("error", "critical") or "raw" in x]
    out += [f"  {json.dumps(x, ensure_ascii=False)[:400]}" for x in bad[:10]]
    return out


def render_recovery(r: Recovery) -> list[str]:
    def secs(vs: list[float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.2f}" for v in vs) + " s"

    def under_1s(vs: list[float | None]) -> bool:
        return all(v is not None and v < 1.0 for v in vs)

    rs = r.restarts
    ready, sms = [x.ready_s for x in rs], [x.first_sms_s for x in rs]
    return [
        f"recovery: {r.accepted} of {r.target} reports accepted in {r.fill_s:.1f} s, no console, ack_timeout_s "
        f"{r.ack_timeout_s:g}; SIGKILL and restart {len(rs)} times (down {secs([x.down_s for x in rs])}); at least "
        f"{r.overdue} timers overdue at the first restart",
        rule(),
        value_row("relay_alerts_open before the kill / once ready",
                  f"{r.open_before:g} / " + " / ".join(f"{x.open_after:g}" for x in rs if x.open_after is not None)
                  if r.open_before is not None else "-"),
        value_row("first start, empty store -> /readyz 200", secs([r.empty_ready_s])),
        value_row("restart -> /readyz 200, each restart", secs(list(ready)), "< 1 s", under_1s(list(ready))),
        value_row("restart -> first SMS at the Twilio fake", secs(sms), "< 1 s", under_1s(sms)),
        value_row("restart -> first e-mail at the SMTP server", secs([x.first_mail_s for x in rs])),
        f"relay exit code after SIGTERM: {exit_text(r.exit_code)}",
    ]


# ---- main -----------------------------------------------------------------------------------------------------

async def run(o: Options, root: Path) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    # The consoles' MQTT clients (aiomqtt/paho) log each broker loss and complain on the loop; counted, not printed.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    loop_errors: Counter[str] = Counter()
    loop.set_exception_handler(lambda _, ctx: loop_errors.update([str(ctx.get("exception") or ctx.get("message"))]))
    if o.relays > 1:
        from bench.soak_relays import soak_relays

        code = await soak_relays(o, root / "relays")
        if loop_errors:
            print(f"errors on the bench's own loop (its MQTT clients losing a node): {_counts(loop_errors)}")
        return code
    s = await soak(root / "soak", o)
    print("\n".join(render_soak(s, o)), flush=True)
    if o.open:
        print(flush=True)
        load_before = loadavg()
        lines = render_recovery(await recovery(root / "recovery", o.open))
        print("\n".join(lines), flush=True)
        print(f"load average at the start of the recovery phase {load_before}, at the end {loadavg()}")
    if loop_errors:
        print(f"errors on the bench's own loop (its MQTT clients losing the broker): {_counts(loop_errors)}")
    return 1 if s.lost() or s.crashes or (s.hostile is not None and not hostile_ok(s.hostile)) else 0


def main(argv: Sequence[str] | None = None) -> int:
    o = parse(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where it was inherited as ignored
    root = REPO / "var" / f"soak-{os.getpid()}"
    root.mkdir(parents=True)
    try:
        return asyncio.run(run(o, root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if o.keep:
            print(f"kept {root.relative_to(REPO)}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
