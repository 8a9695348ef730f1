"""Task helpers for a daemon whose shutdown must not hang."""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raise if this task was asked to stop. Some libraries' awaits (aiosmtplib's wait_for on Python 3.11) can
    swallow a cancellation that races with their result; a worker that then waited for its next job would hold
    the shutdown for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
