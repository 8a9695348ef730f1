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


# the comparison block: each of our figures beside its floor and the peer's, as ratios
CMP_NAME_W = 40
CMP_W = 10
RATIO_W = 8
CMP_TARGET_W = 27


def pass_fail(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def compare_header() -> str:
    cols = (f"{'ours':>{CMP_W}}{'floor':>{CMP_W}}{'/floor':>{RATIO_W}}{'peer':>{CMP_W}}{'/peer':>{RATIO_W}}")
    return f"{'figure':<{CMP_NAME_W}}{cols}   {'target':<{CMP_TARGET_W}}ok"


def compare_row(name: str, ours: str, floor: str, x_floor: float | None, peer: str, x_peer: float | None,
                target: str, ok: bool | None) -> str:
    x_f = "-" if floor == "-" else ratio(x_floor)
    return (f"{name:<{CMP_NAME_W}}{ours:>{CMP_W}}{floor:>{CMP_W}}{x_f:>{RATIO_W}}{peer:>{CMP_W}}"
            f"{ratio(x_peer):>{RATIO_W}}   {target:<{CMP_TARGET_W}}{pass_fail(ok)}")
