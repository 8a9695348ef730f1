"""Floods of failed authentication and of connections, against the real daemon (issue 12; CONTRACT.md v2,
"Hardening": failed authentication is cheap, connections are bounded, old records are pruned, a redelivered
SMS reply is handled once).

What was found: every bad `/ack/...` and every unsigned Twilio webhook wrote an fsync'd audit row (4,700 a second
from one client added 25 MB in 30 s, and a full disk refuses every report); 1,500 connections that never finished
their request head were held for a minute and, under a low file limit, left the e-mail channel without a socket;
800 event streams from two tokens were all accepted.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w

from relay.domain.clock import SystemClock
from relay.domain.config import ConfigError, load_settings
from relay.edges.api.failures import FailureTrail
from relay.edges.ratelimit import RateLimiter
from relay.store.sqlite import SQLiteStore
from tests.support.broker import Mosquitto
from tests.support.process import RelayProcess
from tests.support.relay import (
    DESK1_PHONE,
    DESK_TOKEN,
    OPERATOR2_TOKEN,
    OPERATOR_TOKEN,
    RunningRelay,
    report,
    running_relay,
    settings_dict,
    with_backups,
)
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually

BURST, RATE = 100, 20  # http.anon_burst, http.anon_rate_per_s (the defaults)
ENGINEER_TOKEN = "engineer-token-0123456789abcdef"
FAILURE_KINDS = {"auth_refused", "link_refused", "webhook_refused"}
# A request head that never ends: the request line and one header, then nothing.
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def _count(db: Path, sql: str, *args: object) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def _db(relay: RunningRelay) -> Path:
    return relay.relay.settings.store.sqlite_path


@dataclass
class Backups:
    broker: Mosquitto
    smtp: SmtpServer
    twilio: TwilioFake
    data: Path

    def config(self, **http: Any) -> dict[str, Any]:
        # Backups only when asked (flash), so the counts below are the floods' alone.
        cfg = with_backups(settings_dict(self.broker.port, self.data), smtp_port=self.smtp.port,
                           twilio_url=self.twilio.base_url, ack_timeout_s=300, repeat_s=300, give_up_s=900)
        cfg["http"] = {**cfg["http"], **http}
        return cfg


@pytest.fixture
def backups(broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path) -> Backups:
    return Backups(broker, smtp, twilio, tmp_path / "data")


# ---- failed authentication ------------------------------------------------------------------------------


async def _bad_request(http: aiohttp.ClientSession, url: str, n: int) -> int:
    """One of three kinds of failed authentication, in turn: a bad bearer token, a forged e-mail link, an
    unsigned Twilio webhook."""
    kind = n % 3
    if kind == 0:
        call = http.post(f"{url}/api/v1/reports", json=report(f"flood-{n}"),
                         headers={"Authorization": f"Bearer wrong-token-{n:010d}"})
    elif kind == 1:
        call = http.get(f"{url}/ack/forged{n}.AAAA")
    else:
        call = http.post(f"{url}/webhooks/twilio/sms", data={"From": DESK1_PHONE, "Body": "K7QX", "MessageSid": n})
    async with call as r:
        await r.read()
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
        return r.status


async def _audit_failures(relay: RunningRelay, total: int) -> list[dict[str, Any]] | None:
    status, body = await relay.get("/api/v1/audit?limit=1000", ENGINEER_TOKEN)
    assert status == 200, body
    rows = [e for e in body["events"] if e["kind"] in FAILURE_KINDS]
    return rows if sum(e["detail"]["count"] for e in rows) >= total else None


async def test_a_flood_of_bad_credentials_gets_429_is_counted_and_writes_a_row_per_address_not_per_request(
    backups: Backups,
) -> None:
    flood = 900
    cfg = backups.config()
    cfg["engineers"] = [{"id": "eng-1", "token": ENGINEER_TOKEN}]
    async with running_relay(cfg) as relay:
        db = _db(relay)
        events_before = _count(db, "SELECT count(*) FROM events")
        connector = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.monotonic()
            flooding = asyncio.gather(*(_bad_request(http, relay.url, n) for n in range(flood)))
            # an operator on the same address, mid-flood, with its right token: served as ever
            served = await relay.post_report(report("during-the-flood"))
            statuses = await flooding
            elapsed = time.monotonic() - started
        assert served[0] == 201, served
        refused = [s for s in statuses if s != 429]
        assert set(refused) <= {401, 403}
        # The burst, then the rate: everything past it was answered 429 before any costly work.
        assert BURST <= len(refused) <= BURST + RATE * elapsed + 1, (len(refused), elapsed)
        assert statuses.count(429) >= flood - BURST - RATE * elapsed - 1
        assert await relay.metric("relay_auth_failures_total") == flood
        assert await relay.metric('relay_auth_failures_total{endpoint="/ack/{token}"}') == flood // 3

        # The audit trail has the whole flood, as counts: one row per kind, route and address (and hour).
        rows = await eventually(lambda: _audit_failures(relay, flood), timeout=10, what="the flood on the audit")
        assert {(e["kind"], e["detail"]["endpoint"], e["detail"]["from"]) for e in rows} == {
            ("auth_refused", "/api/v1/reports", "127.0.0.1"),
            ("link_refused", "/ack/{token}", "127.0.0.1"),
            ("webhook_refused", "/webhooks/twilio/sms", "127.0.0.1"),
        }
        assert all(e["detail"]["first_at"] <= e["detail"]["last_at"] for e in rows)
        assert _count(db, "SELECT count(*) FROM auth_failures") <= 6  # 3, or 6 across an hour's turn
        assert _count(db, "SELECT count(*) FROM events") - events_before <= 2  # the operator's alert, not the flood


async def test_a_bearer_header_too_long_to_be_a_token_is_refused_without_hashing(backups: Backups) -> None:
    async with running_relay(backups.config()) as relay:
        huge = {"Authorization": "Bearer " + "x" * 4000}
        async with relay.http.get(f"{relay.url}/api/v1/alerts", headers=huge) as r:
            assert r.status == 401
        assert await relay.metric('relay_auth_failures_total{endpoint="/api/v1/alerts"}') == 1


# ---- connections ----------------------------------------------------------------------------------------


async def _slow_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PARTIAL_HEAD)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before closing the connection (it must close it within `timeout`)."""
    async with asyncio.timeout(timeout):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()


