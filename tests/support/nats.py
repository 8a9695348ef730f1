"""A private three-node NATS cluster with JetStream and its MQTT listener, on free 127.0.0.1 ports, whose nodes a
test may SIGKILL and start again; and a console that speaks MQTT 3.1.1, the only MQTT that NATS speaks.

Debian's `nats-server` (2.9). Each node has a client, a cluster (route), an MQTT and a monitoring (`http`) port, and
its JetStream store in the test's temp dir, so a node started again finds what it had. What NATS does here that a
reader would not guess:
- The MQTT streams' replica count, unless `stream_replicas` says otherwise, is the number of *routes written in the
  node's config*, not the cluster's size: two routes on a three-node cluster gave R2, which has no quorum left when
  one node dies, and no node could take an MQTT connection until it came back. Hence `stream_replicas: 3`.
- Every MQTT step that touches JetStream (a CONNECT loads the session, a QoS 1 PUBLISH is stored before its
  PUBACK) waits for the leader of the stream concerned. A SIGKILLed node's leaderships move only after a Raft
  election, 4 to 9 s in 2.9 (not configurable), and meanwhile those steps time out after 4 s on *every* node.
- One node of three is not a quorum: it listens, and hangs up on every MQTT CONNECT.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.console import Console
from tests.support.wait import free_port

STARTUP_S = 60.0  # three nodes electing their leaders and creating the MQTT streams, on two shared cores
MQTT_STREAMS = ("$MQTT_sess", "$MQTT_msgs", "$MQTT_rmsgs")


@dataclass
class NatsNode:
    name: str
    workdir: Path
    client_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def mqtt(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
            return dict(json.load(r))

    def config(self, peers: list[NatsNode], extra: str = "") -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers if p is not self)
        return (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / "jetstream"}" }}\n'
            + (f"cluster {{ name: uav-test, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n"
               if len(peers) > 1 else "")
            + f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: {len(peers)} }}\n"
            + extra
        )


class NatsCluster:
    """`start()` brings up every node and waits until each takes an MQTT connection; `kill(node)` and
    `start_node(node)` at will; `stop()` at the end ends each node by its own PID."""

    def __init__(self, workdir: Path, size: int = 3, extra_conf: str = "") -> None:
        binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                                 else None)
        if binary is None:
            pytest.fail("nats-server is not installed: apt-get install nats-server (Debian's package)")
        self._binary = binary
        self.nodes = [NatsNode(f"n{i + 1}", workdir / f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.workdir.mkdir(parents=True)
            (node.workdir / "nats.conf").write_text(node.config(self.nodes, extra_conf))

    @property
    def hosts(self) -> list[str]:
        return [n.mqtt for n in self.nodes]

    def alive(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.proc is not None]

    # ---- the nodes' processes ------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            self._spawn(node)
        try:
            self.wait_serving(self.nodes)
        except BaseException:
            self.stop()
            raise

    def start_node(self, node: NatsNode) -> None:
        """Start one node again (same ports, same store). It serves MQTT only with a majority of the nodes up."""
        self._spawn(node)

    def _spawn(self, node: NatsNode) -> None:
        assert node.proc is None, f"{node.name} is running"
        node.proc = subprocess.Popen(
            [self._binary, "-c", str(node.workdir / "nats.conf"), "-l", str(node.workdir / "nats.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, node: NatsNode) -> None:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node)

    # ---- readiness -----------------------------------------------------------------------------------

    def wait_serving(self, nodes: list[NatsNode], timeout: float = STARTUP_S) -> None:
        """Until the cluster has formed (routes, a JetStream meta leader) and each of `nodes` answers an MQTT
        CONNECT with a CONNACK: only then has it its JetStream quorum and the MQTT streams."""
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting:
            node = waiting[0]
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"nats-server {node.name} exited: {self.log_tail(node)}")
            if self._formed(node) and mqtt_connack(node.mqtt_port, f"probe-{node.name}"):
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} not serving MQTT after {timeout} s: {self.log_tail(node)}")
            time.sleep(0.1)

    def _formed(self, node: NatsNode) -> bool:
        try:
            routes, jsz = node.monitor("/routez"), node.monitor("/jsz")
        except OSError:
            return False
        peers = {r.get("remote_id") for r in routes.get("routes") or []}
        clustered = len(self.nodes) > 1
        return len(peers) >= len(self.alive()) - 1 and (not clustered or bool((jsz.get("meta_cluster") or {})
                                                                               .get("leader")))

    def log_tail(self, node: NatsNode, lines: int = 8) -> str:
        log = node.workdir / "nats.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    # ---- who is where --------------------------------------------------------------------------------

    def node_of(self, client_id: str) -> NatsNode | None:
        """The node the MQTT client with this id is connected to (`/connz` of each node still running)."""
        for node in self.alive():
            with contextlib.suppress(OSError):
                if node.monitor(f"/connz?mqtt_client={client_id}").get("connections"):
                    return node
        return None

    def leaders(self) -> dict[str, str]:
        """Raft group -> the name of its leader: `meta`, each MQTT stream, each consumer as `stream > name`."""
        for node in self.alive():
            with contextlib.suppress(OSError):
                jsz = node.monitor("/jsz?accounts=true&streams=true&consumers=true")
                found = {"meta": (jsz.get("meta_cluster") or {}).get("leader", "")}
                for account in jsz.get("account_details") or []:
                    for stream in account.get("stream_detail") or []:
                        found[stream["name"]] = (stream.get("cluster") or {}).get("leader", "")
                        for consumer in stream.get("consumer_detail") or []:
                            found[f"{stream['name']} > {consumer['name']}"] = (
                                (consumer.get("cluster") or {}).get("leader", ""))
                return found
        return {}

    def move_leaders_off(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Until `node` leads no MQTT stream or consumer: each one it leads is asked to step down (JetStream's API
        over a plain NATS connection to another node). The meta leader cannot be moved without a system account:
        pick a node that is not the meta leader."""
        other = next(n for n in self.alive() if n is not node)
        deadline = time.monotonic() + timeout
        while True:
            led = [group for group, leader in self.leaders().items() if leader == node.name]
            if not led:
                return
            assert "meta" not in led, f"{node.name} is the JetStream meta leader"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} still leads {led}")
            for group in led:
                stream, _, consumer = group.partition(" > ")
                subject = (f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer
                           else f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}")
                nats_request(other.client_port, subject)
            time.sleep(0.5)  # an election takes a few hundred ms at least


