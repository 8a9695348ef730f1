"""E-mail over SMTP with aiosmtplib: one message per address, plain text and HTML, STARTTLS/TLS and login.

Sessions are kept open between sends (`_Sessions`): while a surge of alerts goes unacknowledged every repeat
round sends an e-mail per alert and address, and a session per e-mail (connect, EHLO, STARTTLS, AUTH, QUIT) cost
the sender 4.9 ms of CPU per e-mail against 3.0 ms on a kept one (1,000 e-mails to aiosmtpd on loopback).
"""

from __future__ import annotations

import asyncio
import email.errors
import logging
import socket
import ssl
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

import aiosmtplib

from channels.base import ChannelHealth, FailureReason, HealthState, Outgoing, SendResult
from channels.breaker import CircuitBreaker
from channels.retry import Transient, with_retries

log = logging.getLogger("channels.email")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    from_address: str
    starttls: bool = False  # upgrade a plain connection (587); required when set
    tls: bool = False  # implicit TLS (465)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # a private CA for the server's certificate
    timeout_s: float = 10.0  # each SMTP operation
    send_budget_s: float = 20.0  # the whole send, retries included
    attempts: int = 3
    session_idle_s: float = 30.0  # a kept session unused this long is closed (servers drop theirs at 60-300 s)
    session_messages: int = 100  # then a fresh session (some servers limit the messages of one)


@dataclass(eq=False)
class _Session:
    smtp: aiosmtplib.SMTP
    last_used: float
    sent: int = 0


class _Sessions:
    """Open SMTP sessions between sends: at most one per send in flight, none kept unused for `idle_s`.

    A kept session may have been closed by the server meanwhile; the caller finds out on its first command and
    opens a fresh one (`SmtpEmailChannel._send_on_session`)."""

    def __init__(self, open_one: Callable[[], Awaitable[aiosmtplib.SMTP]], idle_s: float, max_messages: int,
                 clock: Callable[[], float]) -> None:
        self._open, self._idle_s, self._max, self._clock = open_one, idle_s, max_messages, clock
        self._idle: list[_Session] = []  # the last one back is the first out: the rest age and are closed

    async def take(self) -> tuple[_Session, bool]:
        """A session to send on, and whether it was kept from an earlier send."""
        now = self._clock()
        while self._idle:
            session = self._idle.pop()
            if session.smtp.is_connected and now - session.last_used < self._idle_s:
                return session, True
            session.smtp.close()
        return _Session(await self._open(), now), False

    def give_back(self, session: _Session) -> None:
        """After a send that went well; a session that failed is closed, never given back."""
        session.sent += 1
        session.last_used = self._clock()
        if session.sent >= self._max or not session.smtp.is_connected:
            session.smtp.close()
        else:
            self._idle.append(session)

    async def close_idle(self, quit_s: float) -> None:
        """Sessions unused for `idle_s` end politely (QUIT, at most `quit_s`), before the server drops them."""
        now = self._clock()
        old = [s for s in self._idle if now - s.last_used >= self._idle_s]
        self._idle = [s for s in self._idle if now - s.last_used < self._idle_s]
        for session in old:
            try:
                async with asyncio.timeout(quit_s):
                    await session.smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass  # it is being closed anyway
            finally:
                session.smtp.close()

    def close_all(self) -> None:
        for session in self._idle:
            session.smtp.close()
        self._idle.clear()


