"""``data why`` and ``data stats`` over a mix ledger, given the mix artifact or its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from glasslm.artifacts import create_artifact
from glasslm.cli import main
from glasslm.data.documents import write_jsonl


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo"
    text = "A paragraph of plain text about rivers and valleys.\nAnother line."
    with create_artifact(run / "corpus", "documents") as w:
        write_jsonl(
            w.path / "documents" / "web.jsonl.gz",
            [
                {"id": "r1", "text": text, "source": "web"},
                {"id": "r2", "text": text, "source": "web"},
                {"id": "r3", "text": "Mail bob@example.org today.", "source": "web"},
            ],
        )
    assert (
        main(["data", "dedupe", str(run), "--out", str(run / "attributes" / "dedupe"), "--workers", "1"]) == 0
    )
    with create_artifact(run / "attributes" / "pii", "attributes") as w:
        write_jsonl(
            w.path / "web.jsonl.gz",
            [
                {"id": "r1", "attributes": {"p__pii__EMAIL_ADDRESS": []}},
                {"id": "r2", "attributes": {"p__pii__EMAIL_ADDRESS": []}},
                {"id": "r3", "attributes": {"p__pii__EMAIL_ADDRESS": [[5, 20, 1.0]]}},
            ],
        )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": [{"name": "web", "dedupe": True, "pii_mask": True}]}))
    assert (
        main(
            [
                "data",
                "mix",
                str(recipe),
                "--documents",
                str(run),
                "--attributes",
                str(run / "attributes" / "dedupe"),
                str(run / "attributes" / "pii"),
                "--out",
                str(run / "mix"),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return run


def test_why_tells_the_whole_story(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["data", "why", "r2", str(run_dir), "--json"]) == 0
    story = json.loads(capsys.readouterr().out)
    (row,) = story["rows"]
    assert (
        row["decision"] == "removed" and row["first_rule"] == "dedupe_exact" and row["duplicate_of"] == "r1"
    )
    assert row["input"].endswith("corpus/documents/web.jsonl.gz:2") and row["split"] == "none"
    assert row["attributes"]["dedupe__dedupe__exact_doc"] == [[0, 65, 1.0]]
    assert row["attributes"]["p__pii__EMAIL_ADDRESS"] == []
    assert [r["rule"] for r in row["rules"]] == ["dedupe_exact", "dedupe_near"]

    assert main(["data", "why", "r3", str(run_dir / "mix")]) == 0
    text = capsys.readouterr().out
    assert "decision:     modified by pii_mask" in text and "output:       documents/web.jsonl.gz:2" in text
    assert main(["data", "why", "nope", str(run_dir)]) == 2


def test_stats_funnel_adds_up(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["data", "stats", str(run_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    web = stats["funnel"]["web"]
    assert (web["input_docs"], web["kept"], web["modified"], web["removed"]) == (3, 1, 1, 1)
    assert web["by_rule"] == {"dedupe_exact": {"docs": 1, "bytes": 65}}
    assert stats["output_docs"] == web["train_docs"] == 2
    assert main(["data", "stats", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "- dedupe_exact" in table and "= train" in table
