"""A real SMTP server (aiosmtpd) on a free port, that a test can stop and start again."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.wait import eventually, free_port


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part else ""  # type: ignore[no-any-return]

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part else ""  # type: ignore[no-any-return]


class _Recorder:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:  # the handler runs in the controller's own thread
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message, time.time()))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._recorder = _Recorder()
        self._controller: Controller | None = None

    @property
    def mails(self) -> list[Mail]:
        with self._recorder.lock:
            return list(self._recorder.mails)

    def start(self) -> None:
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=self.port, ready_timeout=5)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def wait_for(self, count: int, timeout: float = 5.0, to: str | None = None) -> list[Mail]:
        def got() -> list[Mail] | None:
            mine = [m for m in self.mails if to is None or to in m.rcpt_tos]
            return mine if len(mine) >= count else None

        return await eventually(got, timeout=timeout, what=f"{count} e-mails at the SMTP server")
