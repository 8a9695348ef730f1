"""What `python -m bench.soak --relays 3` runs against, the desks' consoles, and who stops it all.

* One private PostgreSQL server (tests/support/postgres.py: 127.0.0.1 only, no Unix socket, fsync and
  full_page_writes on as in production; run as the `postgres` user when the bench runs as root) and one database in
  it, `soak`, shared by the three relays.
* A three-node NATS cluster with JetStream and MQTT (tests/support/nats.py's nodes and readiness probe, on free
  127.0.0.1 ports, each node's JetStream in the run's directory), configured as deploy/nats/uav-relay.conf says for
  MQTT: `stream_replicas: 3`, `ack_wait: "10s"`, `max_ack_pending: 1000`.
* The Twilio-shaped server and the SMTP server, in this process (as the single-relay soak).
* Three relays (`python -m relay run`, tests/support/process.py) with the single-relay soak's config
  (`with_backups(settings_dict(...))`, SMS to two phones and e-mail for airfield-1, one phone and e-mail for
  airfield-2), changed only in what several relays need: the PostgreSQL store (`lease_s` 5, the default), `mqtt.hosts`
  (the three nodes, the same order for every relay, as deployed), `mqtt.protocol = "3.1.1"`, `mqtt.client_id`
  relay-1..3, one `ack_link_key`, and `log_level = "info"` (the takeover is read from the logs).

Every process is started by this module and stopped by its own PID: the relays by SIGTERM at the end of a run (their
exit codes are reported), and whatever still runs after an exception or Ctrl-C by SIGKILL; the NATS nodes by
SIGKILL; PostgreSQL by SIGINT to its postmaster (a fast shutdown), its temp dir removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from bench.env import cpu_s, rss_mb
from bench.soak_world import Desk, wait_metric
from tests.support.console import Console
from tests.support.nats import NatsCluster, NatsNode, mqtt_connack
from tests.support.postgres import PostgresServer, server_bin
from tests.support.process import RelayProcess
from tests.support.relay import settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake

ACK_LINK_KEY = "soak-relays-one-key-for-every-relay-0123456789"
DATABASE = "soak"
RELAYS = 3
PUBLISH_WITHIN_S = 30.0  # a console keeps an answer this long while no node takes it (elections take 4-9 s)
NATS_MQTT = 'mqtt {{ listen: 127.0.0.1:{port}, stream_replicas: 3, ack_wait: "10s", max_ack_pending: 1000 }}'


def nats_binary() -> str | None:
    return shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                           else None)


def missing_tools() -> str | None:
    """Why this mode cannot run here, or None."""
    if nats_binary() is None:
        return "nats-server is not installed (apt-get install nats-server: Debian's package, 2.9)"
    if server_bin("initdb") is None or server_bin("postgres") is None:
        return "PostgreSQL's server (initdb, postgres) is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` user to run PostgreSQL's server as"
    return None


# ---- the desks' consoles ---------------------------------------------------------------------------------------

class ClusterConsole(Console):
    """A desk's console on MQTT 3.1.1 with a persistent session (clean_session false), at one NATS node at a time:
    when its node goes, or hangs up on the CONNECT, or does not answer it within 5 s, the next node, round the list.
    The session (and what was queued in it meanwhile) lives in the cluster, so any node resumes it."""

    def __init__(self, ports: list[int], first: int, desk_id: str) -> None:
        super().__init__(ports[first], desk_id)
        self.ports, self._at = ports, first
        self.node: int | None = None  # index of the node it is connected to now
        self._node_at = first  # the node it is connecting to
        self.connects: list[tuple[float, int]] = []  # (perf_counter, node index) of each accepted CONNECT

    async def _run(self) -> None:
        while True:
            at = self._at % len(self.ports)
            client = aiomqtt.Client("127.0.0.1", self.ports[at], identifier=self.identifier,
                                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=2,
                                    timeout=5, username=self._login["username"],
                                    password=self._login["password"])
            self._node_at = at
            try:
                await self._serve(client)
            except aiomqtt.MqttError:
                pass
            finally:
                self.node = None
            self._at += 1
            await asyncio.sleep(0.2)

    def _on_connect(self) -> None:
        self.node = self._node_at
        self.connects.append((time.perf_counter(), self._node_at))

    async def publish(self, topic: str, body: dict[str, Any] | str | bytes) -> None:
        """QoS 1, kept until a node takes it (its PUBACK: NATS gives it once the message is in JetStream)."""
        payload = json.dumps(body) if isinstance(body, dict) else body
        async with asyncio.timeout(PUBLISH_WITHIN_S):
            while True:
                await self._connected.wait()
                client = self._client
                if client is None:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    await client.publish(topic, payload, qos=1, timeout=5)
                    return
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.2)


class RecordingDesk(Desk):
    """soak_world's Desk (`received` to every first copy, `ack` after a drawn delay to a drawn share, the arrival
    time of every copy), named after its console's desk."""

    def __init__(self, console: ClusterConsole, rng: random.Random, ack_share: float, max_delay_s: float) -> None:
        super().__init__(console, rng, ack_share, max_delay_s)
        self.desk_id = console.desk_id


