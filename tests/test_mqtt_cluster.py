"""A clustered broker (issue 16): `mqtt.hosts` names the nodes of one broker, and the relay moves to another node
when its own dies, resuming its persistent session there.

The cluster is three real NATS nodes with JetStream and their MQTT listener (tests/support/nats.py says what NATS
does that one would not guess); the relay runs with `mqtt.protocol = "3.1.1"`, the only MQTT that NATS speaks, and
so does the console.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from channels.base import HealthState
from channels.mqtt import MqttChannel, MqttSettings, Nodes, node_name
from relay.domain.config import MqttSection
from tests.support.broker import Mosquitto
from tests.support.nats import Console311, NatsCluster, NatsNode, nats_cluster
from tests.support.relay import DESK1_PHONE, RunningRelay, report, running_relay, settings_dict, with_backups
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.wait import eventually, free_port, holds_for

RELAY_ID = "relay-under-test"  # tests/support/relay.py's mqtt.client_id


# ---- mqtt.hosts in the config -------------------------------------------------------------------------------


def test_hosts_name_the_nodes_in_order_and_override_host_and_port() -> None:
    section = MqttSection(host="10.9.9.9", port=1, hosts=["127.0.0.1:1883", "[::1]:1884", "mqtt-3.example:1885"])
    assert section.nodes() == [("127.0.0.1", 1883), ("::1", 1884), ("mqtt-3.example", 1885)]
    assert MqttSection(host="broker.example", port=8883).nodes() == [("broker.example", 8883)]


@pytest.mark.parametrize(("entry", "why"), [
    ("127.0.0.1", "must be host:port"),
    ("127.0.0.1:", "the port must be a number"),
    ("127.0.0.1:65536", "the port must be a number"),
    ("::1:1883", "an IPv6 address goes in brackets"),
    ("[::g]:1883", "not an IPv6 address"),
    ("[::1]", "the port must be a number"),
    ("mqtt://127.0.0.1:1883", "host:port without a scheme"),
    ("two words:1883", "must be host:port"),
])
def test_a_bad_hosts_entry_is_refused_by_name(entry: str, why: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MqttSection(hosts=["127.0.0.1:1883", entry])
    assert f"hosts[1] {entry!r}: {why}" in str(caught.value)


def test_a_node_listed_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"hosts\[2\] '127.0.0.1:1884': listed twice"):
        MqttSection(hosts=["127.0.0.1:1883", "127.0.0.1:1884", "127.0.0.1:1884"])


# ---- which node, in what order ------------------------------------------------------------------------------


def test_nodes_are_tried_in_order_then_round_from_the_last_that_answered() -> None:
    nodes = Nodes([("a", 1), ("b", 2), ("c", 3)])
    assert nodes.current == ("a", 1)
    nodes.move_on()  # a did not answer
    assert nodes.current == ("b", 2)  # b answered; later it dies:
    nodes.move_on()
    assert nodes.current == ("c", 3)
    nodes.move_on()
    assert nodes.current == ("a", 1)
    single = Nodes([("broker", 1883)])
    single.move_on()
    assert single.current == ("broker", 1883)  # one broker: always that one


def test_settings_without_hosts_are_the_one_broker_at_host_and_port() -> None:
    cfg = MqttSettings(host="127.0.0.1", port=1883, client_id="r", reply_filter="uav/acks/+", status_topic="s")
    assert cfg.nodes() == (("127.0.0.1", 1883),)
    assert node_name(("::1", 1883)) == "[::1]:1883"


@pytest.fixture
def hangs_up() -> Iterator[int]:
    """A port that takes the connection and closes it without a CONNACK, as a NATS node without its quorum does."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = False

    def serve() -> None:
        while not stop:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop = True
        thread.join(timeout=2)
        server.close()


