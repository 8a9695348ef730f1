"""Heavy readers against the real daemon (issue 12; CONTRACT.md v2, "Reads never starve the relay").

Clients listing 1,000 alerts in a loop (`GET /api/v1/alerts?state=all&limit=1000`) once stalled the event loop
for up to 1.4 s: `/healthz` hung, MQTT publishes timed out, and alerts failed over to SMS and e-mail with a
healthy broker. Here the relay runs as a subprocess (its own process and loop, as deployed) with SMS and e-mail
configured, holding ~1,000 alerts; readers hammer the list while reports flow and a console acknowledges them.
What a user would notice must not happen: no failover (no SMS, no e-mail, `relay_failovers_total` stays 0), every
report reaches the console, `/healthz` keeps answering promptly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.domain.records import AckRecord
from relay.domain.states import AlertState
from relay.store import sqlite as sqlite_store
from relay.store.base import StoreUnavailable
from relay.store.sqlite import SQLiteStore
from tests.support.broker import Mosquitto
from tests.support.console import Console
from tests.support.process import RelayProcess
from tests.support.relay import OPERATOR_TOKEN, report, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually
from tests.test_store_contract import new_alert

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
FILL = 1000  # alerts stored before the readers start: each list is a full 1,000
READERS = 10
STREAM = 60  # reports posted while the readers read
STREAM_EVERY_S = 0.1
HEALTHZ_P99_S = 0.3  # generous: the loop answers in about a millisecond; before the fix, 0.5-1.4 s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = await SQLiteStore.open(tmp_path / "store" / "relay.db")
    writer = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        writer.cancel()
        await asyncio.wait([writer])


async def test_a_heavy_read_sees_every_write_awaited_before_it(store: SQLiteStore) -> None:
    """The API's reads run on their own connection in a thread: still, what was written is what is read."""
    for n in range(40):
        accepted = await store.accept(new_alert(f"r-{n:03d}", desks=("d-1",)))
        alert_id = accepted.alert.alert_id
        listed = await store.list_alerts(states=None, limit=1)
        assert [a.alert_id for a in listed] == [alert_id]
        await store.mark_delivered(alert_id, "d-1", "mqtt", time.time())  # committed without its own fsync
        listed = await store.list_alerts(states=None, limit=1)
        assert listed[0].state is AlertState.DELIVERED
        await store.record_ack(AckRecord(alert_id, "d-1", "mqtt", "дежурный", time.time(), 1.0))
        listed = await store.list_alerts(states=None, limit=1)
        assert listed[0].ack is not None and listed[0].state is AlertState.ACKNOWLEDGED
        assert [e.kind for e in await store.events(alert_id)] == ["accepted", "delivered", "acknowledged"]
        assert (await store.audit_log(1))[0].alert_id == alert_id
    assert len(await store.list_alerts(states=None, limit=1000)) == 40


async def test_read_errors_are_store_unavailable_and_the_next_read_recovers(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(300):
        await store.accept(new_alert(f"r-{n}"))

    def cannot_open() -> None:
        raise sqlite3.OperationalError("unable to open database file")

    with monkeypatch.context() as m:
        m.setattr(store, "_open_reader", cannot_open)
        with pytest.raises(StoreUnavailable):
            await store.list_alerts(states=None, limit=1000)
    assert len(await store.list_alerts(states=None, limit=1000)) == 300

    with monkeypatch.context() as m:  # a read that runs too long is interrupted, not left holding its thread
        m.setattr(sqlite_store, "READ_DEADLINE_S", -1.0)
        with pytest.raises(StoreUnavailable, match="interrupted"):
            await store.list_alerts(states=None, limit=1000)
    assert len(await store.list_alerts(states=None, limit=1000)) == 300

    writer_conn = store._read()
    writer_conn.close()  # the engine's inline reads fail the same way, never with a raw sqlite3 error
    for read in (store.get_alert("x"), store.due_alerts(time.time(), 10), store.next_due_at(), store.count_open()):
        with pytest.raises(StoreUnavailable):
            await read


async def test_reads_waiting_when_the_store_stops_get_store_unavailable(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "relay.db")
    writer = asyncio.create_task(store.run())
    for n in range(300):
        await store.accept(new_alert(f"r-{n}"))
    reads = [asyncio.create_task(store.list_alerts(states=None, limit=1000)) for _ in range(10)]
    await asyncio.sleep(0)  # a turn of the loop: they queue for the reader thread (either way, none may hang)
    writer.cancel()
    await asyncio.wait([writer])
    outcomes = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(o, list | StoreUnavailable) for o in outcomes), outcomes
    assert any(isinstance(o, StoreUnavailable) for o in outcomes)
    with pytest.raises(StoreUnavailable):
        await store.list_alerts(states=None, limit=1)


