"""`python -m bench.closed_network`: issue 17's closed-network targets. SMS over SMPP through the SMSC simulator
(throughput with nothing lost or doubled, the time to submit again after a dropped bind), an SMSC receipt into the
delivery state through the relay, and a voice ack by key stopping the alert's pending backup sends. See
bench/README.md, "Closed network: SMPP and voice"."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import in_process
from bench.in_process import say
from bench.stats import summarize
from bench.table import header, latency_row, rule, value_row
from channels.base import HealthState, Outgoing
from channels.smpp import SmppSettings, SmppSmsChannel
from channels.voice import spell_code
from tests.support.broker import Mosquitto
from tests.support.relay import (
    DESK1_PHONE,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smsc import Smsc
from tests.support.smtp import SmtpServer, _Recorder
from tests.support.twilio_fake import FROM_NUMBER, TwilioFake
from tests.support.wait import eventually

SYSTEM_ID, PASSWORD = "relay", "secret"
DESK1_VOICE, DESK1_VOICE2 = "+79005550001", "+79005550002"
FINAL = {"sent", "delivered", "cancelled", "failed"}
# Cyrillic texts of 1, 2 and 3 UCS-2 parts (at most 70 characters in one part, 67 in each of several)
SHORT = "Тревога: БПЛА у аэродрома, код {key}"
MEDIUM = "Тревога БПЛА. Малый беспилотник, высота около 300 м, курс на северо-восток, код {key}"
LONG = ("Тревога БПЛА. Оператор сообщает: малый беспилотник, высота около 300 м, курс на северо-восток, "
        "в 5 км от полосы. Ответьте кодом {key}, чтобы подтвердить получение. Повтор каждые 60 секунд.")


@dataclass(frozen=True)
class Plan:
    sms: int  # part 1: SMS through the simulator
    concurrency: int  # sends at once (the relay's dispatcher bound)
    drops: tuple[int, ...]  # part 2: ms the SMSC refuses connections after each drop (0: accepts at once)
    receipts: int  # part 3: alerts whose receipt is timed
    acks: int  # part 4: calls acknowledged by key
    background: int  # part 4: alerts open beside them, their backups queued
    slow_s: float  # part 4: each SMS create at the Twilio-shaped server and each SMTP DATA takes this long
    quick: bool = False


def parse(argv: Sequence[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m bench.closed_network", description=__doc__)
    p.add_argument("--sms", type=int, default=1000, help="SMS submitted through the simulator (1000)")
    p.add_argument("--concurrency", type=int, default=16, help="sends at once (16)")
    p.add_argument("--drops", default="0,0,0,500,500,500,2000,2000,5000",
                   help="dropped binds: ms the SMSC refuses connections after each (0,0,0,500,500,500,2000,2000,5000)")
    p.add_argument("--receipts", type=int, default=20, help="alerts whose receipt is timed (20)")
    p.add_argument("--acks", type=int, default=10, help="calls acknowledged by key (10)")
    p.add_argument("--background", type=int, default=30,
                   help="alerts open, backups queued, in the voice part (30; the relay rings at most 32 at once)")
    p.add_argument("--slow", type=float, default=1.0, help="seconds each SMS create and SMTP DATA takes (1.0)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 SMS, drops 0 and 500 ms, 5 receipts, 3 acks")
    a = p.parse_args(argv)
    drops = tuple(int(x) for x in a.drops.split(",") if x.strip())
    if a.quick:
        return Plan(200, a.concurrency, (0, 500), 5, 3, 20, a.slow, quick=True)
    return Plan(a.sms, a.concurrency, drops, a.receipts, a.acks, a.background, a.slow)


# ---- the far ends, stamped ---------------------------------------------------------------------------------

class StampedSmsc(Smsc):
    """The simulator, noting when it answers each submit_sm with a message id (perf_counter)."""

    answered_at: list[float]

    def _submit(self, writer: asyncio.StreamWriter, seq: int, data: bytes) -> bool:
        before = len(self.submits)
        keep = super()._submit(writer, seq, data)
        if len(self.submits) > before and self.submits[-1].message_id is not None:
            self.answered_at.append(time.perf_counter())
        return keep


def new_smsc() -> StampedSmsc:
    s = StampedSmsc(system_id=SYSTEM_ID, password=PASSWORD)
    s.answered_at = []
    return s


class Sink:
    def __init__(self) -> None:
        self.receipts = 0

    async def on_reply(self, channel: str, sender: str, text: str, message_id: str) -> str | None:
        return None

    async def on_receipt(self, channel: str, keys: Sequence[str], delivered: bool | None, status: str,
                         error: str | None) -> None:
        self.receipts += 1


class SlowTwilio(TwilioFake):
    """TwilioFake whose SMS creates take `slow_s`; the arrival of each (perf_counter, body) is noted first. Calls
    are not slowed."""

    slow_s: float = 0.0
    arrivals: list[tuple[float, str]]

    async def start(self) -> None:
        self.arrivals = []
        await super().start()

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()  # aiohttp keeps it: the parent's post() reads the same
        self.arrivals.append((time.perf_counter(), str(form.get("Body", ""))))
        await asyncio.sleep(self.slow_s)
        return await super()._create(request)


class SlowRecorder(_Recorder):
    """The SMTP recorder, noting each DATA's arrival (perf_counter, text) and then taking `slow_s` to accept it."""

    def __init__(self, slow_s: float) -> None:
        super().__init__()
        self.slow_s = slow_s
        self.arrivals: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.arrivals.append((time.perf_counter(), envelope.content.decode("utf-8", "replace")))
        await asyncio.sleep(self.slow_s)
        return await super().handle_DATA(server, session, envelope)


