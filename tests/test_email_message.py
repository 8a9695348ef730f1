"""What the e-mail channel puts on the wire, read back by the real SMTP server (aiosmtpd) and parsed as a mail
client would: the headers it meant and no other, the Russian text intact, a header that could be split refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from channels.base import FailureReason, Outgoing
from channels.email import SmtpEmailChannel, SmtpSettings
from tests.support.smtp import SmtpServer

SUBJECT = "ТЕСТ! [БПЛА] K7QX Грязинский район, 2 самолётного типа, курс 315°, низко «у фермы»"


@pytest.fixture
async def sent() -> AsyncIterator[tuple[SmtpServer, SmtpEmailChannel]]:
    server = SmtpServer()
    server.start()
    channel = SmtpEmailChannel(SmtpSettings(host="127.0.0.1", port=server.port, from_address="relay@localhost"))
    task = asyncio.create_task(channel.run())
    try:
        yield server, channel
    finally:
        task.cancel()
        await asyncio.wait([task])
        server.stop()


def letter(**changes: str) -> Outgoing:
    fields = {"key": "A1.airfield-1.email.0", "target": "duty@airfield.example", "subject": SUBJECT,
              "html": "<p>Подтвердить: <a href='http://127.0.0.1/ack/t'>ссылка</a></p>", **changes}
    return Outgoing(body="Тревога\nБПЛА над селом".encode(), **fields)  # type: ignore[arg-type]


async def test_the_letter_arrives_with_its_headers_subject_text_and_html(
    sent: tuple[SmtpServer, SmtpEmailChannel],
) -> None:
    server, channel = sent
    assert (await channel.send(letter())).ok
    (mail,) = await server.wait_for(1)
    m = mail.message
    assert str(m["Subject"]) == SUBJECT
    assert (m["From"], m["To"], m["X-Relay-Key"]) == ("relay@localhost", "duty@airfield.example",
                                                      "A1.airfield-1.email.0")
    assert m["Message-ID"] and m["Date"]
    assert mail.text.replace("\r\n", "\n") == "Тревога\nБПЛА над селом"
    assert "ссылка" in mail.html
    assert mail.rcpt_tos == ["duty@airfield.example"]


@pytest.mark.parametrize("field", ["target", "key", "subject"])
async def test_a_header_value_with_a_line_break_is_refused_for_good_and_nothing_is_sent(
    sent: tuple[SmtpServer, SmtpEmailChannel], field: str,
) -> None:
    server, channel = sent
    value = {"target": "duty@airfield.example\r\nBcc: other@example.org", "key": "A1\nBcc: other@example.org",
             "subject": "K7QX\r\nBcc: other@example.org"}[field]
    result = await channel.send(letter(**{field: value}))
    assert not result.ok and result.permanent and result.reason is FailureReason.REJECTED
    assert "control character" in (result.detail or "")
    assert (await channel.send(letter())).ok  # the channel goes on
    (mail,) = await server.wait_for(1)
    assert mail.rcpt_tos == ["duty@airfield.example"] and mail.message["Bcc"] is None
