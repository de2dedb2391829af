"""`glasslm report`: every section from a real (micro) pipeline run, a real browser, and --compare."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pipeline_support import micro_pipeline

from glasslm.cli import main

SECTIONS = [
    "Data funnel",
    "Language and quality scores",
    "Pretraining",
    "Evaluation",
    "Adaptation",
    "Sample generations",
    "Energy",
    "Lineage",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    eval_section = "{suite: [perplexity, arc_easy, piqa], limit: 4, num_shots: 0, ppl_max_docs: 3}"
    return micro_pipeline(
        tmp_path_factory.mktemp("report"),
        eval_section,
        code_bytes=120_000,
        web_bytes=150_000,
        checkpoint_every=6,
        log_every=2,
    )[1]


@pytest.fixture(scope="module")
def report(run: Path) -> Path:
    out = run.parent / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    return out


def test_report_artifact_lists_every_section_and_figure(report: Path) -> None:
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["kind"] == "report"
    assert manifest["metrics"]["sections"] == SECTIONS
    kinds = {ref["kind"] for ref in manifest["inputs"]}
    assert {"documents", "attributes", "mix", "tokens", "train_run", "eval", "trace_index"} <= kinds, kinds
    assert "report" not in kinds  # the pipeline's own report of the run is not an input of this one
    md = (report / "report.md").read_text()
    for title in SECTIONS:
        assert f"## {title}\n" in md
    assert "Not in this run" not in md  # the micro run has every artifact the report reads
    figures = manifest["metrics"]["figures"]
    for stem in (
        "funnel_docs",
        "tags_langid_top_language_score",
        "train_loss",
        "train_tokens_per_s",
        "eval_bits_per_byte",
        "eval_downstream_acc",
        "adapt_sft_loss",
        "adapt_dpo_reward_accuracy",
    ):
        assert f"{stem}.png" in figures
    for name in figures:
        data = (report / "figures" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000, name
        assert f"figures/{name}" in md


def test_sections_carry_the_runs_numbers(run: Path, report: Path) -> None:
    from glasslm.data import ledger

    md = (report / "report.md").read_text()
    summary = ledger.summary(ledger.read(run / "mix"))
    assert f"{summary['input']['docs']:,} input documents ({summary['input']['bytes']:,} bytes)" in md
    for source, f in summary["funnel"].items():
        assert f"| {source} | input | {f['input_docs']:,} | {f['input_bytes']:,} |" in md
    results = json.loads((run / "eval" / "results.json").read_text())
    for task in ("arc_easy", "piqa"):
        assert f"| {task} |" in md
    for d in results["perplexity"]["domains"]:
        assert f"| {d['domain']} |" in md
    assert "unigram baseline" in md and "kg CO2e" in md and "tdp-estimate" in md
    assert "| sft | heldout_loss |" in md and "| dpo | reward_accuracy |" in md
    html = (report / "index.html").read_text()
    assert "final model" in html and "pretrained model" in html


def test_page_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (report / "index.html").resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    figures = json.loads((report / "manifest.json").read_text())["metrics"]["figures"]
    imgs = dict(re.findall(r'<img[^>]*data-figure="([^"]+)"[^>]*src="data:image/png;base64,([^"]*)"', dom))
    assert sorted(f"{k}.png" for k in imgs) == sorted(figures)
    for stem, b64 in imgs.items():
        assert base64.b64decode(b64).startswith(b"\x89PNG"), stem
    for title in SECTIONS:
        assert f">{title}</h2>" in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_compare_overlays_runs_and_adds_rows(run: Path, tmp_path: Path) -> None:
    # A second run directory (a copy: a second pipeline run would double the test's time); what is
    # checked is that every table and curve carries both runs.
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("report"))
    out = tmp_path / "cmp"
    assert main(["report", str(run), "--compare", str(other), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["compare"] == [str(other)]
    # tables gain a run column (rows per run) or a column per run
    for name in (run.name, "other"):
        assert f"| {name} | code | input |" in md  # funnel: a row per run
        assert f"| {name} | macro average |" in md  # bits per byte: a row per run
        assert f"| {name} | train | " in md  # energy
        assert f"acc · {name}" in md and f"gold bpb · {name}" in md  # downstream: a column per run
    assert {"train_loss.png", "funnel_docs.png", "adapt_dpo_loss.png"} <= set(manifest["metrics"]["figures"])


def test_missing_artifacts_are_said_not_failed(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 0
    md = (empty / "report" / "report.md").read_text()
    for title in SECTIONS:
        assert f"## {title}\n" in md
    assert md.count("Not in this run") == len(SECTIONS)


def test_compared_runs_with_the_same_folder_name_get_labels_that_tell_them_apart(tmp_path: Path) -> None:
    from glasslm.report.cli import run_labels

    a, b, c = tmp_path / "runs" / "tiny", tmp_path / "other" / "tiny", tmp_path / "runs" / "small"
    assert run_labels([a, c]) == ["tiny", "small"]
    assert run_labels([a, b]) == ["runs/tiny", "other/tiny"]
