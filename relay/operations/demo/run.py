"""`relay demo`: the whole relay on one machine, nothing external: a broker, an SMTP sink, a Twilio-shaped SMS sink,
a simulated dispatcher console; sample reports, the primary broken half-way to show the failover, acks by the
console and by SMS reply, a live log and a latency summary. Everything stays on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiosmtpd.controller import Controller

from relay.domain.config import Settings
from relay.operations.daemon import Relay
from relay.operations.demo.brokers import DemoBroker, demo_broker, free_port
from relay.operations.demo.twilio_sink import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, TwilioSink

DESK_PHONE = "+79001110001"
DESK_EMAIL = "duty@airfield.demo"
PLACES = [("Грязинский район", 52.49, 39.93), ("Липецк, Сокол", 52.63, 39.65), ("Задонский район", 52.39, 38.92),
          ("Елецкий район", 52.62, 38.50), ("Данковский район", 53.26, 39.15), ("Чаплыгинский район", 53.24, 39.97)]
KINDS = [("fixed_wing", 1, 315, "low"), ("multirotor", 2, 90, "medium"), ("fixed_wing", 3, 270, "low"),
         ("missile_like", 1, 0, "high"), ("helicopter", 1, 180, "low"), ("multirotor", 1, 45, "low")]


@dataclass
class Row:
    report_id: str
    posted: float
    alert_id: str = ""
    code: str = ""
    console_at: float | None = None
    sms_at: float | None = None
    acked_via: str = ""
    ack_latency: float | None = None


class _Mails:
    def __init__(self) -> None:
        self.count, self.lock = 0, threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:  # runs in the SMTP sink's own thread
            self.count += 1
        return "250 Message accepted for delivery"


def say(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')}  {text}", flush=True)


@contextlib.contextmanager
def smtp_sink(port: int, mails: _Mails) -> Any:
    controller = Controller(mails, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    try:
        yield
    finally:
        controller.stop()


def demo_settings(workdir: Path, broker: DemoBroker, http_port: int, smtp_port: int, sms_url: str,
                  operator_token: str, desk_token: str) -> Settings:
    return Settings(
        relay={"data_dir": str(workdir), "log_level": "error"},
        store={"url": f"sqlite:///{workdir}/relay.db"},
        http={"port": http_port, "public_url": f"http://127.0.0.1:{http_port}"},
        mqtt={"port": broker.port, "client_id": "uav-relay-demo", "protocol": broker.protocol, "reconnect_max_s": 1},
        sms={"enabled": True, "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from_number": FROM_NUMBER,
             "api_base_url": sms_url, "timeout_s": 5},
        email={"enabled": True, "port": smtp_port, "from_address": "relay@uav.demo"},
        escalation={"ack_timeout_s": 4, "repeat_s": 15, "give_up_s": 120, "retry_s": 1},
        tracks={"enabled": True},
        operators=[{"id": "op-demo", "token": operator_token}],
        desks=[{"id": "airfield-1", "name": "Аэродром (демо)", "token": desk_token, "sms": [DESK_PHONE],
                "email": [DESK_EMAIL]}],
    )


async def run_demo(count: int = 6, pause_s: float = 2.0, embedded_broker: bool = False) -> int:
    workdir = Path("var") / f"demo-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    operator_token, desk_token = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    mails, sms = _Mails(), TwilioSink()
    try:
        async with demo_broker(workdir, embedded_broker) as broker:
            await sms.start()
            http_port, smtp_port = free_port(), free_port()
            with smtp_sink(smtp_port, mails):
                settings = demo_settings(workdir, broker, http_port, smtp_port, sms.base_url, operator_token,
                                         desk_token)
                return await _run(settings, broker, sms, mails, count, pause_s, operator_token, desk_token)
    finally:
        await sms.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(settings: Settings, broker: DemoBroker, sms: TwilioSink, mails: _Mails, count: int, pause_s: float,
               operator_token: str, desk_token: str) -> int:
    relay, stop = Relay(settings), asyncio.Event()
    url = settings.http.public_url
    rows: dict[str, Row] = {}
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(relay.run(stop))
        async with asyncio.timeout(15):
            await relay.ready.wait()
            await _mqtt_up(url)  # a report before the broker connection is up would fail over at once
        _banner(url, broker, operator_token, desk_token)
        console_ready = asyncio.Event()
        console = tg.create_task(_console(broker.port, broker.protocol, rows, console_ready))
        replies = tg.create_task(_sms_replies(sms, rows, url))
        events = tg.create_task(_follow(url, operator_token, rows))
        try:
            async with asyncio.timeout(10):
                await console_ready.wait()  # the desk is watching before the first report comes
            await _post_reports(url, operator_token, broker, rows, count, pause_s)
            await _all_acknowledged(rows, within_s=60)
        finally:
            for task in (console, replies, events):
                task.cancel()
            stop.set()
        await running
    _summary(rows, sms, mails)
    return 0 if all(r.acked_via for r in rows.values()) else 1


def _banner(url: str, broker: DemoBroker, operator_token: str, desk_token: str) -> None:
    print(f"\nuav-relay demo: relay on {url}, broker: {broker.kind}, SMS and e-mail go to local sinks.\n"
          f"  Operator console:   {url}/console/operator    token {operator_token}\n"
          f"  Dispatcher console: {url}/console/dispatcher  token {desk_token}\n"
          "  (open them now to watch; the demo ends by itself)\n", flush=True)


async def _post_reports(url: str, token: str, broker: DemoBroker, rows: dict[str, Row], count: int,
                        pause_s: float) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for n in range(count):
            if n == count // 2:
                await broker.stop()
                say("!! the MQTT broker is down now: the next reports fail over to SMS and e-mail")
            place, lat, lon = PLACES[n % len(PLACES)]
            uav_type, how_many, heading, altitude = KINDS[n % len(KINDS)]
            report_id = f"demo-{int(time.time())}-{n}"
            body = {"report_id": report_id, "observed_at": (datetime.now(UTC) - timedelta(seconds=40)).isoformat(),
                    "location": {"lat": lat, "lon": lon, "district": place}, "uav_type": uav_type,
                    "count": how_many, "heading_deg": heading, "altitude": altitude, "priority": "immediate"}
            row = rows[report_id] = Row(report_id, time.monotonic())
            async with http.post(f"{url}/api/v1/reports", json=body) as r:
                answer = await r.json()
            row.alert_id, row.code = answer["alert_id"], answer["short_code"]
            say(f"operator filed {report_id}: {place}, {uav_type} x{how_many} -> {r.status}, code {row.code}")
            await asyncio.sleep(pause_s)  # the demo's pace, so a person can follow it
        if count // 2 < count:
            await broker.start()
            say("the MQTT broker is back")


async def _console(port: int, protocol: str, rows: dict[str, Row], ready: asyncio.Event) -> None:
    """A dispatcher's console: shows each alert, says `received`, and a person acks it a moment later."""
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="demo-console", protocol=version) as client:
                await client.subscribe("uav/alerts/airfield-1", qos=1)
                ready.set()
                async for message in client.messages:
                    alert = json.loads(message.payload if isinstance(message.payload, bytes) else b"{}")
                    row = next((r for r in rows.values() if r.alert_id == alert["alert_id"]), None)
                    if row is not None and row.console_at is None:
                        row.console_at = time.monotonic()
                    say(f"console shows {alert['short_code']} ({alert['report']['location'].get('district', '')})")
                    ack = {"alert_id": alert["alert_id"], "kind": "received"}
                    await client.publish(alert["ack_topic"], json.dumps(ack), qos=1)
                    await asyncio.sleep(1.0)  # the dispatcher reads it, then presses the button
                    await client.publish(alert["ack_topic"], json.dumps(
                        {**ack, "kind": "ack", "by": "Оперативный дежурный (демо)"}), qos=1)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)  # the broker is down (that is the demo's point): try again


