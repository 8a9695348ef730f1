"""Free text from all of Unicode, over HTTP and MQTT intake, rendered on every channel (issue 12).

The report's free-text fields (`location.district`, `location.address`, `notes`, `caller.name`) and an ack's `by`
are drawn from every code point there is (controls C0/C1 and NUL, line and paragraph separators, NEL, bidi
controls, astral characters, combining marks), and each report goes out on every channel configured for it: SMS
through the real twilio client to the Twilio-shaped server, e-mail to aiosmtpd, and (MQTT intake) the console.

Properties (CONTRACT.md v2, "Hardening"):
* the daemon never dies (in-process for hypothesis' speed; one example against the real subprocess, restarted
  afterwards to show there is no crash loop);
* every accepted report is delivered on every channel configured for it;
* what is stored and shown carries no C0/C1 or bidi controls and no line separators in those fields (notes may
  keep `\\n`), is NFC, keeps every other character, and a line break became a space, not nothing;
* SMS bodies and e-mail headers carry no control characters;
* a report the model refuses gets 422 (over MQTT: `invalid` on `.../rejected`) naming the field, never a 500;
* the same report posted again is recognised as a replay (200): the normalised text is what is compared.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.support.broker import Mosquitto
from tests.support.console import Console, MqttPeer
from tests.support.process import RelayProcess
from tests.support.relay import (
    DESK1_EMAIL,
    DESK1_PHONE,
    DESK_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smtp import Mail, SmtpServer
from tests.support.twilio_fake import Sms, TwilioFake
from tests.support.wait import eventually

# ---- what may not survive ---------------------------------------------------------------------------------

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
BIDI_MARKS = frozenset("\u200e\u200f\u061c")  # LRM, RLM, ALM: a relay may drop them too; not required
# A line break to some conventions, a plain control to others: either a space or nothing is right.
AMBIGUOUS_BREAKS = frozenset("\x0b\x0c\x1c\x1d\x1e\x1f")
LINE_BREAKS = frozenset("\n\r\t\x85\u2028\u2029")  # each must become a space (in notes: may stay a line break)

# Characters a hostile caller reaches for first, mixed into the draw from all of Unicode so every example has some.
NASTY = (
    "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1c\x1d\x1e\x1f\x7f\x80\x85\x9b\x9f"
    "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    "\u200b\u200d\ufeff\u00a0\u3000\u0301\u0308\u0336\u0e47\U0001f681\U0001f1f7\U0001f1fa\U0010fffd\U000e0041"
    "\ufb2c\u0958\u1e9b\u0344\u212b"  # NFC changes these
)
PLAIN = "Грязинский район ул. Ленина, 5 "
chars = st.one_of(
    st.characters(codec=None, exclude_categories=["Cs"]),  # all of Unicode (surrogates cannot be in a str)
    st.sampled_from(NASTY),
    st.sampled_from("\n\r\t\x0b\x0c\x85\u2028\u2029\u202e\u2067\x00\x1b"),  # issue 12's, often
    st.sampled_from(PLAIN),
    st.sampled_from(PLAIN),
)
# NFC expands a character to at most 3: these sizes stay within the contract's limits after normalising.
LIMITS = {"location.district": 100, "location.address": 200, "notes": 1000, "caller.name": 100}
SAFE_SIZE = {k: v // 3 for k, v in LIMITS.items()}


WORDS = st.sampled_from(["Грязинский", "район", "ул.", "Ленина,", "5", "Petrov", "אבג", "مرحبا", "12:40"])
BREAKS = st.sampled_from(["\n", "\r\n", "\r", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x1c", "\x1f"])


def hostile(max_size: int) -> st.SearchStrategy[str]:
    """Words with line breaks, controls and odd characters between and inside them, at most `max_size` long."""
    piece = st.one_of(WORDS, BREAKS, st.text(chars, min_size=1, max_size=4), st.text(chars, max_size=max_size))
    return st.lists(piece, max_size=10).map(lambda parts: "".join(parts)[:max_size])


def too_long(limit: int) -> st.SearchStrategy[str]:
    """Over the limit whatever the relay drops: more plain letters than fit, plus hostile text."""
    return st.builds(lambda n, t: "Ж" * n + t, st.integers(limit + 1, limit + 50), hostile(20))


@dataclass(frozen=True)
class Case:
    texts: dict[str, str]  # field path -> text, e.g. "location.district"
    too_long: frozenset[str]  # fields drawn over their limit: the model must refuse and name them
    by: str  # the ack's `by`
    raw_utf8: bool  # the JSON carries the characters as UTF-8 (else as \\u escapes)

    def body(self, report_id: str, **overrides: Any) -> dict[str, Any]:
        body = report(report_id, **overrides)
        body["location"] = {**body["location"]}
        body.pop("caller", None)
        for path, text in self.texts.items():
            if path == "location.district":
                body["location"]["district"] = text
            elif path == "location.address":
                body["location"]["address"] = text
            elif path == "caller.name":
                body["caller"] = {"phone": "+79001234567", "name": text}
            else:
                body[path] = text
        return body

    def encode(self, body: dict[str, Any]) -> bytes:
        return json.dumps(body, ensure_ascii=not self.raw_utf8).encode()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    texts: dict[str, str] = {}
    over: set[str] = set()
    for path in LIMITS:
        if path != "location.district" and not draw(st.booleans()):
            continue  # district always: it is the place in the SMS and the e-mail subject
        if draw(st.integers(0, 11)) == 0:
            texts[path] = draw(too_long(LIMITS[path]))
            over.add(path)
        else:
            texts[path] = draw(hostile(SAFE_SIZE[path]))
    return Case(texts, frozenset(over), draw(hostile(30)), draw(st.booleans()))


ISSUE_12_CASES = [
    Case({"location.district": "Грязинский\nрайон", "location.address": "ул.\u2028Ленина\x0b5\x85кв. 1\r\n",
          "notes": "строка 1\nстрока 2\u2029\x07конец\r\nещё", "caller.name": "\u202eворетП\u202c\x00\x1b[31m"},
         frozenset(), "\u202eвонаВИ \u2066x\u2069", raw_utf8=True),
    Case({"location.district": "e\u2028\u0301 \x00\u0301 \U0001f681\u200d\U0001f681"}, frozenset(), "\x85", False),
    Case({"location.district": "x\r\nBcc: evil@example.com\r\nSubject: forged\r\n\r\nbody", "notes": "\r\n.\r\n"},
         frozenset(), "x\r\nBcc: evil@example.com", raw_utf8=True),
    Case({"location.district": "Ж" * 101 + "\n", "caller.name": "\x1b" * 150}, frozenset({"location.district"}), "",
         raw_utf8=False),
]


# ---- checks -----------------------------------------------------------------------------------------------

def forbidden(text: str, *, multiline: bool = False) -> list[str]:
    """Characters that must not be stored, shown or sent: C0/C1 controls (DEL too), bidi controls, and line or
    paragraph separators (a newline is allowed where `multiline`)."""
    return [f"U+{ord(c):04X}" for c in text
            if (unicodedata.category(c) in ("Cc", "Zl", "Zp") and not (multiline and c == "\n"))
            or c in BIDI_CONTROLS]


def _droppable(c: str) -> bool:
    return unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS or c in BIDI_MARKS


def canon(text: str) -> str:
    """What must survive normalising: every character but whitespace and controls, up to NFC."""
    kept = "".join(c for c in unicodedata.normalize("NFC", text) if not (c.isspace() or _droppable(c)))
    return unicodedata.normalize("NFC", kept)


def words(text: str, *, ambiguous_is_space: bool) -> int:
    """Whitespace-separated words once controls are dropped and line breaks are spaces."""
    count, in_word = 0, False
    for c in text:
        space = (c.isspace() and c not in AMBIGUOUS_BREAKS) or c in LINE_BREAKS \
            or (ambiguous_is_space and c in AMBIGUOUS_BREAKS)
        if space:
            in_word = False
        elif not _droppable(c):
            count += not in_word
            in_word = True
    return count


def check_text(path: str, sent: str, shown: str | None, where: str) -> None:
    shown = shown or ""
    multiline = path == "notes"
    assert not forbidden(shown, multiline=multiline), (where, path, forbidden(shown, multiline=multiline), shown)
    assert unicodedata.is_normalized("NFC", shown), (where, path, "not NFC", shown)
    assert canon(shown) == canon(sent), (where, path, "text lost or changed", sent, shown)
    got = len([w for w in shown.split() if any(not _droppable(c) for c in w)])
    low, high = words(sent, ambiguous_is_space=False), words(sent, ambiguous_is_space=True)
    assert low <= got <= high, (where, path, "a line break did not become a space", sent, shown, low, got, high)


def get_path(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_report(case: Case, shown: dict[str, Any], where: str, *, with_caller: bool = True) -> None:
    for path, sent in case.texts.items():
        if path == "caller.name" and not with_caller:
            assert "caller" not in shown, (where, "the caller reached a desk")
            continue
        check_text(path, sent, get_path(shown, path), where)


def check_sms(sms: Sms) -> None:
    assert not forbidden(sms.body), ("SMS body", forbidden(sms.body), sms.body)


def check_mail(mail: Mail) -> None:
    names = [k.lower() for k in mail.message]
    assert not {"bcc", "cc", "reply-to"} & set(names), ("a header was injected", names)
    assert names.count("subject") == 1 and names.count("to") == 1, ("a header was injected", names)
    assert mail.rcpt_tos == [DESK1_EMAIL], mail.rcpt_tos
    for name, value in mail.message.items():
        assert not forbidden(str(value)), ("e-mail header", name, forbidden(str(value)), str(value))


def check_problems(detail: Any, expected: frozenset[str], where: str) -> None:
    assert isinstance(detail, list) and detail, (where, detail)
    assert {p["field"] for p in detail} == set(expected), (where, detail)
    assert all(p["problem"] for p in detail), (where, detail)


async def sms_with(twilio: TwilioFake, code: str, timeout: float = 8.0) -> list[Sms]:
    return await eventually(lambda: [m for m in twilio.messages if code in m.body], timeout=timeout,
                            what=f"an SMS with {code}")


async def mail_with(smtp: SmtpServer, code: str, timeout: float = 8.0) -> list[Mail]:
    return await eventually(lambda: [m for m in smtp.mails if code in str(m.message["Subject"] or "")],
                            timeout=timeout, what=f"an e-mail with {code} in its subject")


# ---- the world the examples share -------------------------------------------------------------------------

def config(broker_port: int, data_dir: Path, smtp: SmtpServer, twilio: TwilioFake) -> dict[str, Any]:
    """One desk (every report), one phone, one address; no repeats while an example runs."""
    cfg = with_backups(settings_dict(broker_port, data_dir), smtp_port=smtp.port, twilio_url=twilio.base_url,
                       ack_timeout_s=600, repeat_s=600, give_up_s=3600, retry_s=0.5)
    cfg["desks"] = [{**cfg["desks"][0], "sms": [DESK1_PHONE], "email": [DESK1_EMAIL]}]
    cfg["http"] = {**cfg["http"], "rate_per_s": 10000, "rate_burst": 10000}
    cfg["sms"] = {**cfg["sms"], "bundle_window_s": 0}
    return cfg


@dataclass
class Shared:
    relay: RunningRelay
    broker: Mosquitto
    smtp: SmtpServer
    twilio: TwilioFake
    ids: itertools.count[int] = field(default_factory=itertools.count)
    died: str = ""  # the first example after which the relay no longer answered

    async def alive(self) -> bool:
        try:
            async with self.relay.http.get(f"{self.relay.url}/healthz",
                                           timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def example(self, case: Case, body: Any) -> None:
        """Runs one example; once the relay died, every later one (and hypothesis' replay) fails saying when."""
        error = f"the relay died during an earlier example: {self.died}" if self.died else ""
        if not error:
            try:
                await body
            except Exception as exc:  # reported as this example's failure, below
                error = f"{type(exc).__name__}: {exc}"
            if not await self.alive():
                self.died = f"{case!r} ({error or 'no error seen'})"
                error = f"the relay died: {error}"
        else:
            body.close()
        if error:
            raise AssertionError(f"{error}\n  in the example {case!r}")


@pytest.fixture
async def shared(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path) -> AsyncIterator[Shared]:
    async with running_relay(config(broker.port, tmp_path / "data", smtp, twilio)) as relay:
        yield Shared(relay, broker, smtp, twilio)


async def ack_over_http(s: Shared, case: Case, alert_id: str) -> None:
    status, acked = await s.relay.ack(alert_id, token=DESK_TOKEN, by=case.by)
    assert status == 200, ("an ack with a short `by` refused", status, acked)  # drawn short enough for any NFC
    assert acked["state"] == "acknowledged"
    check_text("by", case.by, acked["ack"]["by"], "ack answer")
    await check_ack_shown(s, case, alert_id)


async def check_ack_shown(s: Shared, case: Case, alert_id: str) -> None:
    for token in (OPERATOR_TOKEN, DESK_TOKEN):
        alert = await s.relay.alert(alert_id, token=token)
        check_text("by", case.by, alert["ack"]["by"], "alert's ack")
    status, history = await s.relay.get(f"/api/v1/alerts/{alert_id}/history", DESK_TOKEN)
    assert status == 200, history
    for event in history["events"]:
        if event["kind"].startswith("ack") and isinstance(event["detail"], dict) and "by" in event["detail"]:
            check_text("by", case.by, event["detail"]["by"], f"history {event['kind']}")


# ---- over HTTP, the broker down: failover sends SMS and e-mail at once -----------------------------------

HYPOTHESIS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a dead relay would fail every shrunk example too
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@given(case=cases())
@example(case=ISSUE_12_CASES[0])
@example(case=ISSUE_12_CASES[1])
@example(case=ISSUE_12_CASES[2])
@example(case=ISSUE_12_CASES[3])
@HYPOTHESIS
async def test_hostile_text_over_http_is_stored_clean_and_sent_by_sms_and_email(shared: Shared, case: Case) -> None:
    s = shared
    if s.broker.proc is not None:
        s.broker.kill()
        await eventually(lambda: _mqtt_up_is(s.relay, 0), what="mqtt down")

    async def body() -> None:
        report_id = f"http-{next(s.ids)}"
        raw = case.encode(case.body(report_id))
        status, answer = await s.relay.post_report(raw)
        assert status < 500, (status, answer)
        if case.too_long:
            assert status == 422, (status, answer)
            assert answer["error"] == "invalid_report"
            check_problems(answer["detail"], case.too_long, "POST")
            return
        assert status == 201, (status, answer)
        alert_id, code = answer["alert_id"], answer["short_code"]
        shown = await s.relay.alert(alert_id)
        check_report(case, shown["report"], "GET as the operator")
        check_report(case, (await s.relay.alert(alert_id, token=DESK_TOKEN))["report"], "GET as the desk",
                     with_caller=False)
        again, replay = await s.relay.post_report(raw)
        assert (again, replay.get("alert_id")) == (200, alert_id), ("not recognised as a replay", again, replay)
        for sms in await sms_with(s.twilio, code):
            check_sms(sms)
        for mail in await mail_with(s.smtp, code):
            check_mail(mail)
        await ack_over_http(s, case, alert_id)

    await s.example(case, body())


async def _mqtt_up_is(relay: RunningRelay, value: float) -> bool:
    return await relay.metric('relay_channel_up{channel="mqtt"}') == value


# ---- over MQTT intake, flash: console, SMS and e-mail at t=0 ------------------------------------------------

@dataclass
class MqttSide:
    console: Console
    system: MqttPeer  # the 112 system: publishes reports, reads its rejections


@pytest.fixture
async def mqtt_side(shared: Shared) -> AsyncIterator[MqttSide]:
    side = MqttSide(Console(shared.broker.port, "airfield-1"),
                    MqttPeer(shared.broker.port, "112-system", ["uav/reports/op-1/rejected"]))
    async with side.console, side.system:
        yield side


async def next_for(peer: MqttPeer, report_id: str, timeout: float) -> dict[str, Any]:
    """The next message about `report_id` (older ones, from earlier examples, are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            _, body = await peer.next(timeout)
            if body.get("report_id") == report_id:
                return body


async def alert_or_rejection(side: MqttSide, report_id: str) -> tuple[str, dict[str, Any]]:
    alert = asyncio.create_task(next_for(side.console, report_id, 10))
    rejection = asyncio.create_task(next_for(side.system, report_id, 10))
    done, pending = await asyncio.wait({alert, rejection}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, f"neither the console nor the 112 system heard of {report_id} within 10 s"
    first = done.pop()
    return ("alert" if first is alert else "rejected"), first.result()


@given(case=cases())
@example(case=ISSUE_12_CASES[0])
@example(case=ISSUE_12_CASES[1])
@example(case=ISSUE_12_CASES[2])
@example(case=ISSUE_12_CASES[3])
@HYPOTHESIS
async def test_hostile_text_over_mqtt_reaches_the_console_sms_and_email(shared: Shared, mqtt_side: MqttSide,
                                                                       case: Case) -> None:
    s, side = shared, mqtt_side

    async def body() -> None:
        report_id = f"mqtt-{next(s.ids)}"
        await side.system.publish("uav/reports/op-1", case.encode(case.body(report_id, priority="flash")))
        kind, message = await alert_or_rejection(side, report_id)
        if case.too_long:
            assert kind == "rejected", ("accepted although too long", message)
            assert message["error"] == "invalid", message
            check_problems(message["detail"], case.too_long, "MQTT rejection")
            return
        assert kind == "alert", ("refused", message)
        check_report(case, message["report"], "the console's alert", with_caller=False)
        alert_id, code = message["alert_id"], message["short_code"]
        check_report(case, (await s.relay.alert(alert_id))["report"], "GET as the operator")
        for sms in await sms_with(s.twilio, code):
            check_sms(sms)
        for mail in await mail_with(s.smtp, code):
            check_mail(mail)
        await side.console.ack(alert_id, by=case.by)
        acked = await eventually(lambda: _acknowledged(s.relay, alert_id), timeout=5, what="acknowledged")
        assert acked["ack"]["channel"] == "mqtt"
        await check_ack_shown(s, case, alert_id)

    await s.example(case, body())


async def _acknowledged(relay: RunningRelay, alert_id: str) -> dict[str, Any] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == "acknowledged" else None


# ---- the real daemon: issue 12's reports, then a restart ------------------------------------------------------

ISSUE_12: list[tuple[str, dict[str, Any]]] = [
    ("line-feed", {"location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский\nрайон"}}),
    ("crlf-address", {"location": {"lat": 52.61, "lon": 39.59, "address": "ул. Ленина,\r\nд. 5"}}),
    ("u2028", {"location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский\u2028район"}}),
    ("vertical-tab", {"location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский\x0bрайон"}}),
    ("nel", {"location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский\x85район"}}),
    ("nul-esc", {"location": {"lat": 52.61, "lon": 39.59, "district": "Гряз\x00инский\x1b[31m район"}}),
    ("rlo-name", {"caller": {"phone": "+79001234567", "name": "\u202eворетП\u202c"},
                  "notes": "строка 1\nстрока 2\u2029\x07конец"}),
]


async def test_the_real_daemon_survives_issue_12_and_restarts_clean(broker: Mosquitto, smtp: SmtpServer,
                                                                   twilio: TwilioFake, tmp_path: Path) -> None:
    relay = RelayProcess(config(broker.port, tmp_path / "data", smtp, twilio), tmp_path)
    relay.start()
    try:
        await relay.wait_ready(timeout=30)
        broker.kill()  # failover: every backup goes out at once
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _metric_text_has(http, relay.url, 'relay_channel_up{channel="mqtt"} 0.0'),
                             timeout=10, what="mqtt down")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as http:
            accepted = []
            for name, overrides in ISSUE_12:
                async with http.post(f"{relay.url}/api/v1/reports", json=report(f"issue12-{name}", **overrides)) as r:
                    assert r.status == 201, (name, r.status, await r.text())
                    accepted.append((name, await r.json()))
            for name, answer in accepted:
                for sms in await sms_with(twilio, answer["short_code"], timeout=15):
                    check_sms(sms)
                for mail in await mail_with(smtp, answer["short_code"], timeout=15):
                    check_mail(mail)
                assert relay.proc is not None and relay.proc.poll() is None, f"the relay died after {name}"
            _, first = accepted[0]
            async with http.post(f"{relay.url}/api/v1/alerts/{first['alert_id']}/ack", json={"by": "\u202eвонаВИ"},
                                 headers={"Authorization": f"Bearer {DESK_TOKEN}"}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["ack"]["by"] == "вонаВИ"
            await asyncio.sleep(1.0)  # the retries of anything that failed would come now
            assert relay.proc is not None and relay.proc.poll() is None, relay.log_tail()
        assert relay.terminate() == 0, relay.log_tail()

        relay.start()  # the same store: whatever is queued is sent again; nothing in it may kill the daemon
        await relay.wait_ready(timeout=30)
        for _ in range(30):  # 3 s alive and answering: no crash loop
            assert relay.proc is not None and relay.proc.poll() is None, relay.log_tail()
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as http:
            for name, answer in accepted:
                async with http.get(f"{relay.url}/api/v1/alerts/{answer['alert_id']}") as r:
                    assert r.status == 200, (name, r.status)
                    shown = (await r.json())["report"]
                sent = dict(ISSUE_12)[name]
                for path in ("location.district", "location.address", "caller.name", "notes"):
                    if get_path(sent, path) is not None:
                        check_text(path, get_path(sent, path), get_path(shown, path), f"{name} after the restart")
            assert get_path(shown, "notes").split("\n")[:2] == ["строка 1", "строка 2"]  # notes keep line breaks
        assert relay.terminate() == 0, relay.log_tail()
    finally:
        relay.stop()


async def _metric_text_has(http: aiohttp.ClientSession, url: str, line: str) -> bool:
    async with http.get(f"{url}/metrics") as r:
        return line in (await r.text()).splitlines()