async def _metric(http: aiohttp.ClientSession, url: str, series: str) -> float:
    """Sum of the series starting with `series` (a name, or a name with its first labels); 0 when none yet."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((series + "{", series + " ")) or (series.endswith("}") and line.startswith(series)))


async def _post(http: aiohttp.ClientSession, url: str, report_id: str) -> str | None:
    async with http.post(f"{url}/api/v1/reports", json=report(report_id), headers=AUTH) as r:
        return report_id if r.status == 201 else None


async def _answer(console: Console, seen: set[str]) -> None:
    """The desk: every alert is shown (`received`) and acknowledged, as a dispatcher would."""
    while True:
        alert = await console.next_alert(timeout=3600)
        seen.add(alert["report_id"])
        await console.received(alert["alert_id"])
        await console.ack(alert["alert_id"], by="дежурный")


async def _read_lists(url: str, until: float, served: list[int]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        while time.monotonic() < until:
            async with http.get(f"{url}/api/v1/alerts?state=all&limit=1000", headers=AUTH) as r:
                body = await r.read()
                assert r.status == 200, body[:300]
            served.append(len(body))


async def _probe(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 200
            samples.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)  # the probe's pace, not a synchronisation


async def test_readers_listing_1000_alerts_cause_no_failover_and_every_report_arrives(
    broker: Mosquitto, smtp: SmtpServer, twilio: TwilioFake, tmp_path: Path, relay_process: list[RelayProcess]
) -> None:
    # No ack timeout in the way (600 s): a backup round within this test can only be a failover.
    cfg = with_backups(settings_dict(broker.port, tmp_path / "data"), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, ack_timeout_s=600, repeat_s=600, give_up_s=3600)
    cfg["http"] = {**cfg["http"], "rate_per_s": 100000, "rate_burst": 100000}
    relay = RelayProcess(cfg, tmp_path)
    relay_process.append(relay)
    relay.start()
    await relay.wait_ready(timeout=30)
    url = relay.url

    seen: set[str] = set()
    async with Console(broker.port, "airfield-1") as console, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
        await eventually(lambda: _metric(http, url, 'relay_channel_up{channel="mqtt"}'), timeout=10,
                         what="relay on the broker")
        desk = asyncio.create_task(_answer(console, seen))
        try:
            filled = [f"fill-{n}" for n in range(FILL)]
            for at in range(0, FILL, 50):
                accepted = await asyncio.gather(*(_post(http, url, r) for r in filled[at:at + 50]))
                assert None not in accepted, "a report was refused while filling"
            await eventually(lambda: set(filled) <= seen, timeout=60, what="the filled alerts at the console")

            stop, samples, served = asyncio.Event(), list[float](), list[int]()
            probe = asyncio.create_task(_probe(url, stop, samples))
            until = time.monotonic() + STREAM * STREAM_EVERY_S + 1
            readers = [asyncio.create_task(_read_lists(url, until, served)) for _ in range(READERS)]
            await eventually(lambda: len(served) >= READERS, timeout=30, what="the readers under way")
            stream: list[str] = []
            for n in range(STREAM):
                rid = await _post(http, url, f"stream-{n}")
                assert rid is not None, f"report stream-{n} was refused"
                stream.append(rid)
                await asyncio.sleep(STREAM_EVERY_S)  # the stream's pace, not a synchronisation
            await eventually(lambda: set(stream) <= seen, timeout=30, what="every streamed report at the console")
            await asyncio.gather(*readers)
            stop.set()
            await probe

            assert await _metric(http, url, "relay_failovers_total") == 0
            assert twilio.messages == [] and smtp.mails == [], "an SMS or e-mail went out with a healthy broker"
            assert len(served) >= READERS * 2, f"the readers were served only {len(served)} lists"
            assert min(served) > FILL * 500, "a list came back short"  # a full list is about 1 MB
            samples.sort()
            p99 = samples[int(len(samples) * 0.99)]
            assert p99 < HEALTHZ_P99_S, f"/healthz p99 {p99 * 1000:.0f} ms over {len(samples)} probes"
            assert relay.proc is not None and relay.proc.poll() is None
        finally:
            desk.cancel()
            await asyncio.gather(desk, return_exceptions=True)
