"""The store that cannot write (a full disk, a read-only filesystem), simulated for real on a tiny tmpfs:
intake answers 503, nothing is reported accepted that was not stored, and the relay recovers by itself."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.relay import RunningRelay, report, running_relay, settings_dict
from tests.support.wait import eventually


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "4m") -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs) that can be filled up, where this machine lets us mount one."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


async def _store_reason(relay: RunningRelay) -> list[str] | None:
    status, body = await relay.get("/readyz", token=None)
    return body["reasons"] if status == 503 and any("store" in r for r in body["reasons"]) else None


async def test_a_full_disk_refuses_reports_with_503_and_recovers(broker: Mosquitto, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as small:
        async with running_relay(settings_dict(broker.port, small)) as relay:
            status, before = await relay.post_report(report("before-full"))
            assert status == 201
            filler = fill(small)

            status, body = await relay.post_report(report("while-full"))
            assert status == 503
            assert body["error"] == "store_unavailable"
            assert "not accepted" in body["detail"] or "nothing" in body["detail"]
            assert await eventually(lambda: _store_reason(relay), what="readyz names the store")
            assert await relay.metric("relay_store_up") == 0
            assert await relay.metric('relay_reports_rejected_total{reason="store_unavailable"}') >= 1

            filler.unlink()
            status, _ = await relay.post_report(report("after-full"))
            assert status == 201
            _, listing = await relay.get("/api/v1/alerts")
            assert sorted(a["report_id"] for a in listing["alerts"]) == ["after-full", "before-full"]
            assert await relay.metric("relay_store_up") == 1
            status, again = await relay.post_report(report("while-full"))
            assert status == 201  # the refused report was never half-stored: sending it again works
            assert before["alert_id"] != again["alert_id"]


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Files nobody may write, root included (chattr +i), the way a disk turned read-only looks to a process."""
    done = []
    try:
        for p in paths:
            result = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot make a file immutable here: {result.stderr.strip()}")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=False)


async def test_a_read_only_store_refuses_reports_with_503_and_recovers(broker: Mosquitto, tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_relay(settings_dict(broker.port, data)) as relay:
        status, _ = await relay.post_report(report("before-ro"))
        assert status == 201
        with immutable(data / "relay.db", data / "relay.db-wal"):
            status, body = await relay.post_report(report("while-ro"))
            assert status == 503
            assert body["error"] == "store_unavailable"
            assert await eventually(lambda: _store_reason(relay), what="readyz names the store")
            status, _ = await relay.get("/healthz", token=None)
            assert status == 200  # still running: it is the store that is unwell
            assert await relay.metric('relay_reports_rejected_total{reason="store_unavailable"}') == 1
        status, _ = await relay.post_report(report("while-ro"))
        assert status == 201
        _, listing = await relay.get("/api/v1/alerts")
        assert sorted(a["report_id"] for a in listing["alerts"]) == ["before-ro", "while-ro"]
