"""Waiting on conditions with a deadline, never on a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None] | T | None], timeout: float = 5.0,
                     interval: float = 0.02, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


def wait_port(host: str, port: int, timeout: float = 5.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.01)


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts next.

    Taken below the kernel's ephemeral range: a port the kernel hands out for `bind(0)` is also one it may give an
    outgoing connection's source port (the relay's own MQTT or SMTP client) between this check and the server's
    bind, and the server then fails with "address already in use" (seen once in CI). No port is handed out twice.
    """
    import random
    import socket

    low, _high = _ephemeral_range()
    pool = range(10000, low) if low > 11000 else range(0)
    for port in random.sample(pool, k=min(len(pool), 200)):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range on this machine: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = f.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # the IANA range, which macOS and Windows use


async def holds_for(check: Callable[[], Awaitable[bool] | bool], seconds: float, interval: float = 0.05,
                    what: str = "condition") -> None:
    """Assert `check` stays true for `seconds`: for what must *not* happen (nothing more is sent after an ack)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if not result:
            raise AssertionError(f"{what} stopped holding")
        await asyncio.sleep(interval)