class SmtpEmailChannel:
    name = "email"

    def __init__(self, settings: SmtpSettings, clock: Callable[[], float] | None = None) -> None:
        """`clock`: the relay's (seconds since the epoch), so health times agree with what it stores."""
        self._cfg = settings
        self.health = ChannelHealth(self.name, clock=clock or time.time)
        self.health.set(HealthState.UP, "no send yet")
        self.breaker = CircuitBreaker(self.health, clock=clock or time.monotonic)
        self._tls_context: ssl.SSLContext | None = None
        self._local_hostname: str | None = None
        self._sessions = _Sessions(self._open_session, settings.session_idle_s, settings.session_messages,
                                   clock or time.monotonic)

    async def run(self) -> None:
        if self._cfg.ca_file:  # loading certificates reads files: done once, here, not on every send
            self._tls_context = await asyncio.to_thread(ssl.create_default_context, cafile=self._cfg.ca_file)
        await self._hostname()
        try:
            while True:
                await asyncio.sleep(self._cfg.session_idle_s / 3)
                await self._sessions.close_idle(quit_s=min(self._cfg.timeout_s, 5.0))
        finally:
            self._sessions.close_all()

    async def _hostname(self) -> str:
        """The name this host gives in EHLO, looked up once: aiosmtplib would look it up (a DNS query, in a
        thread) for every new session, and where no resolver answers each lookup waits out its timeout."""
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return self._local_hostname

    async def send(self, msg: Outgoing) -> SendResult:
        if not self.breaker.allow():
            return SendResult.failed(FailureReason.UNREACHABLE, f"circuit open: {self.health.detail}")
        try:
            message = self._message(msg)
        except (ValueError, TypeError, email.errors.MessageError) as exc:  # e.g. a line break in a header value
            return SendResult.failed(FailureReason.REJECTED, f"message cannot be built: {exc}", permanent=True)
        try:
            async with asyncio.timeout(self._cfg.send_budget_s):
                await with_retries(
                    lambda: self._deliver(message), attempts=self._cfg.attempts, budget_s=self._cfg.send_budget_s,
                    first_wait_s=0.5, max_wait_s=4.0, breaker=self.breaker, log=log, event="email_retry",
                )
        except TimeoutError:
            self.breaker.failed("no send within the budget")
            return SendResult.failed(FailureReason.TIMEOUT, f"SMTP send took over {self._cfg.send_budget_s} s")
        except Transient as exc:
            self.breaker.failed(str(exc))
            return SendResult.failed(exc.reason, str(exc))
        except aiosmtplib.SMTPAuthenticationError as exc:
            self.breaker.failed(f"login refused ({exc.code})")
            return SendResult.failed(FailureReason.AUTH, f"smtp {exc.code}: login refused", permanent=True)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self.breaker.failed("recipient refused", provider_fault=False)
            codes = ", ".join(str(r.code) for r in exc.recipients)
            return SendResult.failed(FailureReason.REJECTED, f"smtp {codes}: recipient refused", permanent=True)
        except aiosmtplib.SMTPResponseException as exc:
            self.breaker.failed(f"{exc.code} {exc.message}")
            return SendResult.failed(FailureReason.REJECTED, f"smtp {exc.code}: {exc.message}", permanent=True)
        except aiosmtplib.SMTPNotSupported as exc:  # a non-ASCII address, and the server has no SMTPUTF8
            self.breaker.failed(str(exc), provider_fault=False)
            return SendResult.failed(FailureReason.REJECTED, f"the server cannot take this address: {exc}",
                                     permanent=True)
        except aiosmtplib.SMTPException as exc:
            # STARTTLS or AUTH that the config asks for and the server does not offer: every send will fail
            # until one of the two is changed, so the channel is as good as down (the breaker opens).
            self.breaker.failed(str(exc))
            return SendResult.failed(FailureReason.REJECTED, f"the SMTP server lacks what the config expects: {exc}",
                                     permanent=True)
        except (ValueError, TypeError, UnicodeError, email.errors.MessageError) as exc:
            return SendResult.failed(FailureReason.REJECTED, f"message cannot be sent: {exc}", permanent=True)
        except Exception as exc:  # noqa: BLE001 - whatever else the library raises is this send's failure alone
            self.breaker.failed(f"{type(exc).__name__}: {exc}")
            return SendResult.failed(FailureReason.UNEXPECTED, f"{type(exc).__name__}: {exc}")
        self.breaker.succeeded()
        return SendResult.accepted(provider_ref=message["Message-ID"])

    def _message(self, msg: Outgoing) -> Message:
        """The message in the legacy (compat32) classes: about a tenth of the CPU of `EmailMessage`, whose header
        registry parses every header it is given (a profile of the hostile soak put e-mail building at a quarter
        of the relay's samples). They do not check header values, so this does: nothing but the subject (encoded
        whole, RFC 2047) may hold anything but printable ASCII. A non-ASCII address needs SMTPUTF8, which only
        `EmailMessage` can write."""
        if not (msg.target.isascii() and self._cfg.from_address.isascii()):
            return self._utf8_message(msg)
        for name, value in (("To", msg.target), ("X-Relay-Key", msg.key)):
            if not value.isprintable():
                raise ValueError(f"{name} holds a control character")
        if any(unicodedata.category(c) == "Cc" for c in msg.subject):  # as EmailMessage refuses a line break
            raise ValueError("Subject holds a control character")
        body = MIMEText(msg.body.decode(), "plain", "utf-8")
        message: Message = body
        if msg.html:
            message = MIMEMultipart("alternative")
            message.attach(body)
            message.attach(MIMEText(msg.html, "html", "utf-8"))
        message["Subject"] = Header(msg.subject, "utf-8")  # type: ignore[assignment]  # compat32 takes a Header
        self._common_headers(message, msg)
        return message

    def _utf8_message(self, msg: Outgoing) -> EmailMessage:
        message = EmailMessage()  # its policy refuses a line break in any header value
        message["Subject"] = msg.subject
        self._common_headers(message, msg)
        message.set_content(msg.body.decode(), charset="utf-8")
        if msg.html:
            message.add_alternative(msg.html, subtype="html", charset="utf-8")
        return message

    def _common_headers(self, message: Message, msg: Outgoing) -> None:
        """The headers every letter has besides its subject."""
        message["From"] = self._cfg.from_address
        message["To"] = msg.target
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._cfg.from_address.rpartition("@")[2] or None)
        message["X-Relay-Key"] = msg.key

    async def _open_session(self) -> aiosmtplib.SMTP:
        """Connect, EHLO, STARTTLS and login as the config says (aiosmtplib closes the socket if one fails)."""
        cfg = self._cfg
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            use_tls=cfg.tls,
            start_tls=cfg.starttls,  # True: required (no silent downgrade); False: never
            tls_context=self._tls_context,
            timeout=cfg.timeout_s,
            local_hostname=await self._hostname(),
        )
        await smtp.connect()
        return smtp

    async def _send_on_session(self, message: Message) -> None:
        session, kept = await self._sessions.take()
        try:
            try:
                await session.smtp.send_message(message)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                if not kept:
                    raise
                # the server closed a session we kept (its idle limit, a restart): nothing was accepted on it
                session.smtp.close()
                session = _Session(await self._open_session(), session.last_used)
                await session.smtp.send_message(message)
        except BaseException:
            session.smtp.close()  # in an unknown state: never used again
            raise
        self._sessions.give_back(session)

    async def _deliver(self, message: Message) -> None:
        try:
            await self._send_on_session(message)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            raise Transient(FailureReason.UNREACHABLE, f"SMTP server unreachable: {exc}") from None
        except aiosmtplib.SMTPTimeoutError as exc:
            raise Transient(FailureReason.TIMEOUT, f"SMTP timeout: {exc}") from None
        except ssl.SSLError as exc:  # aiosmtplib lets certificate failures through as they are
            raise Transient(FailureReason.UNREACHABLE, f"TLS with the SMTP server failed: {exc}") from None
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                raise Transient(FailureReason.RATE_LIMITED, f"SMTP {exc.code}: {exc.message}") from None
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(400 <= r.code < 500 for r in exc.recipients):  # greylisting, mailbox busy
                raise Transient(FailureReason.RATE_LIMITED, "recipient deferred (4xx)") from None
            raise
