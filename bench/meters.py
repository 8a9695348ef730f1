"""CPU accounting from /proc: per process, the relay's main thread, and the host's steal and iowait."""

from __future__ import annotations

import os
import time

from bench.env import World, cpu_s, cpu_times


class CpuMeter:
    """CPU used by the relay, the broker, the HTTP floor server and the bench itself since `start()`."""

    def __init__(self, world: World) -> None:
        self.pids = {"relay": world.relay.pid, "mosquitto": world.proc("mosquitto").pid,
                     "floor_server": world.proc("floor-http").pid, "bench": os.getpid()}
        self.t0: dict[str, float] = {}
        self.wall0 = 0.0

    def _read(self) -> dict[str, float]:
        now = {k: cpu_s(p) for k, p in self.pids.items()}
        relay = self.pids["relay"]
        now["relay_main_thread"] = sum(cpu_times(relay, relay))
        now["relay_kernel"] = cpu_times(relay)[1]
        return now

    def start(self) -> CpuMeter:
        self.t0 = self._read()
        self.wall0 = time.perf_counter()
        return self

    def per_item_ms(self, n: int) -> dict[str, float]:
        """Milliseconds of CPU (and of wall time) per item since start(); /proc counts in 10 ms ticks."""
        used = {k: (v - self.t0[k]) * 1000 / max(1, n) for k, v in self._read().items()}
        used["wall"] = (time.perf_counter() - self.wall0) * 1000 / max(1, n)
        return {k: round(v, 3) for k, v in used.items()}


class HostMeter:
    """Share of all CPU time that went to steal (the hypervisor) and iowait between construction and stop()."""

    def __init__(self) -> None:
        self.t0 = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def stop(self) -> dict[str, float]:
        d = [b - a for a, b in zip(self.t0, self._read(), strict=False)]
        total = max(1, sum(d[:8]))
        return {"steal_pct": round(100 * d[7] / total, 2), "iowait_pct": round(100 * d[4] / total, 2)}


def cpu_probe_ms() -> float:
    """Best of 5 timings of a fixed pure-Python loop: how fast this (virtual) CPU is right now.

    Neighbours on the host slow a VM down without always showing as steal; compare runs by this number."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        acc = 0
        for i in range(300_000):
            acc += i & 7
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)