# ---- the cluster ----------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    root: Path
    pg: PostgresServer
    nats: NatsCluster
    twilio: TwilioFake
    smtp: SmtpServer
    relays: list[RelayProcess]
    lease_s: float
    started_s: float  # from the first process started until all three relays were ready and connected

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.relays]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nats.nodes]

    def clients_on(self, client_ids: list[str]) -> Counter[int]:
        """Node index -> how many of these MQTT clients are connected to it now (blocking: the nodes' /connz)."""
        where: Counter[int] = Counter()
        for client_id in client_ids:
            node = self.nats.node_of(client_id)
            if node is not None:
                where[self.nats.nodes.index(node)] += 1
        return where


def relay_config(n: int, root: Path, cluster_hosts: list[str], db_url: str, smtp_port: int, twilio_url: str,
                 escalation: dict[str, float]) -> dict[str, Any]:
    first_port = int(cluster_hosts[0].rpartition(":")[2])  # settings_dict wants one; mqtt.hosts overrides it
    cfg = with_backups(settings_dict(first_port, root / "data"), smtp_port=smtp_port, twilio_url=twilio_url,
                       **escalation)  # also a free HTTP port, public_url on it
    cfg["relay"] = {**cfg["relay"], "log_level": "info"}
    cfg["store"] = {"url": db_url}  # lease_s: the default (5)
    cfg["mqtt"] = {**cfg["mqtt"], "hosts": cluster_hosts, "protocol": "3.1.1", "client_id": f"relay-{n}"}
    cfg["http"] = {**cfg["http"], "rate_per_s": 100000, "rate_burst": 100000, "ack_link_key": ACK_LINK_KEY}
    cfg["sms"] = {**cfg["sms"], "bundle_window_s": 1}
    return cfg


async def wait_serving(nats: NatsCluster, node: NatsNode, within_s: float = 60.0) -> float:
    """Seconds until `node` answers an MQTT CONNECT with an accepting CONNACK (only with its JetStream quorum)."""
    t = time.perf_counter()
    deadline = t + within_s
    while not await asyncio.to_thread(mqtt_connack, node.mqtt_port, f"soak-probe-{node.name}", 2.0):
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"nats-server {node.name} exited: {nats.log_tail(node)}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{node.name} not serving MQTT {within_s:g} s after its start")
        await asyncio.sleep(0.1)
    return time.perf_counter() - t


async def stop_relays(relays: list[RelayProcess]) -> list[int | None]:
    """SIGTERM to each relay still running, at once, in threads (the Twilio-shaped server on this loop must keep
    answering while they drain); each one's exit code, None where it was not running or needed a SIGKILL."""

    def one(r: RelayProcess) -> int | None:
        if r.proc is None:
            return None
        try:
            return r.terminate()
        except subprocess.TimeoutExpired:
            return None

    return list(await asyncio.gather(*(asyncio.to_thread(one, r) for r in relays)))


