"""A real SMTP server (aiosmtpd) on a free port, that a test can stop and start again."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.wait import eventually, free_port


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float
    peer: tuple[str, int] | None = None  # the client's address and port: one per SMTP session

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
        self.quits = 0  # sessions the client ended with QUIT
        self.lock = threading.Lock()

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:  # the handler runs in the controller's own thread
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message, time.time(),  # type: ignore[arg-type]
                                    tuple(session.peer[:2])))
        return "250 Message accepted for delivery"


class SmtpServer:
    """With `tls_dir`, it requires STARTTLS (a self-signed certificate made there) and a login `user`/`password`.
    Without, it offers neither STARTTLS nor AUTH; `smtputf8=False`: nor SMTPUTF8 (non-ASCII addresses)."""

    def __init__(self, tls_dir: Path | None = None, user: str = "relay", password: str = "smtp-secret-pass",
                 *, smtputf8: bool = True) -> None:
        self.port = free_port()
        self._recorder = _Recorder()
        self._controller: Controller | None = None
        self._tls: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}  # aiosmtpd's Controller offers it by default
        self.ca_file: Path | None = None
        if tls_dir is not None:
            self.ca_file, key = _self_signed(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.ca_file, key)

            def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and data.login.decode() == user \
                    and data.password.decode() == password
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

            self._tls |= {"tls_context": context, "require_starttls": True, "auth_required": True,
                         "authenticator": authenticator}

    @property
    def quits(self) -> int:
        with self._recorder.lock:
            return self._recorder.quits

    @property
    def mails(self) -> list[Mail]:
        with self._recorder.lock:
            return list(self._recorder.mails)

    def start(self) -> None:
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=self.port, ready_timeout=5,
                                      **self._tls)
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


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
