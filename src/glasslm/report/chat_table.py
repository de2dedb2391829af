"""The chat suite across SFT → DPO → RL: one row per stage, the change from the row before, the check.

The figures come from each stage's manifest (``metrics.chat_suite``, written by the stage with
``eval/chat_suite.stage_record``), so the table shows what the stages measured and checked, not a
re-measurement. The first row is the model SFT started from (SFT's *before*), the baseline.
"""

from __future__ import annotations

import html
from typing import Any

from glasslm import artifacts
from glasslm.eval.chat_suite import CHAT_SUITE
from glasslm.report.base import Run

STAGES = ("sft", "dpo", "rl")
# (manifest figure, column heading); each gets a change column after it
COLUMNS = (
    ("assistant_loss", "assistant loss (nats/token)"),
    ("assistant_bpb", "bits/byte"),
    ("end_of_turn_rate", "end-of-turn rate"),
    ("length_ratio_median", "median length ratio"),
    ("short_reply_share", "replies < 3 tokens"),
    ("chrf", "chrF"),
)


def stage_records(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(stage, chat-suite record) of every adaptation stage of ``run`` that has one, in order."""
    out = []
    for stage in STAGES:
        directory = run.path / "adapt" / stage
        if not (directory / artifacts.MANIFEST).is_file():
            continue
        record = (artifacts.read_manifest(directory).get("metrics") or {}).get(CHAT_SUITE)
        if isinstance(record, dict) and isinstance(record.get("after"), dict):
            out.append((stage, record))
    return out


def _check(record: dict[str, Any]) -> str:
    if not record.get("checked"):
        return "baseline (not checked)"
    failed = [r["metric"] for r in record.get("regressions", []) if not r.get("accepted")]
    accepted = [r["metric"] for r in record.get("regressions", []) if r.get("accepted")]
    if failed:
        return "FAILED: " + ", ".join(failed)
    return "passed" + (f" (accepted: {', '.join(accepted)})" if accepted else "")


def _own(figures: dict[str, Any] | None) -> str:
    return "; ".join(f"{k} {v:.3f}" for k, v in (figures or {}).items() if isinstance(v, int | float))


def _row(name: str, figures: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": name}
    for key, heading in COLUMNS:
        value = figures.get(key)
        row[heading] = value
        prev = (previous or {}).get(key)
        both = isinstance(value, int | float) and isinstance(prev, int | float)
        row[f"Δ {heading}"] = value - prev if both else None  # type: ignore[operator]
    return row


def chat_rows(run: Run) -> list[dict[str, Any]]:
    """The table's rows for one run: the starting model, then each stage after training."""
    records = stage_records(run)
    rows: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    if records and isinstance(records[0][1].get("before"), dict):
        stage, first = records[0]
        previous = first["before"]
        rows.append({**_row(f"start ({stage} before)", previous, None), "own metric": _own(first.get("stage_before")),
                     "check": ""})  # fmt: skip
    for stage, record in records:
        after = record["after"]
        rows.append({**_row(stage, after, previous), "own metric": _own(record.get("stage_after")),
                     "check": _check(record)})  # fmt: skip
        previous = after
    return rows


def regressions_text(runs: list[Run]) -> str:
    """One line per failed or accepted regression, naming the metric, both values and the tolerance."""
    lines = []
    for run in runs:
        for stage, record in stage_records(run):
            for r in record.get("regressions", []):
                state = "accepted" if r.get("accepted") else "failed"
                lines.append(f"{html.escape(run.name)} {stage}: {r['metric']} {r['before']:.4f} → {r['after']:.4f} "
                             f"(tolerance {r['tolerance']:g}, {state})")  # fmt: skip
    return "<br>".join(lines)
