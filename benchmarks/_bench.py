"""Shared by the benchmark scripts: interleaved (ABAB) timing, spreads, and the one machine-readable
line per figure (``BENCH-RESULT {json}``) that ``benchmarks/run_all.sh`` collects into the README table.

Interleaving: a shared machine's load drifts, so the contestants take turns (A B A B …, the order
flipped every repeat so neither always runs first); each repeat's pair ran back to back, so the
per-repeat ratios are the least disturbed figure, and their median is the one reported, with the
min–max of the per-repeat ratios as the spread.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

MARK = "BENCH-RESULT "


def interleave(runners: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each runner ``repeats`` times, taking turns (order reversed every other repeat); each
    runner returns its own measurement (seconds, or a rate). Returns the measurements per runner."""
    out: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(runners[name]())
    return out


def ratios(ours: Sequence[float], peer: Sequence[float], higher_is_better: bool) -> list[float]:
    """Per-repeat ratios ours/peer as 'how many times better' (rates: ours/peer; times: peer/ours)."""
    return [(a / b if higher_is_better else b / a) for a, b in zip(ours, peer, strict=True)]


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_spread(values: Sequence[float], unit: str = "×") -> str:
    s = spread(values)
    if s["n"] == 1:
        return f"{s['median']:.2f}{unit}"
    return f"{s['median']:.2f}{unit} ({s['min']:.2f}–{s['max']:.2f}, n={s['n']})"


def report(
    benchmark: str,
    figure: str,
    peer: str,
    ratio_values: Sequence[float],
    *,
    goal: float | None = None,
    note: str = "",
    **extra: Any,
) -> None:
    """Print the machine-readable line for one figure: ours/peer (>1: we are faster), the median of
    the per-repeat ratios with their min–max, the goal if the issue set one, and free-form details."""
    s = spread(list(ratio_values))
    line = {
        "benchmark": benchmark,
        "figure": figure,
        "peer": peer,
        "ratio": round(s["median"], 3),
        "ratio_min": round(s["min"], 3),
        "ratio_max": round(s["max"], 3),
        "n": s["n"],
        "goal": goal,
        "note": note,
        **extra,
    }
    print(MARK + json.dumps(line), flush=True)
