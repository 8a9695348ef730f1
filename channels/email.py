"""E-mail over SMTP with aiosmtplib: one message per address, plain text and HTML, STARTTLS/TLS and login.

A connection per send: backup e-mail is rare, and servers drop idle sessions anyway.
"""

from __future__ import annotations

import asyncio
import email.errors
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
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


class SmtpEmailChannel:
    name = "email"

    def __init__(self, settings: SmtpSettings, clock: Callable[[], float] | None = None) -> None:
        """`clock`: the relay's (seconds since the epoch), so health times agree with what it stores."""
        self._cfg = settings
        self.health = ChannelHealth(self.name, clock=clock or time.time)
        self.health.set(HealthState.UP, "no send yet")
        self.breaker = CircuitBreaker(self.health, clock=clock or time.monotonic)
        self._tls_context: ssl.SSLContext | None = None

    async def run(self) -> None:
        if self._cfg.ca_file:  # loading certificates reads files: done once, here, not on every send
            self._tls_context = await asyncio.to_thread(ssl.create_default_context, cafile=self._cfg.ca_file)
        await asyncio.Event().wait()

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

    def _message(self, msg: Outgoing) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._cfg.from_address
        message["To"] = msg.target
        message["Subject"] = msg.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self._cfg.from_address.rpartition("@")[2] or None)
        message["X-Relay-Key"] = msg.key
        message.set_content(msg.body.decode(), charset="utf-8")
        if msg.html:
            message.add_alternative(msg.html, subtype="html", charset="utf-8")
        return message

    async def _deliver(self, message: EmailMessage) -> None:
        cfg = self._cfg
        try:
            await aiosmtplib.send(
                message,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password,
                use_tls=cfg.tls,
                start_tls=cfg.starttls,  # True: required (no silent downgrade); False: never
                tls_context=self._tls_context,
                timeout=cfg.timeout_s,
            )
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