async def _sms_replies(sms: TwilioSink, rows: dict[str, Row], url: str) -> None:
    """The dispatcher's phone: replies to an alert SMS with its code (a signed Twilio webhook to the relay)."""
    answered = 0
    while True:
        for message in sms.messages[answered:]:
            answered += 1
            row = next((r for r in rows.values() if r.code and r.code in message.body), None)
            if row is None:
                continue
            row.sms_at = row.sms_at or time.monotonic()
            say(f"SMS to {message.to}: «{message.body[:70]}…»")
            status, twiml = await TwilioSink.inbound(url, DESK_PHONE, f"принято {row.code}")
            reply = twiml.split("<Message>")[-1].split("</Message>")[0] if "<Message>" in twiml else ""
            say(f"dispatcher replied by SMS «принято {row.code}» -> {status} «{reply}»")
        await asyncio.sleep(0.2)  # new SMS at the sink are looked for five times a second


async def _follow(url: str, token: str, rows: dict[str, Row]) -> None:
    """The operator's view: state changes over the relay's event stream."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=None)) as http, \
            http.get(f"{url}/api/v1/events") as stream:
        async for line in _lines(stream):
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            row = next((r for r in rows.values() if r.alert_id == event["alert_id"]), None)
            if row is None:
                continue
            if event["state"] == "acknowledged" and event.get("ack"):
                ack = event["ack"]
                row.acked_via, row.ack_latency = ack["channel"], ack["latency_s"]
                say(f"operator sees {row.code} acknowledged by {ack['by']!r} via {ack['channel']} "
                    f"after {ack['latency_s']:.1f} s")
            elif event["state"] == "delivered":
                say(f"operator sees {row.code} delivered to the console")


async def _lines(stream: aiohttp.ClientResponse) -> AsyncIterator[str]:
    while True:
        raw = await stream.content.readline()
        if not raw:
            return
        yield raw.decode().strip()


async def _all_acknowledged(rows: dict[str, Row], within_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while not all(r.acked_via for r in rows.values()):  # noqa: ASYNC110 - people (simulated) pressing
                await asyncio.sleep(0.2)


async def _mqtt_up(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/readyz") as r:
                if (await r.json())["channels"]["mqtt"]["state"] == "up":
                    return
            await asyncio.sleep(0.05)  # bounded by the caller's timeout


def _summary(rows: dict[str, Row], sms: TwilioSink, mails: _Mails) -> None:
    print("\nreport                 code    console    SMS     acked via   report -> ack")
    for r in rows.values():
        console = f"{(r.console_at - r.posted) * 1000:6.0f} ms" if r.console_at else "     -   "
        by_sms = "yes" if r.sms_at else "-"
        latency = f"{r.ack_latency:.1f} s" if r.ack_latency is not None else "NOT ACKED"
        print(f"{r.report_id:22} {r.code:7} {console:10} {by_sms:7} {r.acked_via or '-':11} {latency}")
    to_console = [r.console_at - r.posted for r in rows.values() if r.console_at]
    acks = [r.ack_latency for r in rows.values() if r.ack_latency is not None]
    if to_console:
        print(f"\nPOST -> console: median {statistics.median(to_console) * 1000:.0f} ms, "
              f"max {max(to_console) * 1000:.0f} ms ({len(to_console)} alerts over MQTT)")
    if acks:
        print(f"report -> acknowledgement: median {statistics.median(acks):.1f} s, max {max(acks):.1f} s")
    print(f"SMS sent: {len(sms.messages)}, e-mails sent: {mails.count}; "
          f"acknowledged {sum(1 for r in rows.values() if r.acked_via)} of {len(rows)}\n")