def smpp_settings(port: int, **overrides: Any) -> SmppSettings:
    return SmppSettings(hosts=(("127.0.0.1", port),), system_id=SYSTEM_ID, password=PASSWORD, source_addr="UAV",
                        **overrides)


@contextlib.asynccontextmanager
async def bound(channel: SmppSmsChannel) -> AsyncIterator[SmppSmsChannel]:
    task = asyncio.create_task(channel.run())
    try:
        await eventually(lambda: channel.health.state is HealthState.UP, timeout=10, what="bound to the SMSC")
        yield channel
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def text_for(i: int) -> str:
    key = f"K{i:05d}"
    return (SHORT, MEDIUM, LONG)[i % 3].format(key=key)


# ---- 1. throughput ---------------------------------------------------------------------------------------

async def part_throughput(plan: Plan, out: dict[str, Any]) -> None:
    await throughput(plan, out, "tp", "auto")
    await throughput(plan, out, "tp_norcpt", "never")  # the same without receipts: what they cost


async def throughput(plan: Plan, out: dict[str, Any], name: str, receipts: str) -> None:
    say(f"1. {plan.sms} SMS through the simulator, window 10, {plan.concurrency} sends at once, receipts "
        f"{receipts} ...")
    smsc = new_smsc()
    smsc.receipts = receipts
    await smsc.start()
    try:
        sink = Sink()
        async with bound(SmppSmsChannel(smpp_settings(smsc.port), sink)) as ch:
            gate = asyncio.Semaphore(plan.concurrency)
            lat: list[float] = []
            failed: list[str] = []

            async def one(i: int) -> None:
                async with gate:
                    t = time.perf_counter()
                    r = await ch.send(Outgoing(key=f"k{i}", target=f"+7900{i:07d}", body=text_for(i).encode()))
                    lat.append(time.perf_counter() - t)
                    if not r.ok:
                        failed.append(f"k{i}: {r.detail}")

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(plan.sms)))
            wall = time.perf_counter() - t0
            if receipts == "auto":
                await eventually(lambda: sink.receipts >= plan.sms - len(failed), timeout=10, what="the receipts")
        got: dict[str, int] = {}
        for dest, text in smsc.texts():
            got[f"{dest}|{text}"] = got.get(f"{dest}|{text}", 0) + 1
        want = {f"+7900{i:07d}|{text_for(i)}" for i in range(plan.sms)}
        lost = sum(1 for w in want if w not in got)
        dup = sum(n - 1 for n in got.values() if n > 1)
        out[name] = {"n": plan.sms, "wall": wall, "lat": summarize(lat), "failed": len(failed), "lost": lost,
                     "dup": dup, "parts": len(smsc.submits),
                     "unanswered": sum(s.message_id is None for s in smsc.submits),
                     "receipts": sink.receipts, "errors": failed[:3]}
        say(f"  {plan.sms / wall:.0f} SMS/s, {len(smsc.submits)} parts, lost {lost}, doubled {dup}")
    finally:
        await smsc.stop()


# ---- 2. a dropped bind -------------------------------------------------------------------------------------