async def test_the_channel_skips_a_node_that_refuses_and_one_that_hangs_up_at_once(
    broker: Mosquitto, hangs_up: int
) -> None:
    nodes = (("127.0.0.1", free_port()), ("127.0.0.1", hangs_up), ("127.0.0.1", broker.port))
    channel = MqttChannel(MqttSettings(host="127.0.0.1", port=1, client_id="relay-order", reply_filter="uav/acks/+",
                                       status_topic="uav/relay/relay-order/status", hosts=nodes,
                                       subscribe_timeout_s=5.0))
    started = time.monotonic()
    task = asyncio.create_task(channel.run())
    try:
        await eventually(lambda: channel.health.state is HealthState.UP or None, timeout=4, what="up on the third")
        assert time.monotonic() - started < 2.0  # not the 5 s a CONNACK may take: the hang-up ends the wait
        assert channel.health.detail == f"connected to 127.0.0.1:{broker.port}"
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_a_subscription_the_broker_refuses_is_logged_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A NATS user without "$MQTT.sub.>" (deploy/nats/uav-relay.conf says why): the SUBACK refuses every QoS 1
    subscription, and a relay that did not say so would be up and never hear an ack."""
    users = ('accounts { UAV: { jetstream: enabled, users: [\n'
             '  { user: uav-relay, password: pw, permissions: { publish: "uav.>", subscribe: "uav.>" } }\n'
             '  { user: probe, password: pw } ] } }\n'
             "no_auth_user: probe\n")
    with nats_cluster(tmp_path / "nats", size=1, extra_conf=users) as one:
        node = one.nodes[0]
        channel = MqttChannel(MqttSettings(
            host="127.0.0.1", port=node.mqtt_port, client_id="relay-refused", reply_filter="uav/acks/+",
            status_topic="uav/relay/relay-refused/status", username="uav-relay", password="pw", protocol="3.1.1"))
        task = asyncio.create_task(channel.run())
        try:
            await eventually(lambda: channel.health.state is HealthState.UP or None, timeout=10, what="connected")
        finally:
            task.cancel()
            await asyncio.wait([task])
    refused = [vars(r) for r in caplog.records if r.getMessage() == "the broker refused a subscription"]
    assert [(r["filter"], r["levelname"]) for r in refused] == [("uav/acks/+", "ERROR")]


# ---- a real three-node NATS cluster -------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as c:
        yield c


def _relay_settings(tmp_path: Path, nodes: list[NatsNode]) -> dict[str, Any]:
    return settings_dict(nodes[0].mqtt_port, tmp_path / "data",
                         mqtt={"hosts": [n.mqtt for n in nodes], "protocol": "3.1.1"},
                         escalation={"retry_s": 0.5})


class Arrivals:
    """Every alert the console receives, with when: duplicates are allowed, and recognisable by alert_id."""

    def __init__(self, console: Console311) -> None:
        self.at: dict[str, list[float]] = {}
        self._task = asyncio.create_task(self._collect(console))

    async def _collect(self, console: Console311) -> None:
        while True:
            _, body, _ = await console.messages.get()
            self.at.setdefault(str(body.get("alert_id")), []).append(time.monotonic())

    async def all_of(self, alert_ids: list[str], timeout: float) -> None:
        await eventually(lambda: not [a for a in alert_ids if a not in self.at] or None, timeout=timeout,
                         what=f"every one of {len(alert_ids)} alerts at the console")

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
async def arrivals() -> AsyncIterator[list[Arrivals]]:
    made: list[Arrivals] = []
    yield made
    for a in made:
        a.stop()


async def _post(relay: RunningRelay, report_id: str) -> str:
    status, body = await relay.post_report(report(report_id))
    assert status == 201, body
    return str(body["alert_id"])


async def _mqtt_up(relay: RunningRelay) -> float:
    return await relay.metric('relay_channel_up{channel="mqtt"}')


def _connects(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records
            if r.name == "channels.mqtt" and r.getMessage().startswith("connected to the MQTT broker")]


async def test_a_report_reaches_the_console_through_the_cluster_and_its_ack_comes_back(
    cluster: NatsCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="channels.mqtt")
    first, second, _ = cluster.nodes
    async with running_relay(_relay_settings(tmp_path, cluster.nodes)) as relay, \
            Console311(second.mqtt_port, "airfield-1") as console:
        assert await asyncio.to_thread(cluster.node_of, RELAY_ID) is first  # the first in the list answered
        assert [c["node"] for c in _connects(caplog)] == [first.mqtt]
        alert_id = await _post(relay, "through-the-cluster")
        alert = await console.next_alert(timeout=5)
        assert alert["alert_id"] == alert_id
        await console.ack(alert_id)  # published at another node than the relay's
        acked = await eventually(lambda: _acknowledged(relay, alert_id), what="the console's ack at the relay")
        assert acked["ack"]["channel"] == "mqtt"


async def _acknowledged(relay: RunningRelay, alert_id: str) -> dict[str, Any] | None:
    alert = await relay.alert(alert_id)
    return alert if alert["state"] == "acknowledged" else None


async def test_the_relays_node_killed_alerts_flow_again_within_3_s_and_nothing_is_lost(
    cluster: NatsCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture, arrivals: list[Arrivals]
) -> None:
    """SIGKILL of the node the relay is on, while reports keep coming. The node leads no JetStream group when it
    dies (leaderships moved off it first): the other case is the next test's."""
    caplog.set_level(logging.INFO, logger="channels.mqtt")
    meta = (await asyncio.to_thread(cluster.leaders))["meta"]
    doomed = next(n for n in cluster.nodes if n.name != meta)
    survivors = [n for n in cluster.nodes if n is not doomed]
    async with running_relay(_relay_settings(tmp_path, [doomed, *survivors])) as relay, \
            Console311(survivors[1].mqtt_port, "airfield-1") as console:
        assert await asyncio.to_thread(cluster.node_of, RELAY_ID) is doomed
        await asyncio.to_thread(cluster.move_leaders_off, doomed)
        seen = Arrivals(console)
        arrivals.append(seen)
        accepted = [await _post(relay, f"before-{i}") for i in range(3)]
        await seen.all_of(accepted, timeout=5)

        after_kill: list[tuple[float, str]] = []
        poster = asyncio.create_task(_keep_posting(relay, accepted, after_kill))
        await asyncio.sleep(0.3)  # a few reports in flight when the node dies
        cluster.kill(doomed)
        killed = time.monotonic()
        await console.ack(accepted[0])  # at once: it waits in the relay's session while the relay moves
        ack_while_away = await _mqtt_up(relay) == 0

        def flowing() -> float | None:
            times = [t for posted, alert_id in after_kill if posted > killed for t in seen.at.get(alert_id, [])]
            return min(times) - killed if times else None

        took = await eventually(flowing, timeout=10, what="an alert accepted after the kill at the console")
        await asyncio.sleep(0.5)  # keep posting a little after the flow is back
        poster.cancel()
        await asyncio.wait([poster])
        await seen.all_of(accepted, timeout=10)  # every 201, before, during and after the move

        await eventually(lambda: _acknowledged(relay, accepted[0]), what="the ack sent while the relay moved")
        moved_to = await asyncio.to_thread(cluster.node_of, RELAY_ID)
        assert moved_to is survivors[0]  # the next in the list
        last = _connects(caplog)[-1]
        assert last["node"] == moved_to.mqtt and last["session_present"] is True
    duplicates = sum(len(seen.at[a]) - 1 for a in accepted)
    print(f"\nflow again {took:.2f} s after the kill; {len(accepted)} accepted, {duplicates} duplicates; "
          f"ack published while the relay was away: {ack_while_away}")
    assert took < 3.0


