"""The printed table."""

from __future__ import annotations

import math

from bench.stats import Summary

NAME_W = 48
COL_W = 9
TARGET_W = 22


def ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}ms" if v < 100 else f"{v:.0f}ms"


def yes_no(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def header() -> str:
    cols = "".join(f"{c:>{COL_W}}" for c in ("p50", "p90", "p99", "max"))
    return f"{'measurement':<{NAME_W}}{cols}   {'target':<{TARGET_W}}ok"


def latency_row(name: str, s: Summary, target: str = "", ok: bool | None = None) -> str:
    cols = "".join(f"{ms(v):>{COL_W}}" for v in (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms))
    return f"{name:<{NAME_W}}{cols}   {target:<{TARGET_W}}{yes_no(ok)}"


def value_row(name: str, value: str, target: str = "", ok: bool | None = None) -> str:
    return f"{name:<{NAME_W}}{value:>{COL_W * 4}}   {target:<{TARGET_W}}{yes_no(ok)}"


def rule() -> str:
    return "-" * (NAME_W + COL_W * 4 + 3 + TARGET_W + 3)
