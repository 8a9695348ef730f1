"""`python -m bench.soak --hostile`: hostile traffic mixed into the soak's load, and a watch for relay crashes.

Mixed into the normal posting (one report in HOSTILE_SHARE carries hostile free text: controls C0/C1, NUL, ESC,
line and paragraph separators, NEL, bidi controls, astral characters, combining marks), and beside it, each kind
paced evenly over the posting and bounded in count: forged Twilio webhooks (unsigned and badly signed, to
/webhooks/twilio/sms and /webhooks/twilio/status), bad `/ack/<token>` links (garbage, and real links from the
e-mails with one character altered), bad bearer tokens, reports over the model's limits, oversized bodies, and
slow connections (a partial request head, held). Every answer is counted by status; no kind may get a 5xx.

`CrashWatch` (always on in the soak) notices a relay process that exited without the soak's scheduled SIGKILL,
counts it, and starts it again, as systemd would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.soak_world import AUTH, World
from bench.stats import summarize
from bench.table import rule, value_row
from tests.support.relay import DESK_TOKEN, report
from tests.support.twilio_fake import ACCOUNT_SID, FROM_NUMBER

HOSTILE_SHARE = 4  # every 4th report of the normal load carries hostile text
RATES = {  # requests per second of each kind, paced evenly over the posting
    "webhook sms, unsigned": 2.0,
    "webhook sms, bad signature": 2.0,
    "webhook status, unsigned": 2.0,
    "webhook status, bad signature": 2.0,
    "ack link, garbage": 3.0,
    "ack link, altered real link": 2.0,
    "bearer token, bad or missing": 5.0,
    "report over the limits (422)": 2.0,
    "oversized body": 1.0,
}
SLOW_CONNECTIONS = 200
SLOW_HOLD_S = 20.0  # a slow connection is given up by the bench after this (the relay should close it at 10 s)
MAX_PER_KIND = 20_000

# ---- hostile text ---------------------------------------------------------------------------------------------

C0 = [chr(c) for c in range(0x20)] + ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BREAKS = ["\n", "\r\n", "\r", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x1c", "\x1e"]
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u20dd", "\u0e47", "\u05b0"]
WORDS = ["Грязинский", "район", "ул.", "Ленина", "д. 5", "Petrov", "אבג", "مرحبا", "12:40", "🚁", "Ж"]
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _any_char(rng: random.Random) -> str:
    """Any code point but a surrogate, astral ones a third of the time."""
    while True:
        c = rng.randrange(0x10000, 0x110000) if rng.random() < 0.33 else rng.randrange(0x20, 0x10000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def hostile_text(rng: random.Random, max_len: int) -> str:
    """Words with every class of hostile character between and inside them; at most max_len code points, so that
    even after NFC (at most 3 per character) it stays within the contract's limit of 3 * max_len."""
    classes: list[Callable[[], str]] = [
        lambda: rng.choice(WORDS), lambda: rng.choice(WORDS), lambda: " ",
        lambda: rng.choice(C0), lambda: rng.choice(C1), lambda: "\x00", lambda: "\x1b[31m",
        lambda: rng.choice(BREAKS), lambda: rng.choice(BIDI), lambda: rng.choice(COMBINING),
        lambda: _any_char(rng),
    ]
    out = "".join(rng.choice(classes)() for _ in range(rng.randint(1, 12)))
    return out[:max_len]


def forbidden(text: str, *, multiline: bool = False) -> bool:
    """C0/C1 controls, line or paragraph separators or bidi controls (a newline allowed where `multiline`)."""
    return any((unicodedata.category(c) in ("Cc", "Zl", "Zp") and not (multiline and c == "\n"))
               or c in BIDI_CONTROLS for c in text)


def hostile_report(rng: random.Random, report_id: str) -> dict[str, Any]:
    body = report(report_id)
    body["location"] = {**body["location"], "district": hostile_text(rng, 33)}
    if rng.random() < 0.5:
        body["location"]["address"] = hostile_text(rng, 60)
    if rng.random() < 0.5:
        body["notes"] = hostile_text(rng, 300)
    body["caller"] = {"phone": "+79001234567", "name": hostile_text(rng, 33)}
    return body


TEXT_FIELDS = (("location", "district"), ("location", "address"), ("notes",), ("caller", "name"))