async def _keep_posting(relay: RunningRelay, accepted: list[str], after_kill: list[tuple[float, str]]) -> None:
    i = 0
    while True:
        posted = time.monotonic()
        alert_id = await _post(relay, f"during-{i}")
        accepted.append(alert_id)
        after_kill.append((posted, alert_id))
        i += 1
        await asyncio.sleep(0.1)


async def test_the_relays_node_led_the_message_stream_the_backups_cover_the_election_and_nothing_is_lost(
    cluster: NatsCluster, tmp_path: Path, twilio: TwilioFake, smtp: SmtpServer, arrivals: list[Arrivals],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Worse: the node also leads `$MQTT_msgs`, the stream that stores every QoS 1 publish before its PUBACK. Until
    the other two elect a new leader (a Raft election, 4 to 9 s in NATS 2.9), no node can take a publish: the
    relay's get no PUBACK, so each delivery fails over to SMS and e-mail at once, as with a broker down, and the
    console gets the alert over MQTT too once the stream has its leader again."""
    caplog.set_level(logging.INFO)
    leader = (await asyncio.to_thread(cluster.leaders))["$MQTT_msgs"]
    doomed = next(n for n in cluster.nodes if n.name == leader)
    survivors = [n for n in cluster.nodes if n is not doomed]
    cfg = with_backups(_relay_settings(tmp_path, [doomed, *survivors]), smtp_port=smtp.port,
                       twilio_url=twilio.base_url, ack_timeout_s=60, repeat_s=60, give_up_s=120)  # failover only
    async with running_relay(cfg) as relay, Console311(survivors[1].mqtt_port, "airfield-1") as console:
        assert await asyncio.to_thread(cluster.node_of, RELAY_ID) is doomed
        seen = Arrivals(console)
        arrivals.append(seen)
        before = await _post(relay, "before")
        await seen.all_of([before], timeout=5)
        assert not twilio.messages

        cluster.kill(doomed)
        posted, posted_clock = time.monotonic(), time.time()  # the Twilio-shaped server stamps with time.time()
        status, during = await relay.post_report(report("during-the-election"))
        assert status == 201, during
        sms = await twilio.wait_for(1, timeout=5, to=DESK1_PHONE)
        assert during["short_code"] in sms[0].body
        by_sms = sms[0].at - posted_clock
        await seen.all_of([during["alert_id"]], timeout=30)  # the console's copy, once NATS has a leader again
        by_mqtt = seen.at[during["alert_id"]][0] - posted
    changes = [f"{r.created - posted_clock:+.2f} s {r.getMessage()}: {getattr(r, 'detail', '')}"
               for r in caplog.records
               if r.name.startswith(("channels.mqtt", "relay.engine")) and r.created >= posted_clock - 1]
    print(f"\nthe relay's node led $MQTT_msgs: SMS {by_sms:.2f} s after the report, MQTT {by_mqtt:.2f} s",
          *changes, sep="\n  ")
    assert by_sms < 3.0


async def test_every_node_down_the_channel_is_down_one_node_back_is_not_enough_all_back_it_is_up_by_itself(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    first, second, third = cluster.nodes
    async with running_relay(_relay_settings(tmp_path, cluster.nodes)) as relay, \
            Console311(second.mqtt_port, "airfield-1") as console:
        for node in cluster.nodes:
            cluster.kill(node)
        await eventually(lambda: _not(_mqtt_up(relay)), what="relay_channel_up 0 with every node gone")
        status, body = await relay.get("/readyz", token=None)
        assert status == 503, body  # no backups here: no channel up at all
        during = await _post(relay, "while-the-cluster-is-down")  # taken, and kept until the broker is back

        cluster.start_node(third)  # one node of three: no JetStream quorum, and it hangs up on every CONNECT
        await holds_for(lambda: _not(_mqtt_up(relay)), seconds=4, what="down with one node of three")
        cluster.start_node(second)  # a majority; and the last node, since NATS 2.9 may not recover on two alone
        cluster.start_node(first)
        majority = time.monotonic()
        await eventually(lambda: _mqtt_up(relay), timeout=45, what="the channel up again by itself")
        up = time.monotonic() - majority
        alert = await console.next_alert(timeout=30)  # the console reconnects to its node by itself
        assert alert["alert_id"] == during
        delivered = time.monotonic() - majority
    print(f"\nup again {up:.1f} s after the other two came back; the alert held meanwhile at the console "
          f"{delivered:.1f} s after")


async def _not(value: Any) -> bool:
    return not await value