async def part_drops(plan: Plan, out: dict[str, Any]) -> None:
    say(f"2. dropped binds in a stream of sends: SMSC back after {', '.join(map(str, plan.drops))} ms ...")
    smsc = new_smsc()
    await smsc.start()
    runs: list[dict[str, Any]] = []
    sent: dict[str, int] = {}
    stop = asyncio.Event()
    try:
        sink = Sink()
        async with bound(SmppSmsChannel(smpp_settings(smsc.port), sink)) as ch:
            failures = 0
            counter = iter(range(10**9))

            async def sender() -> None:  # sends one key until it is ok, as the relay resends under the same key
                nonlocal failures
                while not stop.is_set():
                    i = next(counter)
                    while not stop.is_set():
                        r = await ch.send(Outgoing(key=f"s{i}", target=f"+7901{i:07d}", body=text_for(i).encode()))
                        if r.ok:
                            sent[f"+7901{i:07d}|{text_for(i)}"] = 1
                            break
                        failures += 1
                        await asyncio.sleep(0.1)

            senders = [asyncio.create_task(sender()) for _ in range(plan.concurrency)]
            try:
                for ms in plan.drops:
                    await asyncio.sleep(1.0)  # a steady stream first
                    binds = len(smsc.binds)
                    if ms:
                        await smsc.stop()  # every connection cut, and no listener
                        await asyncio.sleep(ms / 1000)
                        await smsc.start()  # the same port
                    else:
                        smsc.drop()
                    back = time.perf_counter()
                    await eventually(lambda back=back: any(t > back for t in smsc.answered_at), timeout=30,  # type: ignore[misc]
                                     interval=0.005, what="a submit_sm_resp after the SMSC came back")
                    first = min(t for t in smsc.answered_at if t > back)
                    runs.append({"ms": ms, "s": first - back, "rebinds": len(smsc.binds) - binds})
                    say(f"  back after {ms} ms: next submit_sm_resp {first - back:.3f} s later")
            finally:
                stop.set()
                await asyncio.gather(*senders, return_exceptions=True)
        got: dict[str, int] = {}
        for dest, text in smsc.texts():
            got[f"{dest}|{text}"] = got.get(f"{dest}|{text}", 0) + 1
        out["drops"] = {"runs": runs, "ok": len(sent), "failures": failures,
                        "lost": sum(1 for k in sent if k not in got),
                        "dup": sum(n - 1 for k, n in got.items() if n > 1 and k in sent),
                        "unanswered": sum(s.message_id is None for s in smsc.submits)}
    finally:
        stop.set()
        await smsc.stop()


# ---- the relay, in this process ---------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def relay_with(cfg: dict[str, Any]) -> AsyncIterator[RunningRelay]:
    async with running_relay(cfg) as running:
        yield running


async def alert_of(relay: RunningRelay, alert_id: str) -> dict[str, Any]:
    return await relay.alert(alert_id, OPERATOR_TOKEN)


# ---- 3. receipt -> delivered ------------------------------------------------------------------------------

