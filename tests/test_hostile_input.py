"""Hostile input lines: every data verb quarantines them (file, line, reason), counts them, and goes on.

One corpus holds every kind of unusable line we know of beside normal documents; each data verb runs
on it through the CLI. The lines must appear in the verb's ``quarantine.jsonl`` with their shard,
line number and reason, be counted in the manifest by reason, and (for ``mix``) be ledger rows so
the ledger's totals still add up to the input lines.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from tokens_support import WORDS, make_docs, make_tokenizer

from glasslm.artifacts import create_artifact, read_manifest
from glasslm.cli import main
from glasslm.data.documents import MAX_DEPTH, read_jsonl, write_jsonl


def prose(i: int) -> str:
    """A document of 40 random words, different for every ``i``."""
    rng = random.Random(i)
    return f"Document {i} says " + " ".join(rng.choice(WORDS) for _ in range(40)) + "."


def good(i: int) -> bytes:
    return json.dumps({"id": f"g{i}", "text": prose(i), "source": "web"}).encode()


# (raw line, the reason's category: the text before the first ':' in the quarantine reason)
HOSTILE: list[tuple[bytes, str]] = [
    (b'{"id": "n1", "text": null, "source": "web"}', "null field"),
    (b'{"id": "s1", "text": "a lone \\ud800 surrogate", "source": "web"}', "lone surrogate"),
    (b'{"id": "s2", "text": "fine text", "metadata": {"k": "\\udfff"}}', "lone surrogate"),
    (b'{"id": "deep", "text": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested too deeply"),
    (
        b'{"id": "deep2", "text": "fine", "metadata": {"m": '
        + b"[" * (MAX_DEPTH + 5)
        + b"]" * (MAX_DEPTH + 5)
        + b"}}",
        "nested too deeply",
    ),
    (b'{"id": "i1", "text": 42}', "non-string field"),
    (b'{"id": "f1", "text": 4.5e300}', "non-string field"),
    (b'{"id": "l1", "text": ["a", "list"]}', "non-string field"),
    (b'{"id": "o1", "text": {"an": "object"}}', "non-string field"),
    (b'{"id": 7, "text": "numeric id"}', "non-string field"),
    (b'{"id": "m1", "source": "web"}', "missing field"),
    (b'{"id": null, "text": "null id"}', "null field"),
    (b"[1, 2, 3]", "not a JSON object"),
    (b'"just a string"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (b"12", "not a JSON object"),
    (b'\xff\xfe{"id": "b1"}', "invalid UTF-8"),
    (b'{"id": "u1", "text": "caf\xe9 latin-1"}', "invalid UTF-8"),
    (b'{"id": "t1", "text": "truncated', "malformed JSON"),
    (b'{"id": "e1", "text": "  \\n "}', "empty field"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, int], str], int]:
    """(documents artifact, {(shard, line): reason category}, input lines) with hostile lines between good ones."""
    root = tmp_path_factory.mktemp("hostile") / "corpus"
    lines: list[bytes] = []
    expected: dict[tuple[str, int], str] = {}
    for k, (raw, reason) in enumerate(HOSTILE):
        lines.append(good(k))
        lines.append(raw)
        expected[("hostile.jsonl.gz", len(lines))] = reason
    lines.append(good(len(HOSTILE)))
    clean = [{"id": f"c{i}", "text": prose(100 + i), "source": "web"} for i in range(30)]
    with create_artifact(root, "documents") as w:
        (w.path / "documents").mkdir()
        (w.path / "documents" / "hostile.jsonl.gz").write_bytes(
            gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
        )
        write_jsonl(w.path / "documents" / "clean.jsonl.gz", clean)
    return root, expected, len(lines) + len(clean)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tok")
    return make_tokenizer(
        make_docs(tmp / "docs", shards=1, per_shard=40, heldout=0), tmp / "tokenizer", vocab=300
    )


def _recipe(tmp: Path, docs: Path, heldout: bool) -> Path:
    recipe = {
        "documents": str(docs),
        "seed": 1,
        "sources": [{"name": "web", "match": ["*"], "heldout": {"count": 3 if heldout else 0}}],
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_verb(verb: str, docs: Path, tmp: Path, tokenizer: Path | None) -> Path:
    out = tmp / verb
    common = ["--out", str(out), "--workers", "2"]
    if verb == "tag":
        args = [
            "data",
            "tag",
            str(docs),
            "--taggers",
            "gopher,c4,pii,char_length,stats",
            "--no-progress",
            *common,
        ]
    elif verb == "dedupe":
        args = ["data", "dedupe", str(docs), *common]
    elif verb == "decon":
        task = tmp / "task.jsonl"
        task.write_text(json.dumps({"question": prose(3)}) + "\n")
        args = ["data", "decon", str(docs), "--tasks", str(task), *common]
    elif verb in ("mix", "mix_heldout"):
        args = ["data", "mix", str(_recipe(tmp, docs, verb == "mix_heldout")), *common]
    else:
        assert tokenizer is not None
        args = ["data", "tokenize", str(docs), "--tokenizer", str(tokenizer), *common]
    assert main(args) == 0
    return out


def check_quarantine(out: Path, expected: dict[tuple[str, int], str]) -> None:
    records = list(read_jsonl(out / "quarantine.jsonl"))
    found = {(Path(r["file"]).name, r["line"]): r["reason"].split(":")[0] for r in records}
    assert found == expected
    for r in records:  # the raw line is kept, so the quarantine file alone explains the decision
        assert r["encoding"] in ("utf-8", "base64") and r["raw"]
    counts = read_manifest(out)["metrics"]["quarantined_by_reason"]
    assert counts == dict(Counter(expected.values()))


def check_ledger(out: Path, expected: dict[tuple[str, int], str], input_lines: int) -> None:
    rows = pq.read_table(out / "ledger.parquet").to_pylist()
    keys = [(r["shard"], r["line"]) for r in rows]
    assert len(keys) == len(set(keys)) == input_lines, "one ledger row per input line"
    decisions = Counter(r["decision"] for r in rows)
    assert sum(decisions[d] for d in ("kept", "modified", "removed", "quarantined")) == input_lines
    quarantined = {(r["shard"], r["line"]): r for r in rows if r["decision"] == "quarantined"}
    assert set(quarantined) == set(expected)
    for key, row in quarantined.items():
        assert row["first_rule"] == "quarantine"
        assert json.loads(row["rules"][0]["value"]).split(":")[0] == expected[key]
    metrics = read_manifest(out)["metrics"]
    assert metrics["input"]["docs"] == input_lines
    assert metrics["decisions"]["quarantined"] == len(expected)
    written = sum(r["copies"] for r in rows if r["split"] in ("train", "held_out"))
    assert written == metrics["output_docs"]


@pytest.mark.parametrize("verb", ["tag", "dedupe", "decon", "mix", "mix_heldout", "tokenize"])
def test_every_data_verb_quarantines_hostile_lines(
    verb: str, corpus: Any, tokenizer: Path, tmp_path: Path
) -> None:
    docs, expected, input_lines = corpus
    out = run_verb(verb, docs, tmp_path, tokenizer if verb == "tokenize" else None)
    check_quarantine(out, expected)
    if verb.startswith("mix"):
        check_ledger(out, expected, input_lines)
    if verb in ("tag", "dedupe", "decon"):  # one attribute line per usable document line, in order
        ids = [r["id"] for r in read_jsonl(out / "hostile.jsonl.gz")]
        assert ids == [f"g{k}" for k in range(len(HOSTILE) + 1)]
