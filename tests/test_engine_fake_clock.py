"""Escalation as a dispatcher sees it, on a fake clock: what arrives over which channel at which second.

The engine, dispatcher, SMS bundler and SQLite store are the real ones (tests/support/engine_harness.py); only the
clock and the channels' far ends are fakes, so fifteen minutes of escalation take a few milliseconds and every
time below is exact. Policy: the README's defaults (ack_timeout 10 s, repeat 60 s, give-up 900 s, retry 5 s).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.base import FailureReason
from relay.domain.escalation import Policy
from relay.domain.states import AlertState, DeliveryState
from tests.support.engine_harness import EMAIL, PHONE, EngineHarness, desk, fails, store_file

EMAIL_WORKERS = 16  # relay/operations/daemon.py: e-mails in flight at once
REPEATS = [10.0 + 60 * n for n in range(15)]  # the first backup round at 10 s, then every 60 s until 900 s


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EngineHarness]:
    with store_file(tmp_path) as path:
        async with EngineHarness(path) as harness:
            yield harness


def failovers(h: EngineHarness, reason: str) -> float | None:
    return h.metrics.registry.get_sample_value("relay_failovers_total", {"reason": reason})


async def test_nobody_acks_backups_at_ack_timeout_then_every_repeat_until_given_up(h: EngineHarness) -> None:
    alert_id = await h.accept()
    assert h.times("mqtt") == [0.0]
    await h.run_until(9.999)
    assert h.sent("sms") == h.sent("email") == []

    await h.run_until(10)
    assert h.times("sms") == h.times("email") == [10.0]

    await h.run_until(899.999)
    assert h.times("sms") == h.times("email") == REPEATS
    assert (await h.alert(alert_id)).state is AlertState.PENDING

    await h.run_until(900)
    assert (await h.alert(alert_id)).state is AlertState.UNACKNOWLEDGED
    await h.run_until(3 * 900)
    assert h.times("sms") == h.times("email") == REPEATS
    assert h.times("mqtt") == [0.0]


async def test_primary_down_at_t0_sms_and_email_at_once_and_the_console_gets_it_when_back(h: EngineHarness) -> None:
    h.channels["mqtt"].down()
    await h.accept()
    assert h.times("sms") == h.times("email") == [0.0]
    assert h.sent("mqtt") == []
    assert failovers(h, "primary_down") == 1

    await h.run_until(30)
    h.channels["mqtt"].up()
    await h.clock.settle()
    assert h.times("mqtt") == [30.0]  # queued while the broker was away, published the moment it is back

    await h.run_until(61)
    assert h.times("sms") == h.times("email") == [0.0, 60.0]  # the failover was the first round


async def test_a_publish_that_fails_fails_over_at_once_and_is_published_again_after_retry_s(
    h: EngineHarness,
) -> None:
    h.channels["mqtt"].will(fails(FailureReason.TIMEOUT))
    await h.accept()
    assert h.times("sms") == h.times("email") == [0.0]
    assert failovers(h, "publish_failed") == 1

    await h.run_until(61)
    assert [a.at for a in h.channels["mqtt"].attempts] == [0.0, 5.0]
    assert h.times("mqtt") == [5.0]
    assert h.times("sms") == h.times("email") == [0.0, 60.0]


async def test_flash_goes_over_every_channel_at_t0(h: EngineHarness) -> None:
    await h.accept(h.report(priority="flash"))
    assert h.times("mqtt") == h.times("sms") == h.times("email") == [0.0]
    await h.run_until(60)
    assert h.times("sms") == h.times("email") == [0.0, 60.0]


@pytest.mark.parametrize("ack_lands", ["before-the-timer-wakes", "after-the-timer-wakes", "after-the-round-commit"])
async def test_an_ack_at_the_instant_a_repeat_falls_due_stops_it_and_the_first_ack_wins(
    h: EngineHarness, ack_lands: str
) -> None:
    alert_id = await h.accept()
    await h.run_until(10)
    assert h.times("sms") == h.times("email") == [10.0]
    h.store.round_committed.clear()

    async def two_desks_ack() -> tuple[bool, bool]:
        if ack_lands == "after-the-timer-wakes":  # asleep after the scheduler, so woken after it in that instant
            await h.clock.sleep_until(h.clock.start + 70)
        elif ack_lands == "after-the-round-commit":  # the repeat is in the outbox, its sends not yet out
            await h.store.round_committed.wait()
        by_sms, by_console = await asyncio.gather(h.ack(alert_id, channel="sms"), h.ack(alert_id, channel="mqtt"))
        return by_sms.first, by_console.first

    acks = asyncio.create_task(two_desks_ack())  # created now, it takes its first step before the timer wakes
    await h.run_until(70)
    assert await acks == (True, False)
    alert = await h.alert(alert_id)
    assert alert.state is AlertState.ACKNOWLEDGED
    assert alert.ack is not None and alert.ack.channel == "sms"
    assert [(a.at, a.channel, a.first) for a in h.acks] == [(70.0, "sms", True), (70.0, "mqtt", False)]

    await h.run_until(900)
    first_ack = h.acks[0].seq
    assert [s for c in h.channels for s in h.channels[c].attempts if s.seq > first_ack] == [], "sent after the ack"
    if ack_lands == "after-the-round-commit":  # what left before the ack was recorded is fair; nothing later
        assert max(h.times("sms") + h.times("email")) == 70.0
    else:
        assert h.times("sms") == h.times("email") == [10.0]


async def test_a_transient_sms_failure_is_tried_again_after_retry_s(h: EngineHarness) -> None:
    h.channels["sms"].will(fails(FailureReason.UNREACHABLE))
    await h.accept()
    await h.run_until(71)
    assert [a.at for a in h.channels["sms"].attempts] == [10.0, 15.0, 70.0]
    assert h.times("sms") == [15.0, 70.0]
    assert h.times("email") == [10.0, 70.0]  # the retry is SMS's alone; the rounds keep their beat


async def test_an_sms_refused_for_good_is_not_tried_again(h: EngineHarness) -> None:
    h.channels["sms"].will(fails(FailureReason.REJECTED, permanent=True))
    alert_id = await h.accept()
    await h.run_until(200)
    assert [a.at for a in h.channels["sms"].attempts] == [10.0]
    assert h.times("email") == [10.0, 70.0, 130.0, 190.0]
    sms = [d for d in (await h.alert(alert_id)).deliveries if d.channel == "sms"]
    assert [(d.state, d.permanent) for d in sms] == [(DeliveryState.FAILED, True)]


async def test_an_email_send_that_raises_fails_alone_and_the_next_round_tries_it_afresh(h: EngineHarness) -> None:
    h.channels["email"].will(RuntimeError("the library broke"))
    alert_id = await h.accept()
    await h.run_until(10)
    assert h.times("sms") == [10.0]
    assert h.sent("email") == []
    email = next(d for d in (await h.alert(alert_id)).deliveries if d.channel == "email")
    assert email.state is DeliveryState.FAILED and email.error is not None and "the library broke" in email.error
    await h.run_until(70)
    assert h.times("email") == [70.0]


async def test_an_ack_stops_every_pending_send(tmp_path: Path) -> None:
    two_desks = [desk("airfield-1"), desk("airfield-2", sms=["+79002220001"], email=["duty@airfield-2.example"])]
    with store_file(tmp_path) as path:
        async with EngineHarness(path, desks=two_desks) as h:
            h.channels["sms"].will(fails(FailureReason.RATE_LIMITED))  # one SMS due again at 15 s
            alert_id = await h.accept()
            await h.run_until(12)
            assert len(h.sent("sms")) == 1 and len(h.sent("email")) == 2

            await h.ack(alert_id, desk_id="airfield-2", channel="email")
            await h.run_until(900)
            assert [s.at for c in h.channels for s in h.channels[c].attempts if s.at > 12] == []
            alert = await h.alert(alert_id)
            assert alert.state is AlertState.ACKNOWLEDGED
            retrying = [d for d in alert.deliveries if d.channel == "sms" and d.sent_at is None]
            assert [d.state for d in retrying] == [DeliveryState.CANCELLED]


async def test_restart_after_the_first_round_repeats_at_the_stored_due_time_and_sends_nothing_twice(
    h: EngineHarness,
) -> None:
    await h.accept()
    await h.run_until(30)
    assert h.times("sms") == h.times("email") == [10.0]

    await h.restart()
    await h.run_until(69.999)
    assert h.times("sms") == h.times("email") == [10.0]  # not re-armed from zero at 30 + 10
    await h.run_until(70)
    assert h.times("sms") == h.times("email") == [10.0, 70.0]
    assert h.times("mqtt") == [0.0]  # the console had it before the restart: not published again


async def test_a_restart_after_a_due_time_passed_sends_the_round_once_at_start(h: EngineHarness) -> None:
    await h.accept()
    await h.run_until(30)
    await h.restart(down_for=100)  # down from 30 s to 130 s: the round due at 70 s passed meanwhile
    assert h.times("sms") == h.times("email") == [10.0, 130.0]
    await h.run_until(200)
    assert h.times("sms") == h.times("email") == [10.0, 130.0, 190.0]


async def test_sms_due_together_leave_in_one_bundle_and_what_follows_within_the_window_waits_for_it(
    h: EngineHarness,
) -> None:
    codes = []
    for n in range(2):
        codes.append((await h.alert(await h.accept(h.report(f"together-{n}")))).short_code)
    await h.run_until(0.2)
    late = (await h.alert(await h.accept(h.report("late")))).short_code

    await h.run_until(10)
    together = h.sent("sms")
    assert [(s.at, s.msg.target) for s in together] == [(10.0, PHONE)]
    assert all(code in together[0].msg.body.decode() for code in codes)
    assert [s.msg.target for s in h.sent("email")] == [EMAIL, EMAIL]  # e-mail is one message per alert

    await h.run_until(11)
    assert h.times("sms") == [10.0, 10.5]  # due at 10.2, held to the end of the bundle window
    assert late in h.sent("sms")[1].msg.body.decode()


async def test_a_warning_held_in_a_backlog_at_give_up_still_goes_once_if_it_reached_nobody(tmp_path: Path) -> None:
    """The give-up stops the rounds and tells the operator; what it must not do is drop, unsent, the one warning of
    an alert no desk has had, which a backlog of e-mail held until then. The repeat of an alert the console had
    is dropped as before; and the warning nobody has had goes first."""
    policy = Policy(ack_timeout_s=10, repeat_s=600, give_up_s=60, retry_s=5, backups=frozenset({"email"}))
    with store_file(tmp_path) as path:
        async with EngineHarness(path, policy=policy, desks=[desk(sms=())]) as h:
            mail = h.channels["email"]
            mail.hold()  # the SMTP server stops answering: 16 e-mails in flight, the rest queue behind them
            console_had = [await h.accept(h.report(f"r-{n}")) for n in range(EMAIL_WORKERS + 1)]
            await h.run_until(20)
            h.channels["mqtt"].down()
            nobody_had = await h.accept(h.report("r-x"))  # failover: its e-mail queues behind the others
            await h.run_until(85)
            assert {(await h.alert(a)).state for a in [*console_had, nobody_had]} == {AlertState.UNACKNOWLEDGED}
            assert h.sent("email") == []

            mail.release()
            await h.clock.settle()
            keys = [s.msg.key for s in h.sent("email")]
            assert len(keys) == EMAIL_WORKERS + 1  # the 16 in flight at give-up, then the one nobody had
            assert keys[-1].startswith(nobody_had)
            x = next(d for d in (await h.alert(nobody_had)).deliveries if d.channel == "email")
            assert x.state is DeliveryState.SENT and x.sent_at == h.clock.now()
            last = next(d for d in (await h.alert(console_had[-1])).deliveries if d.channel == "email")
            assert last.state is DeliveryState.CANCELLED and last.sent_at is None
            await h.run_until(2000)
            assert len(h.sent("email")) == EMAIL_WORKERS + 1  # and nothing after: the rounds stopped


async def test_a_primary_that_calls_itself_up_but_fails_every_publish_still_gets_each_alert_out_by_sms(
    h: EngineHarness,
) -> None:
    """The soak's stuck MQTT channel (up, every publish "not currently connected"), with a surge: every alert's
    warning leaves by the backups at once, none is given up having reached nobody, and the console is tried
    again every retry_s until give-up without flooding it."""
    h.channels["mqtt"].will(*[fails(FailureReason.UNREACHABLE)] * 10_000)
    alerts = [await h.accept(h.report(f"stuck-{n}")) for n in range(30)]
    assert h.times("email") == [0.0] * 30
    await h.run_until(1)  # what followed the first SMS within the bundle window went as the next bundle
    assert all(t <= 0.5 for t in h.times("sms"))
    sms_codes = {c for s in h.sent("sms") for c in re.findall(r"[0-9A-Z]{4,6}", s.msg.body.decode())}
    for alert_id in alerts:
        alert = await h.alert(alert_id)
        assert alert.short_code in sms_codes
    await h.run_until(900)
    for alert_id in alerts:
        alert = await h.alert(alert_id)
        assert alert.state is AlertState.UNACKNOWLEDGED
        assert all(d.sent_at is not None for d in alert.deliveries if d.channel != "mqtt")
    mqtt_tries = len(h.channels["mqtt"].attempts)
    assert mqtt_tries <= 30 * (1 + 900 / 5)  # one try per retry_s per alert at most
