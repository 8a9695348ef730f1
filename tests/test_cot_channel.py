"""channels/cot.py against a real listener: one connection kept up over TCP, TLS and UDP, the latest state of every
live uid resent whenever the listener comes back, and a listener that misbehaves never holds the sender."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.base import HealthState, Outgoing
from channels.cot import FINAL, CotChannel, CotSettings, parse_url
from tests.support.cot_listener import CotListener, make_tls_files
from tests.support.wait import eventually


def event(uid: str, n: int, pad: int = 0) -> bytes:
    remarks = f"state {n}" + "x" * pad
    return (f'<event version="2.0" uid="{uid}" type="a-u-A" how="h-e" time="2026-01-01T00:00:00.000Z" '
            f'start="2026-01-01T00:00:00.000Z" stale="2026-01-01T00:10:00.000Z"><point lat="52.6" lon="39.6" '
            f'hae="9999999.0" ce="2000.0" le="9999999.0"/><detail><remarks>{remarks}</remarks></detail></event>'
            ).encode()


def fast(url: str, **kw: object) -> CotSettings:
    return CotSettings(url=url, connect_timeout_s=2.0, reconnect_first_s=0.05, reconnect_max_s=0.2, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(channel: CotChannel) -> AsyncIterator[CotChannel]:
    task = asyncio.create_task(channel.run())
    try:
        yield channel
    finally:
        task.cancel()
        await asyncio.wait([task])


@contextlib.asynccontextmanager
async def listening(listener: CotListener) -> AsyncIterator[CotListener]:
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


def is_state(uid: str, n: int):  # type: ignore[no-untyped-def]
    return lambda e: e.uid == uid and e.remarks().startswith(f"state {n}")


async def test_events_reach_a_tcp_listener_and_the_channel_says_it_is_up() -> None:
    async with listening(CotListener()) as listener, running(CotChannel(fast(listener.url))) as channel:
        assert channel.offer("track-a", event("track-a", 1)).ok
        assert (await channel.send(Outgoing(key="track-b", target="", body=event("track-b", 1)))).ok
        await listener.wait_for(is_state("track-a", 1))
        await listener.wait_for(is_state("track-b", 1))
        assert channel.health.state is HealthState.UP
        assert not listener.unparsable


async def test_listener_back_after_a_restart_gets_the_latest_state_of_every_live_uid_and_no_ended_one() -> None:
    listener = CotListener()
    async with listening(listener), running(CotChannel(fast(listener.url))) as channel:
        for uid in ("a", "b", "c"):
            channel.offer(uid, event(uid, 1))
        channel.offer("a", event("a", 2))
        channel.offer("c", event("c", 9), final=True)  # c is off the map: never sent again
        await listener.wait_for(is_state("a", 2))
        await listener.wait_for(is_state("c", 9))
        assert sorted(channel.live_uids()) == ["a", "b"]

        await listener.stop()
        await eventually(lambda: channel.health.state is HealthState.DOWN, what="channel down")
        channel.offer("a", event("a", 3))  # changed while nobody listened: not lost, not blocking
        await listener.start()

        await eventually(lambda: listener.connections >= 2, what="reconnected")
        await listener.wait_for(lambda e: e.connection >= 2 and is_state("a", 3)(e))
        await listener.wait_for(lambda e: e.connection >= 2 and is_state("b", 1)(e))
        assert channel.health.state is HealthState.UP
        again = [e.uid for e in listener.events if e.connection >= 2]
        assert "c" not in again and again.count("a") == 1, again


async def test_a_listener_that_is_not_there_is_retried_with_bounded_backoff() -> None:
    listener = CotListener()  # a free port nobody listens on yet
    async with running(CotChannel(fast(listener.url))) as channel:
        channel.offer("a", event("a", 1))
        await eventually(lambda: "cannot connect" in channel.health.detail, what="refused connection said")
        assert channel.health.state is HealthState.DOWN
        started = time.monotonic()
        async with listening(listener):
            await listener.wait_for(is_state("a", 1), timeout=3)
            # reconnect_max_s is 0.2: whatever the listener's absence, it is found again within about that
            assert time.monotonic() - started < 1.5


async def test_garbage_sent_back_by_the_listener_is_ignored() -> None:
    garbage = os.urandom(20_000) + b"<event><<<&&&\x00</event>" + b"\xff" * 1000
    async with listening(CotListener(reply=garbage)) as listener, \
            running(CotChannel(fast(listener.url))) as channel:
        channel.offer("a", event("a", 1))
        await listener.wait_for(is_state("a", 1))
        channel.offer("a", event("a", 2))
        await listener.wait_for(is_state("a", 2))
        assert listener.connections == 1 and channel.health.state is HealthState.UP


async def test_a_stalled_listener_never_holds_the_sender_and_is_reconnected() -> None:
    listener = CotListener(reading=False)
    settings = fast(listener.url, write_timeout_s=0.5, max_event_bytes=200_000)
    async with listening(listener), running(CotChannel(settings)) as channel:
        await eventually(lambda: channel.health.state is HealthState.UP, what="connected")
        slowest = 0.0
        n = 0
        # 100 KB events under 400 uids: far more than any loopback window holds; every offer returns at once
        while "stalled" not in channel.health.detail and n < 20_000:
            t0 = time.perf_counter()
            assert channel.offer(f"u{n % 400}", event(f"u{n % 400}", n, pad=100_000)).ok
            slowest = max(slowest, time.perf_counter() - t0)
            n += 1
            await asyncio.sleep(0.001 if n % 50 == 0 else 0)
        await eventually(lambda: "stalled" in channel.health.detail, timeout=5, what="stall detected")
        assert slowest < 0.2, slowest  # offer() is synchronous: only real work in it (a copy, a write) could take this
        assert len(channel.live_uids()) == 400  # memory bounded by uids, not by events offered

        channel.offer("probe", event("probe", 1))
        listener.resume_reading()
        await listener.wait_for(is_state("probe", 1), timeout=10)
        last = n - 1
        await listener.wait_for(is_state(f"u{last % 400}", last), timeout=10)


async def test_a_listener_that_resets_the_connection_gets_everything_again() -> None:
    async with listening(CotListener()) as listener, running(CotChannel(fast(listener.url))) as channel:
        channel.offer("a", event("a", 1))
        channel.offer("b", event("b", 1))
        await listener.wait_for(is_state("b", 1))
        listener.reset_connections()
        await listener.wait_for(lambda e: e.connection == 2 and is_state("a", 1)(e))
        await listener.wait_for(lambda e: e.connection == 2 and is_state("b", 1)(e))


async def test_udp_datagrams_one_event_each_and_resent_when_the_listener_is_back() -> None:
    listener = CotListener(scheme="udp")
    async with listening(listener), running(CotChannel(fast(listener.url))) as channel:
        channel.offer("a", event("a", 1))
        channel.offer("b", event("b", 1))
        await listener.wait_for(is_state("a", 1))
        await listener.wait_for(is_state("b", 1))
        await listener.stop()
        # the next datagram finds nobody: Linux answers ICMP port unreachable, and the channel says so
        channel.offer("a", event("a", 2))
        await eventually(lambda: channel.health.state is HealthState.DOWN, what="down after ICMP unreachable")
        seen = len(listener.events)
        await listener.start()
        await listener.wait_for(is_state("a", 2), after=seen)
        await listener.wait_for(is_state("b", 1), after=seen)


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    listener = CotListener(scheme="tls", tls=files)
    settings = fast(listener.url, cert_file=str(files.client_cert), key_file=str(files.client_key),
                    ca_file=str(files.ca))
    async with listening(listener), running(CotChannel(settings)) as channel:
        channel.offer("a", event("a", 1))
        await listener.wait_for(is_state("a", 1))
        listener.reset_connections()
        channel.offer("a", event("a", 2))
        await listener.wait_for(lambda e: e.connection >= 2 and is_state("a", 2)(e))


async def test_tls_against_a_server_our_ca_did_not_sign_stays_down_and_says_why(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    mine, other = make_tls_files(ours), make_tls_files(theirs)
    listener = CotListener(scheme="tls", tls=other)
    settings = fast(listener.url, cert_file=str(mine.client_cert), key_file=str(mine.client_key), ca_file=str(mine.ca))
    async with listening(listener), running(CotChannel(settings)) as channel:
        channel.offer("a", event("a", 1))
        await eventually(lambda: "CERTIFICATE_VERIFY_FAILED" in channel.health.detail, what="certificate refused")
        assert not listener.events


async def test_an_event_too_big_is_refused_and_a_uid_flood_is_bounded() -> None:
    channel = CotChannel(CotSettings(url="tcp://127.0.0.1:9", max_event_bytes=1000, max_uids=3))
    assert not channel.offer("a", b"x" * 1001).ok
    for uid in "abc":
        assert channel.offer(uid, b"<event/>").ok
    refused = channel.offer("d", b"<event/>")
    assert not refused.ok and refused.reason is not None
    assert channel.offer("a", b"<event/>", final=True).ok  # a known uid is always taken
    assert (await channel.send(Outgoing(key="b", target=FINAL, body=b"<event/>"))).ok


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.1:8087", "scheme"),
    ("tcp://127.0.0.1", "no port"),
    ("tcp://:8087", "no host"),
    ("udp://127.0.0.1:99999", "out of range"),
    ("tcp://127.0.0.1:8087/path", "only scheme://host:port"),
])
def test_urls_that_are_not_a_listener_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_url(url)
    assert str(parse_url("tls://[::1]:8089")) == "tls://[::1]:8089"