def mqtt_connack(port: int, client_id: str, timeout: float = 5.0) -> bool:
    """A bare MQTT 3.1.1 CONNECT (clean session): whether the node answered it with an accepting CONNACK."""
    name, ident = b"\x00\x04MQTT", client_id.encode()
    body = name + b"\x04\x02\x00\x3c" + len(ident).to_bytes(2, "big") + ident
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            connack = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return connack[:2] == b"\x20\x02" and connack[3:4] == b"\x00"


def nats_request(port: int, subject: str, timeout: float = 5.0) -> dict[str, Any]:
    """One request with an empty body over the NATS protocol (INFO, CONNECT, SUB, PUB; the MSG back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        reader = s.makefile("rb")
        reader.readline()  # INFO {...}
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.test 1\r\n'
                  + f"PUB {subject} _INBOX.test 0\r\n\r\n".encode())
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionError(f"no answer to {subject}")
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                return dict(json.loads(reader.read(size + 2)[:size]))
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode(errors="replace").strip())


@contextlib.contextmanager
def nats_cluster(workdir: Path, size: int = 3, extra_conf: str = "") -> Iterator[NatsCluster]:
    """Started, and stopped at the end. `extra_conf` goes into each node's config (accounts, say: then include a
    user named in `no_auth_user`, or the readiness probe's anonymous CONNECT is refused)."""
    cluster = NatsCluster(workdir, size, extra_conf)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Console311(Console):
    """The dispatcher console of tests/support/console.py, on MQTT 3.1.1 (a persistent session: clean_session
    False), at one node of the cluster."""

    def _new_client(self) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", self.port, identifier=self.identifier,
                              protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=2,
                              timeout=10, **self._login)