async def part_receipts(plan: Plan, out: dict[str, Any], work: Path) -> None:
    say(f"3. receipt -> delivered through the relay, {plan.receipts} alerts ...")
    smsc = new_smsc()
    smsc.receipts = "never"
    await smsc.start()
    broker = Mosquitto(_mkdir(work / "broker3"))
    smtp = SmtpServer()
    try:
        broker.start()
        smtp.start()
        cfg = with_backups(settings_dict(broker.port, work / "data3"), smtp_port=smtp.port,
                           twilio_url="http://127.0.0.1:9", ack_timeout_s=0.5, repeat_s=300, give_up_s=600)
        cfg["sms"] = {"enabled": True, "provider": "smpp", "bundle_window_s": 0.2, "timeout_s": 2,
                      "smpp": {"hosts": [f"127.0.0.1:{smsc.port}"], "system_id": SYSTEM_ID, "password": PASSWORD,
                               "source_addr": "UAV", "enquire_link_s": 5}}
        samples: list[float] = []
        async with relay_with(cfg) as relay:
            await eventually(lambda: relay.metric('relay_channel_up{channel="sms"}'), timeout=10, what="SMS bound")  # type: ignore[arg-type,return-value]
            for n in range(plan.receipts):
                status, accepted = await relay.post_report(report(f"rcpt-{os.getpid()}-{n}"))
                assert status == 201, accepted
                aid = accepted["alert_id"]

                def phone_delivery(a: dict[str, Any]) -> dict[str, Any] | None:
                    return next((d for d in a["deliveries"] if d["channel"] == "sms" and d["target"] == DESK1_PHONE),
                                None)

                async def sent(aid: str = aid) -> bool:
                    d = phone_delivery(await alert_of(relay, aid))
                    return d is not None and d["state"] == "sent"

                await eventually(sent, timeout=15, interval=0.01, what="the SMS recorded as sent")  # type: ignore[arg-type]
                mid = next(s.message_id for s in reversed(smsc.submits)
                           if s.dest == DESK1_PHONE and s.message_id is not None)
                t0 = time.perf_counter()
                await smsc.send_receipt(smsc.receipt_id(mid), dest=DESK1_PHONE)

                async def delivered(aid: str = aid) -> bool:
                    d = phone_delivery(await alert_of(relay, aid))
                    return d is not None and d["state"] == "delivered"

                try:
                    await eventually(delivered, timeout=10, interval=0.01, what="delivered")  # type: ignore[arg-type]
                    samples.append(time.perf_counter() - t0)
                except AssertionError:
                    samples.append(float("inf"))
                await relay.ack(aid)  # closed, so no later round of it muddles the next
        out["receipts"] = {"samples": samples}
        ok = [s for s in samples if s != float("inf")]
        say(f"  p50 {summarize(ok).p50_ms:.0f} ms, max {summarize(ok).max_ms:.0f} ms, "
            f"{len(samples) - len(ok)} never delivered")
    finally:
        smtp.stop()
        broker.stop()
        await smsc.stop()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---- 4. voice ack by key -> pending sends stopped -----------------------------------------------------------

