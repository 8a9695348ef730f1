"""The run of a bench whose relay lives in the bench's own event loop (bench.closed_network, bench.cot): a clean
environment, a work directory removed however the run ends, the table of what was measured (also after a failure),
and the machine's load around it."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.env import REPO

Results = dict[str, Any]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(name: str, measure: Callable[[Path, Results], Coroutine[Any, Any, None]],
        render: Callable[[dict[str, Any], Results], list[str]]) -> int:
    """0 when the run finished (targets met or not), 1 when it failed, 130 on Ctrl-C or SIGTERM; the parts
    measured before a failure are printed all the same."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    for key in list(os.environ):  # the relay under test takes its config from the bench alone
        if key.startswith("RELAY_"):
            del os.environ[key]
    info = machine()
    info["load_before"] = loadavg()
    work = REPO / "var" / f"{name}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    failure = None
    results: Results = {}
    try:
        asyncio.run(measure(work, results))
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:
        failure = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failure:
        say(f"benchmark failed: {failure}; the parts measured before it:")
    print("\n".join(render(info, results)))
    print(f"run took {time.monotonic() - t0:.0f} s; load average before {info['load_before']}, after {loadavg()} "
          f"({info['cores']} cores)")
    return 0 if not failure else 130 if failure == "interrupted" else 1
