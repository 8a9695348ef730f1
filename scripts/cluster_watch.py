"""Watch nothing get lost: a 112 system and an airfield desk's console in one, against ./scripts/cluster's three
relays and three NATS nodes (run by `./scripts/cluster watch`).

It files a steady stream of reports over HTTP, round-robin to the three relays; one that does not answer is
skipped and the same report (same report_id: the relays' intake is idempotent) goes to the next, as a 112 system
would retry. As the desk's console it subscribes over MQTT 3.1.1 to the desk's alerts with a persistent session
(clean_session false), at whichever NATS node answers, moving to another when its node dies, and acknowledges each
alert as a dispatcher would. Every second it prints one line: what the relays accepted, what the console saw, what
is missing (accepted, not seen yet) and for how long, duplicates (the same alert_id twice: allowed, alerts are at
least once), and which relays and nodes answer.

Ctrl-C (or --seconds N) ends the stream; it then waits up to 30 s for what is still missing and for the relays to
confirm each ack, and prints the verdict: "0 lost", or the alert ids lost. Exit code 0 for "0 lost", 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiomqtt

DESK_ID = "airfield-1"
POST_TIMEOUT_S = 3.0  # a relay that has not answered a report by then is treated as down: the next one gets it
DRAIN_S = 30.0  # after the stream ends, how long missing alerts and unconfirmed acks are waited for


def read_env(path: Path) -> dict[str, str]:
    """KEY=value lines, as scripts/cluster writes them (values optionally in double quotes)."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip().strip('"')
    return values


@dataclass
class Setup:
    """Where things are, from scripts/cluster's ports.env and secrets.env."""

    relay_urls: list[str]
    mqtt_ports: list[int]
    monitor_ports: list[int]
    operator_token: str

    @classmethod
    def load(cls, cluster_dir: Path) -> Setup:
        ports, secrets = read_env(cluster_dir / "ports.env"), read_env(cluster_dir / "secrets.env")
        return cls(
            relay_urls=[f"http://127.0.0.1:{p}" for p in ports["HTTP_PORTS"].split()],
            mqtt_ports=[int(p) for p in ports["MQTT_PORTS"].split()],
            monitor_ports=[int(p) for p in ports["MONITOR_PORTS"].split()],
            operator_token=secrets["OPERATOR_TOKEN"],
        )


@dataclass
class Accepted:
    report_id: str
    at: float  # monotonic time of the relay's 201
    relay: int  # which relay (1-3) answered


@dataclass
class Tally:
    accepted: dict[str, Accepted] = field(default_factory=dict)  # alert_id ->
    seen: Counter[str] = field(default_factory=Counter)  # alert_id -> times the console got it (this run only)
    unanswered: dict[str, float] = field(default_factory=dict)  # report_id -> when first posted; none accepted yet
    refused: dict[str, str] = field(default_factory=dict)  # report_id -> why a relay refused it (4xx)
    acks_confirmed: set[str] = field(default_factory=set)  # alert_ids the relays show as acknowledged
    earlier: int = 0  # alerts of an earlier watch, still queued in the console's persistent session

    def missing(self) -> dict[str, Accepted]:
        return {a: acc for a, acc in self.accepted.items() if a not in self.seen}

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values() if n > 1)


def stamp() -> str:
    return time.strftime("%H:%M:%S")