def _field(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


# ---- the crash watch ------------------------------------------------------------------------------------------

@dataclass
class Crash:
    at: float  # seconds after the posting started
    code: int | None
    log_tail: str


class CrashWatch:
    """A relay process that exited on its own (not the injector's SIGKILL, which replaces `relay.proc` in the
    same loop step) is a crash: counted, and the relay is started again so the soak goes on."""

    def __init__(self, w: World, start: float) -> None:
        self.w, self.start = w, start
        self.crashes: list[Crash] = []

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            proc = self.w.relay.proc
            if proc is None or proc.poll() is None:
                continue
            self.crashes.append(Crash(time.perf_counter() - self.start, proc.returncode, self.w.relay.log_tail(20)))
            self.w.relay.proc = None
            self.w.relay.start()
            with contextlib.suppress(AssertionError):  # it died again at once: the next turn counts that
                await self.w.relay.wait_ready(timeout=30)


# ---- the hostile load -------------------------------------------------------------------------------------------

@dataclass
class Slow:
    outcome: str  # "closed by the relay", "answered <status>", "reset", "held to the end", "not connected"
    after_s: float


@dataclass
class HostileResult:
    sent: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    slow: list[Slow] = field(default_factory=list)
    text_reports: set[str] = field(default_factory=set)  # report ids that carried hostile text
    stored_unclean: list[str] = field(default_factory=list)  # alert ids whose stored text kept a control
    sms_unclean: int = 0
    sms_total: int = 0
    mail_unclean: int = 0
    mail_total: int = 0

    def server_errors(self) -> int:
        return sum(n for c in self.answers.values() for k, n in c.items() if k.startswith("5"))


class Hostile:
    def __init__(self, w: World, seed: int, duration: float) -> None:
        self.w, self.duration = w, duration
        self.rng = random.Random(seed)
        self.text_rng = random.Random(seed + 1)
        self.result = HostileResult()

    # -- hostile text in the normal posting

    def body(self, report_id: str) -> dict[str, Any]:
        """The soak's report body: every HOSTILE_SHARE-th one with hostile free text."""
        i = int(report_id.rsplit("-", 1)[1])
        if i % HOSTILE_SHARE:
            return report(report_id)
        self.result.text_reports.add(report_id)
        return hostile_report(self.text_rng, report_id)

    # -- the requests

    async def run(self, start: float) -> HostileResult:
        connector = aiohttp.TCPConnector(limit=len(RATES) + 2)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), connector=connector)
        try:
            await asyncio.wait_for(self._all(start), self.duration + SLOW_HOLD_S + 30)
        except TimeoutError:
            pass  # bounded in time: what was counted so far stands
        finally:
            await self.http.close()
        return self.result

    async def _all(self, start: float) -> None:
        async with asyncio.TaskGroup() as tg:
            makers = {
                "webhook sms, unsigned": lambda: self._webhook("sms", None),
                "webhook sms, bad signature": lambda: self._webhook("sms", self._bad_signature()),
                "webhook status, unsigned": lambda: self._webhook("status", None),
                "webhook status, bad signature": lambda: self._webhook("status", self._bad_signature()),
                "ack link, garbage": self._garbage_link,
                "ack link, altered real link": self._altered_link,
                "bearer token, bad or missing": self._bad_token,
                "report over the limits (422)": self._too_long,
                "oversized body": self._oversized,
            }
            for kind, rate in RATES.items():
                tg.create_task(self._paced(kind, rate, start, makers[kind]))
            tg.create_task(self._slow_connections(start))

    async def _paced(self, kind: str, rate: float, start: float, make: Callable[[], Any]) -> None:
        n = min(MAX_PER_KIND, max(1, int(rate * self.duration)))
        rng = random.Random(self.rng.random())
        for i in range(n):
            at = start + (i + rng.random()) * self.duration / n
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if time.perf_counter() > start + self.duration + 5:
                break  # fell behind: stop with the posting
            method, path, kw = make()
            await self._request(kind, method, path, **kw)

    async def _request(self, kind: str, method: str, path: str, **kw: Any) -> None:
        self.result.sent[kind] += 1
        answers = self.result.answers.setdefault(kind, Counter())
        try:
            async with self.http.request(method, f"{self.w.url}{path}", **kw) as r:
                await r.read()
                answers[str(r.status)] += 1
        except Exception as exc:  # any client-side failure is counted by its type, never fatal
            answers[type(exc).__name__] += 1

    def _bad_signature(self) -> str:
        return base64.b64encode(self.rng.randbytes(20)).decode()

    def _webhook(self, which: str, signature: str | None) -> tuple[str, str, dict[str, Any]]:
        rng = self.rng
        params = {"MessageSid": "SM" + "".join(rng.choices("0123456789abcdef", k=32)), "AccountSid": ACCOUNT_SID,
                  "From": rng.choice(["+79001110001", "+79995554433", hostile_text(rng, 20)]), "To": FROM_NUMBER}
        if which == "sms":
            params |= {"Body": rng.choice(["STOP", "СТАРТ", "ABCD", hostile_text(rng, 200)]), "NumMedia": "0"}
            path = "/webhooks/twilio/sms"
        else:
            status = rng.choice(["delivered", "undelivered", "failed", hostile_text(rng, 10)])
            params |= {"MessageStatus": status, "SmsStatus": status, "ErrorCode": "30003"}
            path = f"/webhooks/twilio/status?key={rng.choice(['D1,D2', 'x' * 300, '%00%0a', '', 'no-such'])}"
        headers = {"X-Twilio-Signature": signature} if signature is not None else {}
        return "POST", path, {"data": params, "headers": headers}

    def _garbage_link(self) -> tuple[str, str, dict[str, Any]]:
        rng = self.rng
        token = rng.choice([
            base64.urlsafe_b64encode(rng.randbytes(rng.randint(1, 120))).decode().rstrip("="),
            "%00%0A%0D%E2%80%AE%C2%85",
            "." * rng.randint(1, 40),
            "A" * rng.randint(200, 4000),
            "%" + "".join(rng.choices("0123456789ABCDEFGXYZ", k=rng.randint(1, 30))),
        ])
        return rng.choice(["GET", "POST"]), f"/ack/{token}", {}

    def _altered_link(self) -> tuple[str, str, dict[str, Any]]:
        links = self._links()
        if not links:
            return self._garbage_link()
        token = self.rng.choice(links)
        i = self.rng.randrange(len(token))
        swap = self.rng.choice([c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                                if c != token[i]])
        return self.rng.choice(["GET", "POST"]), f"/ack/{token[:i]}{swap}{token[i + 1:]}", {}

    def _links(self) -> list[str]:
        tokens: list[str] = []
        for mail in self.w.smtp.mails[-20:]:
            part = mail.message.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
            tokens += re.findall(r"/ack/([A-Za-z0-9_\-.]+)", text)
        return tokens

    def _bad_token(self) -> tuple[str, str, dict[str, Any]]:
        rng = self.rng
        header = rng.choice([
            None, "Bearer", "Bearer ", "Bearer wrong-token-0123456789abcdef", f"Bearer {DESK_TOKEN}x",
            "Basic " + base64.b64encode(b"op-1:secret").decode(), "bearer " + "A" * 4000,
            "Bearer " + "".join(_any_char(rng) for _ in range(rng.randint(1, 40))).encode(errors="replace")
            .decode("latin-1", errors="replace").translate({c: None for c in (*range(0x20), 0x7f)}),
        ])
        headers = {"Authorization": header} if header is not None else {}
        method, path, body = rng.choice([
            ("POST", "/api/v1/reports", report("bad-token")), ("GET", "/api/v1/alerts", None),
            ("GET", "/api/v1/alerts/01NOSUCHALERT", None), ("POST", "/api/v1/alerts/01NOSUCHALERT/ack", {"by": "x"}),
            ("GET", "/api/v1/events", None), ("GET", "/console/session", None), ("GET", "/api/v1/audit", None),
        ])
        return method, path, {"headers": headers, **({"json": body} if body is not None else {})}

    def _too_long(self) -> tuple[str, str, dict[str, Any]]:
        body = hostile_report(self.rng, f"hostile-422-{self.rng.randrange(10**9)}")
        body["location"]["district"] = "Ж" * 101 + hostile_text(self.rng, 20)
        return "POST", "/api/v1/reports", {"json": body, "headers": AUTH}

    def _oversized(self) -> tuple[str, str, dict[str, Any]]:
        rng = self.rng
        size = rng.choice([64 * 1024 + 1, 256 * 1024, 1024 * 1024])
        blob = b'{"report_id": "big", "notes": "' + b"x" * size + b'"}'
        path, headers = rng.choice([("/api/v1/reports", AUTH), ("/api/v1/reports", {}),
                                    ("/webhooks/twilio/sms", {}), ("/ack/abc", {})])
        if rng.random() < 0.3:  # chunked: no Content-Length to refuse it by
            async def chunks() -> Any:
                for i in range(0, len(blob), 16 * 1024):
                    yield blob[i:i + 16 * 1024]

            return "POST", path, {"data": chunks(), "headers": headers}
        return "POST", path, {"data": blob, "headers": {**headers, "Content-Type": "application/json"}}

    # -- slow connections

    async def _slow_connections(self, start: float) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(SLOW_CONNECTIONS):
                at = start + i * 0.8 * self.duration / SLOW_CONNECTIONS
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tg.create_task(self._slow_one(i))

    async def _slow_one(self, i: int) -> None:
        host, port = "127.0.0.1", int(self.w.url.rsplit(":", 1)[1])
        heads = [b"POST /api/v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
                 b"GET /api/v1/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ",
                 b"GET /healthz HTTP/1.1\r\n", b"P"]
        self.result.sent["slow connection (partial head, held)"] += 1
        t = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            self.result.slow.append(Slow("not connected (relay down)", time.perf_counter() - t))
            return
        t = time.perf_counter()
        pid = self._relay_pid()
        try:
            writer.write(heads[i % len(heads)])
            await writer.drain()
            data = await asyncio.wait_for(reader.read(4096), SLOW_HOLD_S)
            m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
            outcome = f"answered {m.group(1).decode()}" if m else "closed by the relay"
        except TimeoutError:
            outcome = "held to the end"
        except OSError:
            outcome = "reset"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if outcome != "held to the end" and self._relay_pid() != pid:
            outcome = "gone with the relay (the soak's SIGKILL)"
        self.result.slow.append(Slow(outcome, time.perf_counter() - t))

    def _relay_pid(self) -> int | None:
        proc = self.w.relay.proc
        return proc.pid if proc is not None else None

    # -- after the soak: what was stored and sent

    def check_text(self, final: dict[str, dict[str, Any]], accepted_ids: dict[str, str]) -> None:
        """accepted_ids: report_id -> alert_id of the accepted posts."""
        r = self.result
        for report_id in r.text_reports:
            alert = final.get(accepted_ids.get(report_id, ""))
            if alert is None:
                continue
            shown = alert.get("report", {})
            if any(isinstance(v := _field(shown, p), str) and forbidden(v, multiline=p == ("notes",))
                   for p in TEXT_FIELDS):
                r.stored_unclean.append(alert["alert_id"])
        r.sms_total = len(self.w.twilio.messages)
        r.sms_unclean = sum(1 for m in self.w.twilio.messages if forbidden(m.body))
        mails = self.w.smtp.mails
        r.mail_total = len(mails)
        r.mail_unclean = sum(1 for m in mails if any(forbidden(str(v)) for v in m.message.values()))


