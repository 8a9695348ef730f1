"""systemd's notify protocol: READY once serving, WATCHDOG only while the event loop and the store are healthy.

A hung daemon (a stalled loop, a store that cannot commit) stops sending WATCHDOG, and systemd restarts it after
WatchdogSec. One datagram per message on $NOTIFY_SOCKET; nothing at all when not run by systemd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("relay.systemd")

# Each health check (a store commit) gets at most this much of the watchdog interval.
CHECK_SHARE = 0.4


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket: the name begins with a NUL byte
            address = "\0" + address[1:]
        self._address = address or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_s: float | None = int(usec) / 1e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self._address)
                sock.sendall(message.encode())
            except OSError as exc:  # systemd gone or socket misconfigured: say so, never crash the relay
                log.warning("systemd notify failed", extra={"event": "sd_notify_failed", "error": str(exc)})

    async def watchdog(self, healthy: Callable[[], Awaitable[bool]]) -> None:
        """Pings at half the watchdog interval, each only after a health check passed within its share."""
        if self._address is None or self.watchdog_s is None:
            return
        interval = self.watchdog_s / 2
        while True:
            try:
                async with asyncio.timeout(self.watchdog_s * CHECK_SHARE):
                    ok = await healthy()
            except TimeoutError:
                ok = False
            if ok:
                self.send("WATCHDOG=1")
            else:
                log.error("health check failed: no watchdog ping (systemd will restart the relay if it lasts)",
                          extra={"event": "watchdog_withheld"})
            await asyncio.sleep(interval)
