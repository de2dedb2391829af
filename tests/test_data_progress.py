"""Stage progress from the driver (data/progress.py): shards done / total, MB/s, ETA at a bounded rate
on stderr, a final line always, and the quarantined records per reason at the end of a stage."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from glasslm.cli import main
from glasslm.data.progress import StageProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_rate_limited_and_the_last_is_always_printed() -> None:
    clock, out = Clock(), io.StringIO()
    report = StageProgress("tag", 1000, 1000 * 2_000_000, interval=5.0, stream=out, clock=clock)
    for i in range(1000):
        clock.now = (i + 1) * 0.01  # 10 s in all: 100 shards a second
        report.update(2_000_000, {"malformed JSON": 1} if i % 100 == 0 else None)
    report.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one at 5 s; at 10 s the last shard is done, so only the final line
    assert lines[0] == "tag: 500/1000 shards (50%), 1,000.0 MB stored, 200.00 MB/s, ETA 0:00:05"
    assert lines[-1] == (
        "tag: done 1000/1000 shards, 2,000.0 MB stored in 10.0 s (200.00 MB/s); quarantined 10 (malformed JSON: 10)"
    )


def test_eta_by_tasks_and_no_mb_when_sizes_are_unknown() -> None:
    clock, out = Clock(), io.StringIO()
    report = StageProgress("dedupe: index", 4, interval=0.0, stream=out, clock=clock, unit="partitions")
    clock.now = 30.0
    report.update()
    clock.now = 120.0
    for _ in range(3):
        report.update()
    report.close()
    first, last = out.getvalue().splitlines()[0], out.getvalue().splitlines()[-1]
    assert first == "dedupe: index: 1/4 partitions (25%), ETA 0:01:30"  # not "0.0 MB stored, 0.00 MB/s"
    assert last == "dedupe: index: done 4/4 partitions in 120.0 s; quarantined 0"


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    report = StageProgress("mix", 2, enabled=False, stream=out)
    report.update(10)
    report.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("executor", ["local", "process"])
def test_cli_stage_reports_progress_and_quarantine_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, executor: str
) -> None:
    monkeypatch.setenv("GLASSLM_PROGRESS_SECONDS", "0")  # a line per shard: this corpus takes milliseconds
    docs = tmp_path / "docs" / "documents"
    docs.mkdir(parents=True)
    for s in range(3):
        rows = [json.dumps({"id": f"{s}-{i}", "text": f"document {i} of shard {s} " * 20}) for i in range(5)]
        if s == 1:
            rows += ["not json", '{"id": "x"}']
        (docs / f"s{s}.jsonl").write_text("\n".join(rows) + "\n")
    corpus = tmp_path / "corpus"
    assert main(["data", "import", str(docs), "--out", str(corpus), "--corpus.shard_bytes=1500"]) == 0
    flags = ["--taggers", "stats", "--executor", executor, "--workers", "2"]
    assert main(["data", "tag", str(corpus), *flags, "--out", str(tmp_path / "tags")]) == 0
    err = capsys.readouterr().err
    # import: one file at a time, its quarantine by reason at the end
    assert re.search(
        r"^import: 1/3 files \(33%\), [\d.,]+ MB stored, [\d.,]+ MB/s, ETA \d+:\d\d:\d\d$", err, re.M
    )
    assert re.search(
        r"^import: done 3/3 files, [\d.,]+ MB stored in [\d.]+ s \([\d.,]+ MB/s\); "
        r"quarantined 2 \(malformed JSON: 1, missing field: 1\)$",
        err,
        re.M,
    )
    # a shard stage (its input is clean after import): shards done / total and the final line
    assert re.search(r"^tag: 1/4 shards", err, re.M)
    assert re.search(
        r"^tag: done 4/4 shards, [\d.,]+ MB stored in [\d.]+ s \([\d.,]+ MB/s\); quarantined 0$", err, re.M
    )


def test_no_progress_silences_every_data_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--no-progress` was a flag of `data tag` only (`data dedupe … --no-progress`: unrecognized)."""
    monkeypatch.setenv("GLASSLM_PROGRESS_SECONDS", "0")
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"document {i} " * 30}) + "\n" for i in range(6))
    )
    corpus, dedupe = tmp_path / "corpus", tmp_path / "dedupe"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"documents: {corpus}\nattributes: [{dedupe}]\nsources: [{{name: web}}]\n")
    for argv in (
        ["data", "import", f"web={src}", "--out", str(corpus)],
        ["data", "dedupe", str(corpus), "--out", str(dedupe)],
        ["data", "mix", str(recipe), "--out", str(tmp_path / "mix")],
    ):
        assert main([*argv, "--no-progress"]) == 0, argv
        err = capsys.readouterr().err
        assert not re.search(r"^\w[\w :+-]*: (done )?\d+/\d+ ", err, re.M), (argv, err)
