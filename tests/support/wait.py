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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