@contextlib.asynccontextmanager
async def cluster(root: Path, escalation: dict[str, float]) -> AsyncIterator[Cluster]:
    """PostgreSQL, NATS, the fakes and three relays (each ready, its MQTT channel up), all under `root`."""
    t0 = time.perf_counter()
    twilio, smtp = TwilioFake(), SmtpServer()
    pg: PostgresServer | None = None
    nats: NatsCluster | None = None
    relays: list[RelayProcess] = []
    try:
        await twilio.start()
        smtp.start()
        pg = PostgresServer(fsync=True)
        await asyncio.to_thread(pg.start)
        pg.sql(f'CREATE DATABASE "{DATABASE}"')
        db_url = pg.url(DATABASE)
        nats = NatsCluster(root / "nats", 3)
        for node in nats.nodes:  # tests/support/nats.py's config, with deploy/nats/uav-relay.conf's MQTT settings
            conf = node.config(nats.nodes)
            plain = f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: 3 }}"
            assert plain in conf, conf
            (node.workdir / "nats.conf").write_text(conf.replace(plain, NATS_MQTT.format(port=node.mqtt_port)))
        await asyncio.to_thread(nats.start)
        for n in range(1, RELAYS + 1):
            workdir = root / f"relay-{n}"
            workdir.mkdir(parents=True)
            cfg = relay_config(n, workdir, nats.hosts, db_url, smtp.port, twilio.base_url, escalation)
            relays.append(RelayProcess(cfg, workdir))
        # the first one alone creates the schema; then the other two
        relays[0].start()
        await relays[0].wait_ready(timeout=60)
        for r in relays[1:]:
            r.start()
        for r in relays[1:]:
            await r.wait_ready(timeout=60)
        async with aiohttp.ClientSession() as http:
            for r in relays:
                await wait_metric(http, r.url, 'relay_channel_up{channel="mqtt"}', 1.0, within_s=60)
        lease_s = float(relays[0].settings["store"].get("lease_s", 5.0))
        yield Cluster(root, pg, nats, twilio, smtp, relays, lease_s, time.perf_counter() - t0)
    except Exception:
        for r in relays:
            if r.log.exists():
                print(f"{r.settings['mqtt']['client_id']} stderr, last lines:\n{r.log_tail(15)}", file=sys.stderr)
        raise
    finally:
        # by PID, whatever state the run left them in; the normal end has SIGTERMed the relays already
        for r in relays:
            r.stop()
        if nats is not None:
            nats.stop()
        if pg is not None:
            with contextlib.suppress(Exception):
                shutil.copy(pg.log, root / "postgres.log")
            pg.close()
        smtp.stop()
        await twilio.stop()


# ---- CPU and memory -------------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Usage:
    """Cores busy per second for each group of processes (relays, NATS nodes, PostgreSQL with its backends, the
    bench), and each relay's and node's largest resident set."""

    c: Cluster
    busy: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("relays", "nats", "postgres",
                                                                                    "bench")})
    rss: dict[str, float] = field(default_factory=dict)

    def _groups(self) -> dict[str, list[int]]:
        pg = self.c.pg.proc.pid if self.c.pg.proc else None
        return {
            "relays": [r.proc.pid for r in self.c.relays if r.proc is not None],
            "nats": [n.proc.pid for n in self.c.nats.nodes if n.proc is not None],
            "postgres": [pg, *_children(pg)] if pg else [],
            "bench": [os.getpid()],
        }

    def _sample_rss(self) -> None:
        named = [(r.settings["mqtt"]["client_id"], r.proc) for r in self.c.relays]
        named += [(f"nats {n.name}", n.proc) for n in self.c.nats.nodes]
        for name, proc in named:
            if proc is not None:
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    self.rss[name] = max(self.rss.get(name, 0.0), rss_mb(proc.pid))

    def _now(self) -> dict[int, float]:
        out = {}
        for pids in self._groups().values():
            for pid in pids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    out[pid] = cpu_s(pid)
        return out

    async def run(self) -> None:
        last = self._now()  # what each process used before the run does not count
        t = time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            seen: dict[int, float] = {}
            for name, pids in self._groups().items():
                used = 0.0
                for pid in pids:
                    try:
                        total = cpu_s(pid)
                    except (OSError, ValueError, IndexError):
                        continue  # gone meanwhile
                    used += total - last.get(pid, 0.0)  # a new process: all its CPU so far counts in this second
                    seen[pid] = total
                self.busy[name].append(used / (now - t))
            last, t = seen, now
            self._sample_rss()

    def summary(self) -> list[str]:
        def peak(xs: list[float]) -> float:
            return max((sum(xs[i:i + 5]) / 5 for i in range(max(1, len(xs) - 4))), default=0.0)

        parts = [f"{k} {sum(v) / max(1, len(v)):.2f} / {peak(v):.2f}" for k, v in self.busy.items()]
        return [f"CPU, cores busy (mean / busiest 5 s) of {os.cpu_count()}: {', '.join(parts)}",
                "largest RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in self.rss.items())]