# ---- printing ---------------------------------------------------------------------------------------------------

def render_crashes(crashes: list[Crash]) -> list[str]:
    lines = [value_row("relay crashes (exits not scheduled by the soak)", str(len(crashes)), "0", not crashes)]
    for c in crashes[:5]:
        lines.append(f"  CRASH at t={c.at:.2f} s, exit code {c.code}; relay stderr, last lines:")
        lines += [f"    {line[:300]}" for line in c.log_tail.splitlines()]
    return lines


def render_hostile(r: HostileResult, accepted_text: int) -> list[str]:
    kinds = [*RATES, "slow connection (partial head, held)"]
    lines = [rule(), "hostile load: requests per kind, answers by status (or the client's error)"]
    text_posts = len(r.text_reports)
    lines.append(f"  {'reports with hostile text (in the load above)':<44}{text_posts:>7}   201 x{accepted_text}, "
                 f"others as the load above")
    for kind in kinds:
        if kind.startswith("slow"):
            outcomes = Counter(s.outcome for s in r.slow)
            closed = [s.after_s for s in r.slow if s.outcome == "closed by the relay" or s.outcome.startswith("ans")]
            m = summarize(closed) if closed else None
            when = f"; closed or answered by the relay after p50 {m.p50_ms / 1000:.1f} s, max {m.max_ms / 1000:.1f} s" \
                if m else ""
            answers = ", ".join(f"{k} x{n}" for k, n in outcomes.most_common()) + when
        else:
            answers = ", ".join(f"{k} x{n}" for k, n in sorted(r.answers.get(kind, Counter()).items()))
        lines.append(f"  {kind:<44}{r.sent[kind]:>7}   {answers or '-'}")
    errors = r.server_errors()
    lines += [
        value_row("hostile requests answered 5xx", str(errors), "0", errors == 0),
        value_row("hostile-text alerts stored with a control character", str(len(r.stored_unclean)), "0",
                  not r.stored_unclean),
        value_row("SMS bodies with a control character", f"{r.sms_unclean} of {r.sms_total}", "0",
                  r.sms_unclean == 0),
        value_row("e-mails with a control character in a header", f"{r.mail_unclean} of {r.mail_total}", "0",
                  r.mail_unclean == 0),
    ]
    lines += [f"  e.g. alert {a}" for a in r.stored_unclean[:3]]
    return lines


def hostile_ok(r: HostileResult) -> bool:
    return r.server_errors() == 0 and not r.stored_unclean and r.sms_unclean == 0 and r.mail_unclean == 0