class Watch:
    def __init__(self, setup: Setup, rate: float) -> None:
        self.setup, self.rate = setup, rate
        self.run_id = datetime.now(UTC).strftime("%H%M%S")  # report_ids of this run: watch-<run>-<n>
        self.tally = Tally()
        self.stop_filing = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.console_node: int | None = None  # 1-3
        self.acks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.relay_state = ["?"] * len(setup.relay_urls)
        self.node_state = ["?"] * len(setup.mqtt_ports)
        self._filing: set[asyncio.Task[None]] = set()

    # ---- the 112 system ------------------------------------------------------------------------------------

    async def file_reports(self, http: aiohttp.ClientSession) -> None:
        """`rate` reports a second until told to stop; each one its own task, so that a relay that hangs delays
        only that report, not the ones after it."""
        n, next_at = 0, time.monotonic()
        while not self.stop_filing.is_set():
            n += 1
            task = asyncio.create_task(self.file_one(http, f"watch-{self.run_id}-{n:05d}", n % len(self.relay_urls)))
            self._filing.add(task)
            task.add_done_callback(self._filing.discard)
            next_at += 1 / self.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_filing.wait(), max(0.0, next_at - time.monotonic()))

    @property
    def relay_urls(self) -> list[str]:
        return self.setup.relay_urls

    async def file_one(self, http: aiohttp.ClientSession, report_id: str, first: int) -> None:
        """Relay `first`, then the next, round the list, until one accepts: the same report_id each time, so a
        relay that stored it but died before answering is not a second alert."""
        self.tally.unanswered[report_id] = time.monotonic()
        body = {
            "report_id": report_id,
            "observed_at": datetime.now(UTC).isoformat(),
            "location": {"lat": 52.61, "lon": 39.59, "district": "Грязинский район"},
            "uav_type": "fixed_wing", "count": 1, "heading_deg": 315, "altitude": "low",
            "sound": "piston", "perception": "seen_and_heard",
            "caller": {"phone": "+79001234567", "name": "Петров"},
        }
        headers = {"Authorization": f"Bearer {self.setup.operator_token}"}
        attempt = 0
        while True:
            i = (first + attempt) % len(self.relay_urls)
            attempt += 1
            try:
                async with asyncio.timeout(POST_TIMEOUT_S), http.post(
                        f"{self.relay_urls[i]}/api/v1/reports", json=body, headers=headers) as r:
                    answer = await r.json(content_type=None)
                    if r.status in (200, 201):
                        self.tally.accepted[answer["alert_id"]] = Accepted(report_id, time.monotonic(), i + 1)
                        del self.tally.unanswered[report_id]
                        return
                    if r.status == 429:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    elif r.status < 500:  # refused for good (a wrong token, say): no other relay would differ
                        self.tally.refused[report_id] = f"{r.status} {answer}"
                        del self.tally.unanswered[report_id]
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # down, hung, or died mid-answer: the next relay
            if attempt % len(self.relay_urls) == 0:
                await asyncio.sleep(0.5)  # no relay took it this round

    # ---- the desk's console --------------------------------------------------------------------------------

    async def console(self) -> None:
        """Connected to one node at a time; when it goes, the next node, round the list. The session (and the
        alerts queued in it while the console was away) is the cluster's, so any node resumes it."""
        ports, i = self.setup.mqtt_ports, 0
        while True:
            port = ports[i % len(ports)]
            client = aiomqtt.Client("127.0.0.1", port, identifier=f"watch-console-{DESK_ID}",
                                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=False,
                                    keepalive=2, timeout=5)
            try:
                async with client:
                    await client.subscribe(f"uav/alerts/{DESK_ID}", qos=1)
                    self.client, self.console_node = client, i % len(ports) + 1
                    async for message in client.messages:
                        self.on_alert(message)
            except aiomqtt.MqttError:
                pass
            finally:
                self.client = self.console_node = None
            i += 1
            await asyncio.sleep(0.2)

    def on_alert(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        try:
            alert = json.loads(payload)
            alert_id, report_id = alert["alert_id"], alert["report_id"]
        except (ValueError, KeyError, TypeError):
            return
        if not str(report_id).startswith(f"watch-{self.run_id}-"):
            self.tally.earlier += 1
            return
        self.tally.seen[alert_id] += 1
        if self.tally.seen[alert_id] == 1:
            self.acks.put_nowait((alert["ack_topic"], alert_id))

    async def acknowledge(self) -> None:
        """`received` and `ack` for each new alert, as a dispatcher's console does; kept until a node takes them
        (a publish waits for its PUBACK, which NATS gives only once the message is stored in JetStream)."""
        while True:
            topic, alert_id = await self.acks.get()
            while True:
                client = self.client
                if client is not None:
                    try:
                        for kind in ("received", "ack"):
                            await client.publish(topic, json.dumps(
                                {"alert_id": alert_id, "kind": kind, "by": "cluster watch"}), qos=1, timeout=5)
                        break
                    except aiomqtt.MqttError:
                        pass
                await asyncio.sleep(0.2)

    # ---- who answers ---------------------------------------------------------------------------------------

    async def probe(self, http: aiohttp.ClientSession) -> None:
        """Each relay's /readyz and each node's /healthz (its monitoring port), every second. A change is printed on
        its own line, so that the moment a kill was noticed stays on screen."""

        async def state(url: str) -> str:
            try:
                async with asyncio.timeout(1), http.get(url) as r:
                    return "ok" if r.status == 200 else "unready"
            except (aiohttp.ClientError, TimeoutError):
                return "DOWN"

        while True:
            relays = await asyncio.gather(*(state(f"{u}/readyz") for u in self.relay_urls))
            nodes = await asyncio.gather(*(state(f"http://127.0.0.1:{p}/healthz") for p in self.setup.monitor_ports))
            for kind, old, new in (("relay", self.relay_state, relays), ("NATS node", self.node_state, nodes)):
                for n, (was, now) in enumerate(zip(old, new, strict=True), 1):
                    if was != "?" and was != now:
                        print(f"{stamp()}  ! {kind} {n}: {was} -> {now}", flush=True)
                old[:] = new
            await asyncio.sleep(1)

    def line(self) -> str:
        t = self.tally
        missing = t.missing()
        oldest = f" (oldest {time.monotonic() - min(a.at for a in missing.values()):.1f} s)" if missing else ""
        relays = " ".join(f"{n}:{s}" for n, s in enumerate(self.relay_state, 1))
        nodes = " ".join(f"{n}:{s}" for n, s in enumerate(self.node_state, 1))
        console = f"node {self.console_node}" if self.console_node else "connecting"
        # a report in flight for a few ms is normal; one that no relay has taken for a second is worth showing
        slow = [at for at in t.unanswered.values() if time.monotonic() - at > 1]
        waiting = f"  no relay took {len(slow)} yet" if slow else ""
        return (f"{stamp()}  accepted {len(t.accepted)}  seen {len(t.seen)}  missing {len(missing)}{oldest}"
                f"  twice {t.duplicates()}{waiting} | relays {relays} | nodes {nodes} | console on {console}")

    # ---- the end -------------------------------------------------------------------------------------------

    async def confirm_acks(self, http: aiohttp.ClientSession) -> None:
        """Ask the relays (whichever answers) which of the alerts seen are acknowledged: an ack lost on its way is
        a loss too."""
        headers = {"Authorization": f"Bearer {self.setup.operator_token}"}
        for alert_id in [a for a in self.tally.accepted if a in self.tally.seen and a not in self.tally.acks_confirmed]:
            for url in self.relay_urls:
                try:
                    async with asyncio.timeout(2), http.get(f"{url}/api/v1/alerts/{alert_id}", headers=headers) as r:
                        if r.status == 200:
                            if (await r.json()).get("state") == "acknowledged":
                                self.tally.acks_confirmed.add(alert_id)
                            break
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    continue

    def settled(self) -> bool:
        t = self.tally
        return not t.missing() and not t.unanswered and t.acks_confirmed >= set(t.accepted)

    def verdict(self) -> bool:
        t = self.tally
        lost = t.missing()
        unacked = sorted(set(t.accepted) - t.acks_confirmed - set(lost))
        print(f"\n{len(t.accepted)} reports accepted by the relays, {len(t.seen)} of them seen on the desk's console"
              f" ({t.duplicates()} more than once: alerts are at least once, the console drops a repeat by its"
              f" alert_id); {len(t.acks_confirmed)} acknowledged.")
        by_relay = Counter(a.relay for a in t.accepted.values())
        print("accepted by relay " + ", ".join(f"{n}: {by_relay[n]}" for n in range(1, len(self.relay_urls) + 1)))
        if t.earlier:
            print(f"({t.earlier} alerts not filed by this watch (an earlier one's, queued in the console's persistent"
                  " session, or anyone else's) were not counted)")
        if t.unanswered:
            print(f"{len(t.unanswered)} reports no relay accepted (the 112 system knows: it got no answer): "
                  + ", ".join(sorted(t.unanswered)[:10]))
        for report_id, why in list(t.refused.items())[:5]:
            print(f"refused {report_id}: {why}")
        if unacked:
            print(f"{len(unacked)} acks the relays do not show: " + ", ".join(unacked[:20]))
        if lost:
            print(f"VERDICT: {len(lost)} lost (accepted, never on the console): "
                  + ", ".join(f"{a} ({acc.report_id}, relay {acc.relay})" for a, acc in lost.items()))
            return False
        if unacked or t.refused:
            print("VERDICT: 0 lost, but see above")
            return False
        print("VERDICT: 0 lost")
        return True


async def main(cluster_dir: Path, rate: float, seconds: float | None) -> int:
    try:
        setup = Setup.load(cluster_dir)
    except (OSError, KeyError) as exc:
        print(f"no cluster set up in {cluster_dir} ({exc}): run ./scripts/cluster up first", file=sys.stderr)
        return 2
    watch = Watch(setup, rate)
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # the first Ctrl-C ends the stream and starts the wait for what is missing; a second one ends the wait
        loop.add_signal_handler(sig, lambda: interrupted.set() if watch.stop_filing.is_set()
                                else watch.stop_filing.set())
    print(f"{rate:g} reports a second to {', '.join(setup.relay_urls)} (round-robin); the desk's console on NATS "
          f"MQTT ports {', '.join(map(str, setup.mqtt_ports))}. Kill a relay or a node in another terminal "
          "(./scripts/cluster status shows the PIDs). Ctrl-C ends it with a verdict.\n"
          "relays: ok = /readyz 200; unready = it runs, but its database or MQTT is not up; DOWN = no answer.\n"
          "nodes: ok = /healthz 200; unready = it runs, but has no quorum or is catching up; DOWN = no answer.",
          flush=True)
    async with aiohttp.ClientSession() as http:
        background = [asyncio.create_task(c) for c in (watch.console(), watch.acknowledge(), watch.probe(http))]
        filing = asyncio.create_task(watch.file_reports(http))
        started = time.monotonic()
        try:
            while not watch.stop_filing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.stop_filing.wait(), 1)
                print(watch.line(), flush=True)
                if seconds is not None and time.monotonic() - started >= seconds:
                    watch.stop_filing.set()
            await filing
            print(f"{stamp()}  stream ended; waiting up to {DRAIN_S:g} s for what is missing and for the acks "
                  "(Ctrl-C again to stop waiting)", flush=True)
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline and not interrupted.is_set():
                await watch.confirm_acks(http)
                if watch.settled():
                    break
                print(watch.line(), flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), 1)
        finally:
            for task in [*background, *watch._filing]:
                task.cancel()
            await asyncio.gather(*background, *watch._filing, return_exceptions=True)
    return 0 if watch.verdict() else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent / "var" / "cluster",
                        help="scripts/cluster's directory (default var/cluster)")
    parser.add_argument("--rate", type=float, default=2.0, help="reports a second (default 2)")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: at Ctrl-C)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.dir, args.rate, args.seconds)))
