"""The report's chat-suite table: read from the stage manifests, one row per stage, change per stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from glasslm import artifacts
from glasslm.cli import main
from glasslm.eval import chat_suite as cs
from glasslm.report.base import Run
from glasslm.report.chat_table import chat_rows
from glasslm.report.model_sections import adaptation_section


def _figures(loss: float, eot: float, ratio: float, short: float, chrf: float) -> dict[str, float]:
    return {"assistant_loss": loss, "assistant_bpb": loss / 2, "end_of_turn_rate": eot,
            "length_ratio_median": ratio, "short_reply_share": short, "chrf": chrf}  # fmt: skip


def _stage(run: Path, stage: str, before: dict[str, float], after: dict[str, float], checked: bool,
           own: dict[str, float], tolerances: cs.Tolerances) -> None:  # fmt: skip
    directory = run / "adapt" / stage
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    found = cs.check_regressions(before, after, tolerances) if checked else None
    record = cs.stage_record(
        cs.ChatResult(before, [], {}), cs.ChatResult(after, [], own), found, tolerances, 128
    )
    artifacts.write_manifest(directory, "train_run", metrics={"stage": stage, cs.CHAT_SUITE: record})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    base, sft = _figures(6.0, 0.0, 2.1, 0.0, 10.0), _figures(3.0, 0.8, 0.9, 0.05, 30.0)
    dpo, rl = _figures(3.02, 0.78, 0.8, 0.06, 29.0), _figures(3.5, 0.9, 0.05, 0.9, 5.0)
    _stage(run, "sft", base, sft, False, {}, cs.Tolerances())
    _stage(run, "dpo", sft, dpo, True, {"reward_accuracy": 0.7}, cs.Tolerances())
    _stage(run, "rl", dpo, rl, True, {"pass_at_1": 0.4}, cs.Tolerances(accept=["assistant_loss"]))
    return run


def test_one_row_per_stage_with_the_change_from_the_row_before(run: Path) -> None:
    rows = chat_rows(Run(run, "run"))
    assert [r["stage"] for r in rows] == ["start (sft before)", "sft", "dpo", "rl"]
    loss = "assistant loss (nats/token)"
    assert [r[loss] for r in rows] == [6.0, 3.0, 3.02, 3.5]
    assert rows[0][f"Δ {loss}"] is None
    assert [round(r[f"Δ {loss}"], 6) for r in rows[1:]] == [-3.0, 0.02, 0.48]
    assert rows[3]["Δ replies < 3 tokens"] == pytest.approx(0.84)
    assert rows[1]["check"] == "baseline (not checked)" and rows[2]["check"] == "passed"
    # assistant_loss regressed too, but is accepted; replies at 0.05 of the references' length left the band
    assert rows[3]["check"] == "FAILED: short_reply_share, length_ratio_median"
    assert rows[2]["own metric"] == "reward_accuracy 0.700" and rows[3]["own metric"] == "pass_at_1 0.400"


def test_the_adaptation_section_and_the_report_show_it(run: Path) -> None:
    section = adaptation_section([Run(run, "run")])
    captions = [caption for caption, _ in section.tables]
    assert "Chat suite across the stages" in captions
    assert "run rl: short_reply_share 0.0600 → 0.9000 (tolerance 0.05, failed)" in section.text
    assert "run rl: assistant_loss 3.0200 → 3.5000 (tolerance 0.05, accepted)" in section.text
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "**Chat suite across the stages**" in md and "| rl | 3.5 |" in md


def test_a_run_without_chat_records_has_no_chat_table(tmp_path: Path) -> None:
    directory = tmp_path / "old" / "adapt" / "sft"
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    artifacts.write_manifest(
        directory, "train_run", metrics={"heldout_loss_before": 3.0, "heldout_loss_after": 2.0}
    )
    section = adaptation_section([Run(tmp_path / "old", "old")])
    assert [caption for caption, _ in section.tables] == ["Held-out metrics before and after each stage"]