def db_alert(db: Path, alert_id: str) -> tuple[str, dict[str, list[str]]]:
    """The alert's state and its deliveries by state, read from the relay's SQLite file (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (state,) = conn.execute("SELECT state FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        rows = conn.execute("SELECT channel || ' ' || target, state FROM deliveries WHERE alert_id = ?",
                            (alert_id,)).fetchall()
    out: dict[str, list[str]] = {}
    for who, st in rows:
        out.setdefault(st, []).append(who)
    return state, out


async def part_voice(plan: Plan, out: dict[str, Any], work: Path) -> None:
    say(f"4. voice ack by key: {plan.background} alerts, their backups queued (each SMS create and SMTP DATA takes "
        f"{plan.slow_s} s), {plan.acks} of them acknowledged by key 1 ...")
    broker = Mosquitto(_mkdir(work / "broker4"))
    smtp = SmtpServer()
    recorder = SlowRecorder(plan.slow_s)
    smtp._recorder = recorder
    twilio = SlowTwilio()
    twilio.slow_s = plan.slow_s
    runs: list[dict[str, Any]] = []
    try:
        broker.start()
        smtp.start()
        await twilio.start()
        data = work / "data4"
        cfg = with_backups(settings_dict(broker.port, data), smtp_port=smtp.port, twilio_url=twilio.base_url,
                           ack_timeout_s=0.5, repeat_s=300, voice_after_s=1.0, give_up_s=600)
        cfg["voice"] = {"enabled": True, "from_number": FROM_NUMBER}
        cfg["desks"][0] = {**cfg["desks"][0], "voice": [DESK1_VOICE, DESK1_VOICE2]}
        async with relay_with(cfg) as relay:
            order: list[str] = []  # alert ids, in the order posted
            spelled: dict[str, str] = {}  # alert_id -> its code as the call reads it
            short: dict[str, str] = {}
            for n in range(plan.background):
                status, accepted = await relay.post_report(report(f"voice-{os.getpid()}-{n}"))
                assert status == 201, accepted
                order.append(accepted["alert_id"])
                spelled[accepted["alert_id"]] = spell_code(accepted["short_code"])
                short[accepted["alert_id"]] = accepted["short_code"]
            db = data / "relay.db"
            # every alert's first call placed; then the latest alerts (their e-mails at the back of the queue) are
            # answered and acknowledged, one after the other, without waiting for the queue between them
            # (the relay keeps at most 32 calls ringing: voice workers; --background stays within that)
            want = min(plan.background, 32)
            await eventually(lambda: len([c for c in twilio.phone_calls if c.to == DESK1_VOICE]) >= want,
                             timeout=30, interval=0.01, what=f"{want} calls")
            by_alert: dict[str, Any] = {}
            for c in [c for c in twilio.phone_calls if c.to == DESK1_VOICE]:  # picked up, to hear whose it is
                await twilio.answer(c)
                heard = " ".join(c.transcript)
                by_alert.update({a: c for a, code in spelled.items() if code in heard})
            chosen = [a for a in reversed(order) if a in by_alert][:plan.acks]
            for aid in chosen:
                call = by_alert[aid]
                assert call.gather_action, f"the call for {aid} waits for no key"
                state_before, before = db_alert(db, aid)
                arrived_before = sum(1 for t, body in twilio.arrivals + recorder.arrivals if short[aid] in body)
                t0 = time.perf_counter()
                press = asyncio.create_task(twilio.press(call, "1"))
                t_ack = None
                while time.perf_counter() - t0 < 10:  # the ack's commit (which also cancels the queued rows)
                    if db_alert(db, aid)[0] == "acknowledged":
                        t_ack = time.perf_counter()
                        break
                    await asyncio.sleep(0.001)
                webhook = await press
                runs.append({"alert": aid, "t0": t0, "status": webhook.status, "state_before": state_before,
                             "queued_before": len(before.get("queued", [])),
                             "sending_before": len(before.get("sending", [])), "arrived_before": arrived_before,
                             "ack_s": None if t_ack is None else t_ack - t0,
                             "answer_s": time.perf_counter() - t0})
            # then every acknowledged alert's deliveries final: nothing of it can go out any more
            for r in runs:
                async def final(aid: str = r["alert"]) -> bool:
                    a = await alert_of(relay, aid)
                    return all(d["state"] in FINAL for d in a["deliveries"])

                await eventually(final, timeout=60, interval=0.01, what="every delivery final")  # type: ignore[arg-type]
                r["final_s"] = time.perf_counter() - r["t0"]
                _, after = db_alert(db, r["alert"])
                r["cancelled"] = len(after.get("cancelled", []))
                r["cancelled_what"] = sorted(after.get("cancelled", []))
                stamps = [t for t, body in twilio.arrivals + recorder.arrivals if short[r["alert"]] in body]
                after_key = [t - r["t0"] for t in stamps if t > r["t0"]]
                r["sends_after_key"] = len(after_key)
                r["last_send_s"] = max(after_key, default=None)
                ack_s = r["ack_s"] if r["ack_s"] is not None else float("inf")
                r["sends_after_ack"] = sum(1 for x in after_key if x > ack_s)
                r["late_what"] = sorted(src for src, arr in (("sms", twilio.arrivals), ("email", recorder.arrivals))
                                        for t, body in arr if short[r["alert"]] in body and t > r["t0"] + ack_s)
                if os.environ.get("CN_DEBUG"):
                    for src, arr in (("sms", twilio.arrivals), ("mail", recorder.arrivals)):
                        for t, body in arr:
                            if short[r["alert"]] in body and t > r["t0"] + ack_s:
                                i = body.index(short[r["alert"]])
                                say(f"    late {src} at {t - r['t0']:.3f}: {body[max(0, i - 150):i + 60]!r}")
                # "every pending send stopped": the later of the ack's commit and the last send of the alert
                # seen at the far ends after the key
                r["stopped_s"] = max(ack_s, r["last_send_s"] or 0.0)
                say(f"  {r['alert']}: before the key {r['sending_before']} sending + {r['queued_before']} queued, "
                    f"{r['arrived_before']} at the fakes; ack committed {_ms(r['ack_s'])}, key answered "
                    f"{_ms(r['answer_s'])}, sends after the key {r['sends_after_key']} (last {_ms(r['last_send_s'])}), "
                    f"cancelled {r['cancelled']} ({', '.join(r['cancelled_what'])}), sent after the ack: "
                    f"{', '.join(r['late_what']) or 'nothing'}, all final {_ms(r['final_s'])}")
        out["voice"] = {"runs": runs}
    finally:
        await twilio.stop()
        smtp.stop()
        broker.stop()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


async def measure(plan: Plan, work: Path, only: str, out: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()

    def quiet(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # the simulator's sessions, cancelled by its stop(): not news
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            lp.default_exception_handler(context)

    loop.set_exception_handler(quiet)
    steps = {"1": part_throughput, "2": part_drops}
    for name, fn in steps.items():
        if not only or only == name:
            await fn(plan, out)
    if not only or only == "3":
        await part_receipts(plan, out, work)
    if not only or only == "4":
        await part_voice(plan, out, work)


# ---- the table -------------------------------------------------------------------------------------------

def render(info: dict[str, Any], plan: Plan, r: dict[str, Any]) -> list[str]:
    lines = [f"uav-relay, closed network — {info['date']}, {info['cpu']}, {info['cores']} cores, Python "
             f"{info['python']}; relay in this process; load before {info['load_before']}", header(), rule()]
    if "tp" in r:
        t = r["tp"]
        lines.append(value_row(f"1. SMPP: {t['n']} SMS ({t['parts']} parts), {plan.concurrency} at once, window 10",
                               f"{t['n'] / t['wall']:.0f} SMS/s, {t['wall']:.2f} s"))
        lines.append(latency_row("   send() latency", t["lat"]))
        lines.append(value_row("   lost (send failed or not at the SMSC)", f"{t['failed']} failed, {t['lost']} missing",
                               "0", t["failed"] == 0 and t["lost"] == 0))
        lines.append(value_row("   duplicated (a text twice at the SMSC)", str(t["dup"]), "0", t["dup"] == 0))
        lines.append(value_row("   receipts back to the channel's sink", str(t["receipts"])))
        if "tp_norcpt" in r:
            u = r["tp_norcpt"]
            lines.append(value_row("1b. the same, the SMSC sending no receipts", f"{u['n'] / u['wall']:.0f} SMS/s, "
                                   f"{u['wall']:.2f} s"))
            lines.append(latency_row("   send() latency", u["lat"]))
            lines.append(value_row("   lost / duplicated", f"{u['failed'] + u['lost']} / {u['dup']}", "0 / 0",
                                   u["failed"] + u["lost"] + u["dup"] == 0))
        lines.append(rule())
    if "drops" in r:
        d = r["drops"]
        for ms in sorted({x["ms"] for x in d["runs"]}):
            vals = [x["s"] for x in d["runs"] if x["ms"] == ms]
            when = "at once" if ms == 0 else f"after {ms} ms"
            lines.append(value_row(f"2. SMPP: drop, SMSC back {when} -> next resp",
                                   ", ".join(f"{v:.2f}" for v in vals) + " s", "<=2 s", max(vals) <= 2.0))
        lines.append(value_row("   stream: SMS ok / failed sends (resent) / lost / doubled",
                               f"{d['ok']} / {d['failures']} / {d['lost']} / {d['dup']}"))
        lines.append(rule())
    if "receipts" in r:
        s = r["receipts"]["samples"]
        ok = [x for x in s if x != float("inf")]
        lines.append(latency_row(f"3. SMPP receipt -> \"delivered\" in the API (n={len(s)})", summarize(ok),
                                 "<=1 s", len(ok) == len(s) and max(ok, default=0) <= 1.0))
        lines.append(rule())
    if "voice" in r:
        v = r["voice"]["runs"]
        stopped = [x["stopped_s"] for x in v]
        lines.append(latency_row(f"4. voice key 1 -> no send of the alert goes (n={len(v)})", summarize(stopped),
                                 "<=50 ms", max(stopped, default=float("inf")) <= 0.05))
        acks = [x["ack_s"] for x in v if x["ack_s"] is not None]
        lines.append(latency_row("   key 1 POST -> ack committed (SQLite)", summarize(acks)))
        lines.append(latency_row("   key 1 POST -> its webhook answered", summarize([x["answer_s"] for x in v])))
        late = sum(x["sends_after_ack"] for x in v)
        lines.append(value_row("   sends of the alert at the fakes after the ack", str(late), "0", late == 0))
        lines.append(value_row("   waiting to be sent at the key (per alert)",
                               " ".join(str(x["sending_before"] + x["queued_before"] - x["arrived_before"])
                                        for x in v)))
        lines.append(value_row("   of them ended cancelled (per alert)", " ".join(str(x["cancelled"]) for x in v)))
        lines.append(latency_row("   key -> every delivery final (queue drained)",
                                 summarize([x["final_s"] for x in v])))
        lines.append(rule())
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    only = ""
    if "--only" in args:  # 1, 2, 3 or 4: one part (while developing)
        k = args.index("--only")
        only = args[k + 1]
        del args[k:k + 2]
    plan = parse(args)
    return in_process.run("closed-network", lambda work, results: measure(plan, work, only, results),
                          lambda info, results: render(info, plan, results))


if __name__ == "__main__":
    sys.exit(main())