async def test_slow_header_connections_are_closed_after_the_header_timeout_and_reports_still_go_in(
    backups: Backups,
) -> None:
    header_timeout = 1.5
    async with running_relay(backups.config(header_timeout_s=header_timeout)) as relay:
        port = relay.relay.http_port
        assert port is not None
        opened = time.monotonic()
        slow = await asyncio.gather(*(_slow_client(port) for _ in range(300)))
        try:
            await eventually(lambda: _metric_at_least(relay, "relay_http_connections", 300),
                             what="300 slow connections")
            status, accepted = await relay.post_report(report("beside-the-slow-ones"))
            assert status == 201, accepted
            answers = await asyncio.gather(*(_closed_by_server(r, header_timeout + 10) for r, _ in slow))
            took = time.monotonic() - opened
        finally:
            _close_all([w for _, w in slow])
        assert took >= header_timeout
        assert all(a in (b"", b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                   for a in answers)
        assert await relay.metric('relay_http_refused_total{reason="header_timeout"}') == 300
        await eventually(lambda: _metric_at_most(relay, "relay_http_connections", 1), what="the slow ones gone")


async def _metric_at_least(relay: RunningRelay, name: str, least: float) -> bool:
    return await relay.metric(name) >= least


async def _metric_at_most(relay: RunningRelay, name: str, most: float) -> bool:
    return await relay.metric(name) <= most


async def test_a_kept_alive_connection_that_starts_a_head_and_stalls_is_closed_too(backups: Backups) -> None:
    async with running_relay(backups.config(header_timeout_s=1.0)) as relay:
        assert relay.relay.http_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.http_port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            await reader.readexactly(length)
            writer.write(b"GET /healthz HT")  # the next request starts, and stalls
            assert (await _closed_by_server(reader, 10)).startswith((b"", b"HTTP/1.1 408"))
        finally:
            writer.close()


async def test_connections_past_max_connections_are_refused_and_the_established_ones_still_work(
    backups: Backups,
) -> None:
    async with running_relay(backups.config(max_connections=40, header_timeout_s=60)) as relay:
        port = relay.relay.http_port
        assert port is not None
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        try:
            await eventually(lambda: _metric_at_least(relay, "relay_http_connections", 40), what="40 connections")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            refused = await _closed_by_server(reader, 5)
            writer.close()
            assert refused.startswith(b"HTTP/1.1 503") or refused == b""
            assert await relay.metric('relay_http_refused_total{reason="max_connections"}') >= 1
            # one of those held is a client like any other: its request is served
            first_reader, first_writer = held[0]
            first_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert (await _closed_by_server(first_reader, 5)).startswith(b"HTTP/1.1 200")
            # a slot freed is a slot for the next client
            status, _ = await eventually(lambda: _new_session_get(relay.url), what="a new connection served")
            assert status == 200
        finally:
            _close_all([w for _, w in held])


async def _new_session_get(url: str) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
            return (r.status, await r.text()) if r.status == 200 else None
    except aiohttp.ClientError:
        return None


@pytest.fixture
async def streams() -> AsyncIterator[list[aiohttp.ClientResponse]]:
    opened: list[aiohttp.ClientResponse] = []
    yield opened
    for r in opened:
        r.close()


async def test_the_21st_event_stream_of_one_token_gets_429_and_another_token_still_gets_one(
    backups: Backups, streams: list[aiohttp.ClientResponse]
) -> None:
    async with running_relay(backups.config()) as relay:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            async def stream(token: str) -> aiohttp.ClientResponse:
                r = await http.get(f"{relay.url}/api/v1/events", headers={"Authorization": f"Bearer {token}"})
                streams.append(r)
                return r

            for _ in range(20):
                assert (await stream(OPERATOR_TOKEN)).status == 200
            too_many = await stream(OPERATOR_TOKEN)
            assert too_many.status == 429
            assert too_many.headers["Retry-After"]
            assert (await stream(OPERATOR2_TOKEN)).status == 200
            assert (await stream(DESK_TOKEN)).status == 200
            assert await relay.metric('relay_http_refused_total{reason="streams_per_token"}') == 1
            streams[0].close()  # a console that went away gives its slot back
            reopened = await eventually(lambda: _stream_ok(stream), what="a stream again after one closed")
            assert reopened.status == 200


async def _stream_ok(stream: Any) -> aiohttp.ClientResponse | None:
    r: aiohttp.ClientResponse = await stream(OPERATOR_TOKEN)
    return r if r.status == 200 else None


# ---- a low file limit: slow clients must not starve the e-mail channel (subprocess) --------------------


class LowFileLimitRelay(RelayProcess):
    """The relay as deployed, under `ulimit -n 256`."""

    NOFILE = 256

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        def low_nofile() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.NOFILE, self.NOFILE))

        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | (extra_env or {})
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # our own interpreter and module
                [sys.executable, "-m", "relay", "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.workdir, preexec_fn=low_nofile)


async def _post_report(url: str, report_id: str) -> int:
    async with aiohttp.ClientSession() as http, http.post(
        f"{url}/api/v1/reports", json=report(report_id), headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as r:
        return r.status


@pytest.fixture
def low_limit_relay(backups: Backups, tmp_path: Path) -> Iterator[LowFileLimitRelay]:
    cfg = backups.config(header_timeout_s=10.0)  # the default: each slow client holds its socket 10 s
    cfg["escalation"] = {**cfg["escalation"], "ack_timeout_s": 2.0}  # e-mail goes out mid-flood
    cfg["relay"] = {**cfg["relay"], "log_level": "info"}
    p = LowFileLimitRelay(cfg, tmp_path)
    p.start()
    yield p
    p.stop()


async def test_under_a_low_file_limit_a_connection_flood_does_not_starve_the_email_channel(
    low_limit_relay: LowFileLimitRelay, backups: Backups
) -> None:
    relay = low_limit_relay
    await relay.wait_ready()
    port = relay.settings["http"]["port"]
    assert await _post_report(relay.url, "under-siege") == 201
    # More slow clients than the relay has files for, kept up (each one closed is opened again) while the
    # backups for the report fire: the e-mail must still get a socket.
    stop = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def keep_one_slow() -> None:
        while not stop.is_set():
            try:
                reader, writer = await _slow_client(port)
            except OSError:
                await asyncio.sleep(0.01)  # backoff, not synchronisation: the relay refused for a moment
                continue
            held.append(writer)
            try:
                await _closed_by_server(reader, 30)
            except TimeoutError:
                pass
            finally:
                writer.close()

    sieges = [asyncio.create_task(keep_one_slow()) for _ in range(400)]
    try:
        # before the first slow clients are cut (10 s): their sockets are all still held
        mails = await backups.smtp.wait_for(1, timeout=7)
        assert "БПЛА" in mails[0].message["Subject"] or mails[0].text
    finally:
        stop.set()
        for task in sieges:
            task.cancel()
        await asyncio.gather(*sieges, return_exceptions=True)
        _close_all(held)
    # the relay kept its limit below the file limit, and says so
    limited = [line for line in relay.log_lines() if line.get("event") == "http_connections_limited"]
    assert limited and limited[0]["limit"] < LowFileLimitRelay.NOFILE
    assert not [line for line in relay.log_lines() if "Too many open files" in str(line)]
    assert await _post_report(relay.url, "after-the-siege") == 201


# ---- retention --------------------------------------------------------------------------------------------


async def test_old_audit_and_event_rows_are_pruned_shortly_after_start_and_alerts_are_kept(
    backups: Backups,
) -> None:
    cfg = backups.config()
    async with running_relay(cfg) as relay:
        _, old = await relay.post_report(report("old-one"))
        _, recent = await relay.post_report(report("recent-one"))
        for accepted in (old, recent):
            status, _ = await relay.ack(accepted["alert_id"])
            assert status == 200
        db = _db(relay)
    # Age the first alert and its history by 100 days, and leave old refusals and inbound ids beside them.
    long_ago = time.time() - 100 * 86400
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE alerts SET created_at = ? WHERE alert_id = ?", (long_ago, old["alert_id"]))
        conn.execute("UPDATE events SET at = ? WHERE alert_id = ?", (long_ago, old["alert_id"]))
        conn.executemany("INSERT INTO events (alert_id, at, kind, detail_json) VALUES ('', ?, 'link_refused', '{}')",
                         [(long_ago + n,) for n in range(1200)])  # more than one prune batch
        conn.execute("INSERT INTO auth_failures VALUES ('auth_refused', '/api/v1/reports', '10.0.0.1', ?, 5, ?, ?, "
                     "'unknown bearer token')", (long_ago, long_ago, long_ago))
        conn.execute("INSERT INTO inbound_messages VALUES ('sms', 'SMold', ?)", (long_ago,))
    conn.close()
    assert _count(db, "SELECT count(*) FROM events WHERE at < ?", time.time() - 90 * 86400) == 1201

    async with running_relay(cfg) as relay:
        await eventually(lambda: _count(db, "SELECT count(*) FROM events WHERE at < ?",
                                        time.time() - 90 * 86400) == 0, timeout=20, what="old events pruned")
        assert _count(db, "SELECT count(*) FROM auth_failures") == 0
        assert _count(db, "SELECT count(*) FROM inbound_messages") == 0
        kept = await relay.alert(old["alert_id"])  # the alert and its deliveries stay
        assert kept["state"] == "acknowledged" and kept["deliveries"]
        status, history = await relay.get(f"/api/v1/alerts/{recent['alert_id']}/history")
        assert status == 200 and "acknowledged" in [e["kind"] for e in history["events"]]


# ---- a redelivered SMS reply --------------------------------------------------------------------------------


async def test_a_redelivered_sms_reply_acknowledges_once(backups: Backups) -> None:
    async with running_relay(backups.config()) as relay:
        _, accepted = await relay.post_report(report("flash-1", priority="flash"))
        await backups.twilio.wait_for(2)
        url = str(relay.relay.settings.http.public_url)
        sid = "SM" + "7" * 32
        status, first = await TwilioFake.inbound(url, DESK1_PHONE, accepted["short_code"], message_sid=sid)
        assert status == 200 and accepted["short_code"] in first
        status, again = await TwilioFake.inbound(url, DESK1_PHONE, accepted["short_code"], message_sid=sid)
        assert status == 200
        assert "<Message>" not in again  # the empty TwiML: nothing said, nothing done
        status, history = await relay.get(f"/api/v1/alerts/{accepted['alert_id']}/history")
        kinds = [e["kind"] for e in history["events"]]
        assert kinds.count("acknowledged") == 1 and "duplicate_ack" not in kinds
        assert await relay.metric('relay_ack_seconds_count{channel="sms"}') == 1
        # a new reply (a new MessageSid) is handled as ever: a later ack, recorded as a duplicate
        status, later = await TwilioFake.inbound(url, DESK1_PHONE, accepted["short_code"])
        assert status == 200 and "<Message>" in later


# ---- the limiter and the tallies stay bounded, however many addresses ---------------------------------------


def test_the_per_address_limiter_keeps_at_most_max_keys_buckets() -> None:
    limiter = RateLimiter(RATE, BURST, max_keys=1000)
    for n in range(50_000):  # an attacker with a /64 of addresses
        limiter.take(f"2001:db8::{n:x}", 0.0)
    assert len(limiter) == 1000
    for _ in range(BURST):
        assert limiter.take("2001:db8::ffff", 1.0) == 0  # one address still has its own budget
    assert limiter.take("2001:db8::ffff", 1.0) > 0
    assert limiter.wait("2001:db8::ffff", 1.0) > 0 and limiter.wait("192.0.2.1", 1.0) == 0  # a look takes nothing


async def test_failure_tallies_past_their_cap_count_under_other_and_are_all_written(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "relay.db")
    writer = asyncio.create_task(store.run())
    try:
        trail = FailureTrail(store, SystemClock(), max_tallies=10)
        for n in range(5000):
            trail.add("auth_refused", "/api/v1/reports", f"10.0.{n // 256}.{n % 256}", "unknown bearer token",
                      time.time())
        await trail.flush()
        rows = [e for e in await store.audit_log(100) if e.kind == "auth_refused"]
        assert len(rows) == 10 + 1  # ten addresses, and the rest together
        assert sum(e.detail["count"] for e in rows) == 5000
        assert next(e for e in rows if e.detail["from"] == "other").detail["count"] == 5000 - 10
    finally:
        writer.cancel()
        await asyncio.wait([writer])


@pytest.mark.parametrize("key", ["http.anon_rate_per_s", "http.anon_burst", "http.header_timeout_s",
                                 "http.max_connections", "http.max_streams_per_token", "store.retention_days"])
def test_each_limit_must_be_positive(key: str, tmp_path: Path) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as refused:
        load_settings(_toml(tmp_path, {section: {name: 0}}))
    assert any(p.startswith(key) for p in refused.value.problems), refused.value.problems


def _toml(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path
