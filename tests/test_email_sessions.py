"""The e-mail channel keeps SMTP sessions open between sends, against a real SMTP server (aiosmtpd).

Under a surge every unacknowledged alert sends an e-mail per address every repeat; a session per e-mail costs a
connect, EHLO (and in production STARTTLS and AUTH) each time. What a user of the channel must never notice: a
session the server dropped meanwhile, which must cost no failed send and no sick channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from channels.base import HealthState, Outgoing
from channels.email import SmtpEmailChannel, SmtpSettings
from tests.support.smtp import SmtpServer
from tests.support.wait import eventually


def letter(n: int) -> Outgoing:
    return Outgoing(key=f"a{n}.airfield-1.email.0", target="duty@airfield.example", subject=f"БПЛА K{n}QX",
                    body="Текст тревоги".encode(), html="<p>Текст тревоги</p>")


@pytest.fixture
async def server() -> AsyncIterator[SmtpServer]:
    smtp = SmtpServer()
    smtp.start()
    try:
        yield smtp
    finally:
        smtp.stop()


async def running(channel: SmtpEmailChannel) -> asyncio.Task[None]:
    task = asyncio.create_task(channel.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def test_e_mails_in_a_row_share_one_session_and_sends_at_once_one_each(server: SmtpServer) -> None:
    channel = SmtpEmailChannel(SmtpSettings(host="127.0.0.1", port=server.port, from_address="relay@localhost"))
    task = await running(channel)
    try:
        for n in range(5):
            assert (await channel.send(letter(n))).ok
        mails = await server.wait_for(5)
        assert len({m.peer for m in mails}) == 1

        results = await asyncio.gather(*(channel.send(letter(n)) for n in range(5, 9)))
        assert all(r.ok for r in results)
        mails = await server.wait_for(9)
        assert 1 <= len({m.peer for m in mails[5:]}) <= 4  # never more sessions than sends at once
    finally:
        await stop(task)


async def test_a_session_the_server_dropped_costs_no_failed_send_and_no_sick_channel(server: SmtpServer) -> None:
    channel = SmtpEmailChannel(SmtpSettings(host="127.0.0.1", port=server.port, from_address="relay@localhost"))
    changes: list[HealthState] = []
    channel.health.on_change(lambda change: changes.append(change.state))
    task = await running(channel)
    try:
        assert (await channel.send(letter(1))).ok
        server.stop()  # a restart of the mail server: the session kept for the next send is dead
        server.start()
        result = await channel.send(letter(2))
        assert result.ok, result
        first, second = await server.wait_for(2)
        assert second.message["Subject"] == "БПЛА K2QX" and first.peer != second.peer
        assert HealthState.DEGRADED not in changes and HealthState.DOWN not in changes
    finally:
        await stop(task)


async def test_an_idle_session_ends_with_quit_and_the_next_send_opens_another(server: SmtpServer) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=server.port, from_address="relay@localhost", session_idle_s=0.3)
    channel = SmtpEmailChannel(settings)
    task = await running(channel)
    try:
        assert (await channel.send(letter(1))).ok
        await eventually(lambda: server.quits == 1 or None, timeout=5, what="the idle session's QUIT")
        assert (await channel.send(letter(2))).ok
        first, second = await server.wait_for(2)
        assert first.peer != second.peer
    finally:
        await stop(task)


async def test_shutdown_closes_the_kept_sessions(server: SmtpServer) -> None:
    channel = SmtpEmailChannel(SmtpSettings(host="127.0.0.1", port=server.port, from_address="relay@localhost"))
    task = await running(channel)
    results = await asyncio.gather(*(channel.send(letter(n)) for n in range(3)))
    assert all(r.ok for r in results)
    kept = list(channel._sessions._idle)  # what the shutdown must close
    assert kept
    await stop(task)
    assert all(not s.smtp.is_connected for s in kept)
