"""The mixer: recipe rules, span edits, PII masking, held-out split, decon against held-out, sampling,
bad input, and the ledger invariant (every input line exactly once, totals add up)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from glasslm.artifacts import create_artifact, read_manifest
from glasslm.cli import main
from glasslm.config import ConfigError, from_dict
from glasslm.data.documents import read_jsonl, write_jsonl
from glasslm.data.mixer import Recipe, apply_edits

HELD = "The held out document talks about lighthouses keepers storms ships rocks harbours tides and fog horns at night"


def docs_artifact(root: Path, shards: dict[str, list[Any]], raw: dict[str, bytes] | None = None) -> Path:
    with create_artifact(root, "documents") as w:
        for name, docs in shards.items():
            write_jsonl(w.path / "documents" / name, docs)
        for name, data in (raw or {}).items():
            (w.path / "documents" / name).write_bytes(data)
    return root


def attributes_artifact(root: Path, shards: dict[str, list[tuple[str, dict[str, Any]]]]) -> Path:
    with create_artifact(root, "attributes") as w:
        for name, rows in shards.items():
            write_jsonl(w.path / name, [{"id": i, "attributes": a} for i, a in rows])
    return root


def mix(tmp_path: Path, recipe: dict[str, Any], *extra: str) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "mix"
    assert main(["data", "mix", str(path), "--out", str(out), "--workers", "1", *extra]) == 0
    return out, pq.read_table(out / "ledger.parquet").to_pylist()


def doc(i: str, text: str, source: str = "web") -> dict[str, Any]:
    return {"id": i, "text": text, "source": source}


def span(text: str, score: float) -> list[list[float]]:
    return [[0, len(text), score]]


def check_invariants(out: Path, rows: list[dict[str, Any]], input_lines: int) -> None:
    keys = [(r["shard"], r["line"]) for r in rows]
    assert len(keys) == len(set(keys)) == input_lines, "every input line appears exactly once"
    counts = Counter(r["decision"] for r in rows)
    assert counts["kept"] + counts["modified"] + counts["removed"] + counts["quarantined"] == input_lines
    written = sum(1 for p in (out / "documents").glob("*.jsonl.gz") for _ in read_jsonl(p))
    written += sum(1 for p in (out / "heldout").rglob("*.jsonl.gz") for _ in read_jsonl(p))
    assert written == sum(r["copies"] for r in rows if r["split"] in ("train", "held_out"))
    assert all((r["split"] == "none") == (r["copies"] == 0) for r in rows)
    assert all(r["first_rule"] is None for r in rows if r["decision"] == "kept")
    metrics = read_manifest(out)["metrics"]
    assert metrics["input"]["docs"] == input_lines and metrics["output_docs"] == written


def test_recipe_rules_edits_heldout_and_invariant(tmp_path: Path) -> None:
    texts = {
        "good": "A perfectly fine English page about gardening and the seasons of the year.",
        "short": "tiny",
        "french": "Un texte entièrement en français, sans anglais du tout.",
        "toxic": "some very rude words here that a classifier would score high",
        "email": "Write to alice@example.com for the full gardening schedule of the year.",
        "dup_para": "First line is unique.\nThis line was seen before.\nLast line is unique too.",
        "quotes_held": "As the old text says: " + HELD + ", and more.",
        "code1": "def f(x):\n    return x + 1\n",
        "held": HELD,
    }
    shards = {
        "a.jsonl.gz": [
            doc(k, texts[k]) for k in ("good", "short", "french", "toxic", "email", "dup_para", "quotes_held")
        ],
        "b.jsonl.gz": [
            doc("code1", texts["code1"], "code-python"),
            doc("held", texts["held"], "lighthouse"),
            doc("stray", "no recipe source for this one", "unknown"),
        ],
    }
    docs = docs_artifact(tmp_path / "docs", shards)

    def attrs(k: str, text: str) -> dict[str, Any]:
        a: dict[str, Any] = {
            "t1__gopher__word_count": span(text, len(text.split())),
            "t1__langid__en": span(text, 0.1 if k == "french" else 0.95),
            "t1__toxicity__doc": span(text, 0.9 if k == "toxic" else 0.01),
            "t1__pii__EMAIL_ADDRESS": [],
            "t1__dedupe__paragraphs": [],
        }
        if k == "email":
            a["t1__pii__EMAIL_ADDRESS"] = [[9, 26, 1.0]]
        if k == "quotes_held":  # masked first, then removed: the removal is what decided
            a["t1__pii__EMAIL_ADDRESS"] = [[0, 2, 1.0]]
        if k == "dup_para":
            a["t1__dedupe__paragraphs"] = [[22, 49, 1.0]]
        return a

    tags = attributes_artifact(
        tmp_path / "tags",
        {name: [(d["id"], attrs(d["id"], d["text"])) for d in docs_] for name, docs_ in shards.items()},
    )
    recipe = {
        "documents": str(docs),
        "attributes": [str(tags)],
        "seed": 3,
        "rules": [{"attribute": "gopher__word_count", "op": "<", "value": 3, "name": "too_short"}],
        "sources": [
            {"name": "web", "language": "en", "toxicity_max": 0.5, "pii_mask": True, "dedupe": True},
            {"name": "code", "match": ["code-*"], "weight": 2.0},
            {"name": "lighthouse", "heldout": {"count": 1}},
        ],
    }
    out, rows = mix(tmp_path, recipe)
    check_invariants(out, rows, 10)
    assert read_manifest(out)["metrics"]["suspect_rules"] == []
    by_id = {r["id"]: r for r in rows}
    assert by_id["good"]["decision"] == "kept" and by_id["good"]["split"] == "train"
    assert by_id["short"]["first_rule"] == "too_short" and by_id["short"]["rules"][0]["value"] == "1"
    assert (
        by_id["french"]["first_rule"] == "language"
        and json.loads(by_id["french"]["rules"][0]["value"]) == 0.1
    )
    assert by_id["toxic"]["first_rule"] == "toxicity"
    assert by_id["stray"]["first_rule"] == "unmatched_source"
    assert by_id["email"]["decision"] == "modified" and by_id["dup_para"]["decision"] == "modified"
    assert (
        by_id["held"]["split"] == "held_out"
        and by_id["held"]["output_file"] == "heldout/lighthouse/b.jsonl.gz"
    )
    assert by_id["quotes_held"]["first_rule"] == "decon_heldout"
    assert [r["rule"] for r in by_id["quotes_held"]["rules"]] == ["pii_mask:email_address", "decon_heldout"]
    assert by_id["code1"]["copies"] == 2
    train = {d["id"]: d for d in read_jsonl(out / "documents" / "a.jsonl.gz")}
    assert (
        train["email"]["text"] == "Write to |||EMAIL_ADDRESS||| for the full gardening schedule of the year."
    )
    assert train["dup_para"]["text"] == "First line is unique.\nLast line is unique too."
    code = list(read_jsonl(out / "documents" / "b.jsonl.gz"))
    assert [d["id"] for d in code] == ["code1", "code1#1"] and code[1]["metadata"]["copy_of"] == "code1"
    funnel = read_manifest(out)["metrics"]["funnel"]
    assert funnel["web"]["by_rule"]["decon_heldout"]["docs"] == 1 and funnel["code"]["output_docs"] == 2


BAD_LINES = [
    b'{"id": "ok1", "text": "fine"}',
    b'{"id": "bad-json", "text": ',
    b'{"id": "bad-utf8", "text": "caf\xe9"}',
    b'{"id": "no-text"}',
    b'{"id": "empty", "text": "   "}',
    b'{"id": "nonstring", "text": "x", "source": 5}',
    b'{"id": "ok1", "text": "same id again"}',
    b'{"id": "ok2", "text": "fine too"}',
]


def test_bad_input_is_quarantined_in_the_ledger(tmp_path: Path) -> None:
    truncated = gzip.compress(b'{"id": "t1", "text": "first"}\n{"id": "t2", "text": "second"}\n' * 50)
    docs = docs_artifact(
        tmp_path / "docs",
        {"c.jsonl.gz": [doc("ok1", "cross-shard duplicate id")]},
        raw={
            "a.jsonl": b"\n".join(BAD_LINES) + b"\n",
            "b.jsonl.gz": truncated[: len(truncated) // 2],
        },
    )
    out, rows = mix(tmp_path, {"documents": str(docs), "sources": [{"name": "all", "match": ["*"]}]})
    a = {r["line"]: r for r in rows if r["shard"] == "a.jsonl"}
    reasons = {
        line: json.loads(r["rules"][0]["value"]) for line, r in a.items() if r["decision"] == "quarantined"
    }
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7]
    for line, prefix in zip(
        [2, 3, 4, 5, 6, 7],
        [
            "malformed JSON",
            "invalid UTF-8",
            "missing field",
            "empty field",
            "non-string field",
            "duplicate id",
        ],
        strict=True,
    ):
        assert reasons[line].startswith(prefix), (line, reasons[line])
    assert a[1]["decision"] == a[8]["decision"] == "kept"
    b = [r for r in rows if r["shard"] == "b.jsonl.gz"]
    assert b[-1]["decision"] == "quarantined" and "truncated" in json.loads(b[-1]["rules"][0]["value"])
    assert all(r["decision"] == "kept" for r in b[:-1]) and len(b) >= 2
    c = [r for r in rows if r["shard"] == "c.jsonl.gz"]
    assert c[0]["decision"] == "quarantined" and "earlier shard" in json.loads(c[0]["rules"][0]["value"])
    check_invariants(out, rows, len(BAD_LINES) + len(b) + 1)
    quarantine = list(read_jsonl(out / "quarantine.jsonl"))
    assert len(quarantine) == sum(r["decision"] == "quarantined" for r in rows)


def test_sampling_is_seeded_and_counts_copies(tmp_path: Path) -> None:
    docs = docs_artifact(
        tmp_path / "docs",
        {
            "a.jsonl.gz": [doc(f"d{i}", f"document number {i}", "down") for i in range(200)]
            + [doc(f"u{i}", f"upsampled document {i}", "up") for i in range(50)]
        },
    )
    recipe = {
        "documents": str(docs),
        "seed": 7,
        "decon_heldout": False,
        "sources": [{"name": "down", "weight": 0.5}, {"name": "up", "weight": 2.5}],
    }
    out, rows = mix(tmp_path, recipe)
    check_invariants(out, rows, 250)
    down = [r for r in rows if r["recipe_source"] == "down"]
    kept = sum(r["split"] == "train" for r in down)
    assert 70 < kept < 130 and all(r["first_rule"] == "sample" for r in down if r["split"] == "none")
    up = Counter(r["copies"] for r in rows if r["recipe_source"] == "up")
    assert set(up) == {2, 3} and 10 < up[3] < 40
    # copies come after the shard's originals, one round at a time: never beside their original, where
    # a short document and its copy shared a training window
    written = [d["id"] for d in read_jsonl(out / "documents" / "a.jsonl.gz")]
    originals = [i for i in written if "#" not in i]
    assert written[: len(originals)] == originals
    rounds = [[i for i in written if i.endswith(f"#{c}")] for c in (1, 2)]
    assert written[len(originals) :] == rounds[0] + rounds[1]
    assert rounds[0] == [f"{i}#1" for i in originals if i.startswith("u")]
    # Same seed, same decisions, also with two worker processes.
    out2 = tmp_path / "mix2"
    (tmp_path / "r2.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["data", "mix", str(tmp_path / "r2.yaml"), "--out", str(out2), "--workers", "2"]) == 0
    assert pq.read_table(out2 / "ledger.parquet").to_pylist() == rows


def test_heldout_fraction_among_survivors(tmp_path: Path) -> None:
    docs = docs_artifact(
        tmp_path / "docs", {"a.jsonl.gz": [doc(f"d{i}", f"text {i} " * 3) for i in range(40)]}
    )
    tags = attributes_artifact(
        tmp_path / "tags",
        {"a.jsonl.gz": [(f"d{i}", {"q__bad": span("x", 1.0) if i < 20 else []}) for i in range(40)]},
    )
    _, rows = mix(
        tmp_path,
        {
            "documents": str(docs),
            "attributes": [str(tags)],
            "sources": [
                {
                    "name": "web",
                    "heldout": {"fraction": 0.25},
                    "rules": [{"attribute": "bad", "op": "exists"}],
                }
            ],
        },
    )
    held = [r for r in rows if r["split"] == "held_out"]
    assert len(held) == 5 and all(int(r["id"][1:]) >= 20 for r in held)


def test_a_held_out_count_that_takes_every_survivor_is_a_warning(tmp_path: Path, capsys) -> None:
    docs = docs_artifact(
        tmp_path / "docs", {"a.jsonl.gz": [doc(f"d{i}", f"text {i} " * 3) for i in range(8)]}
    )
    out, rows = mix(
        tmp_path, {"documents": str(docs), "sources": [{"name": "web", "heldout": {"count": 100}}]}
    )
    assert sum(r["split"] == "held_out" for r in rows) == 8 and not any(r["split"] == "train" for r in rows)
    warned = read_manifest(out)["metrics"]["suspect_rules"]
    assert (
        len(warned) == 1
        and "source web: all 8 documents that survived the rules went to the held-out" in warned[0]
    )
    assert "warning: source web: all 8" in capsys.readouterr().err


def test_recipe_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="op must be one of"):
        from_dict(Recipe, {"sources": [{"name": "a", "rules": [{"attribute": "x", "op": "~"}]}]})
    with pytest.raises(ConfigError, match="op < needs a number, got 'fifty'"):  # it never fired, silently
        from_dict(Recipe, {"rules": [{"attribute": "gopher__word_count", "op": "<", "value": "fifty"}]})
    assert from_dict(Recipe, {"rules": [{"attribute": "x", "op": "<", "value": "50"}]}).rules[0].value == 50
    with pytest.raises(ConfigError, match="unknown config key 'sources\\[0\\].wieght'|wieght"):
        from_dict(Recipe, {"sources": [{"name": "a", "wieght": 2}]})
    docs = docs_artifact(tmp_path / "docs", {"a.jsonl.gz": [doc("a", "x")]})
    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump({"documents": str(docs), "attributes": [str(docs)], "sources": [{"name": "web"}]})
    )
    assert main(["data", "mix", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()


def test_apply_edits_merges_overlaps() -> None:
    text = "0123456789"
    assert apply_edits(text, [(2, 4, "X"), (3, 6, ""), (8, 20, "Y")]) == "01" + "67" + "Y"
    assert apply_edits(text, []) == text


def test_ray_executor(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    docs = docs_artifact(
        tmp_path / "docs", {f"{s}.jsonl.gz": [doc(f"{s}{i}", f"doc {s} {i}") for i in range(5)] for s in "ab"}
    )
    out, rows = mix(tmp_path, {"documents": str(docs), "sources": [{"name": "web"}]}, "--executor", "ray")
    check_invariants(out, rows, 10)


def test_one_pass_and_two_pass_paths_agree(tmp_path: Path) -> None:
    """Without a held-out split the mix filters and writes each shard in one pass (a shard with ids
    repeated from an earlier shard is run again); it must give what the two-pass path gives."""
    meta = {"n": 2**64 - 1, "big": 2**70, "f": 1e16, "nested": [{"s": "é\u2028\x01"}, None, True]}
    shards = {
        "a.jsonl.gz": [
            doc("x", "first x"),
            {**doc("m", "métadonnées 😀\x7f"), "metadata": meta},
            doc("y", "bad y"),
        ],
        "b.jsonl.gz": [doc("x", "repeated id"), doc("z", "zed"), doc("y", "repeated and bad")],
        "c.jsonl.gz": [doc("y", "only a repeat")],
    }
    docs = docs_artifact(tmp_path / "docs", shards)
    tags = attributes_artifact(
        tmp_path / "tags",
        {
            name: [(d["id"], {"t__bad": span(d["text"], 1.0) if "bad" in d["text"] else []}) for d in ds]
            for name, ds in shards.items()
        },
    )
    source = {"name": "web", "rules": [{"attribute": "bad", "op": "exists"}]}
    results = []
    # heldout fraction 0.01 of 3 survivors rounds to no document, but takes the two-pass path
    for name, extra in (("one", {}), ("two", {"heldout": {"fraction": 0.01}})):
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump(
                {"documents": str(docs), "attributes": [str(tags)], "sources": [{**source, **extra}]}
            )
        )
        out = tmp_path / name
        assert main(["data", "mix", str(tmp_path / f"{name}.yaml"), "--out", str(out), "--workers", "2"]) == 0
        rows = pq.read_table(out / "ledger.parquet").to_pylist()
        check_invariants(out, rows, 7)
        files = {
            p.relative_to(out).as_posix(): gzip.decompress(p.read_bytes())
            for p in sorted((out / "documents").glob("*.gz"))
        }
        results.append((rows, files))
    assert results[0] == results[1]
    rows, files = results[0]
    assert sorted(files) == ["documents/a.jsonl.gz", "documents/b.jsonl.gz"]  # c's only line is a repeat
    assert [r["decision"] for r in rows if r["shard"] == "b.jsonl.gz"] == [
        "quarantined",
        "kept",
        "quarantined",
    ]
    # Output lines are exactly the stdlib's compact, non-ASCII JSON (orjson is used only where identical).
    written = files["documents/a.jsonl.gz"].decode().split("\n")[:-1]  # not splitlines: \u2028 is in a line
    assert written == [
        json.dumps(d, ensure_ascii=False, separators=(",", ":")) for d in shards["a.jsonl.gz"][:2]
    ]


def test_a_rule_on_an_attribute_no_document_has_is_reported(tmp_path: Path, capsys) -> None:
    docs = docs_artifact(tmp_path / "docs", {"a.jsonl.gz": [doc("x", "one document of prose here")]})
    text = "one document of prose here"
    tags = attributes_artifact(
        tmp_path / "tags", {"a.jsonl.gz": [("x", {"t1__gopher__word_count": span(text, 5)})]}
    )
    recipe = {
        "documents": str(docs),
        "attributes": [str(tags)],
        "rules": [
            {"attribute": "gopher__word_cont", "op": "<", "value": 3, "name": "too_short"},  # a typo
            {"attribute": "toxicity__doc", "op": ">", "value": 0.5},  # a tagger that was not run
            {"attribute": "gopher__has_lorem_ipsum", "op": "exists"},  # sparse: absent is normal
        ],
        "sources": [{"name": "web"}],
    }
    out, rows = mix(tmp_path, recipe)
    suspect = read_manifest(out)["metrics"]["suspect_rules"]
    assert len(suspect) == 2 and "did you mean 'gopher__word_count'?" in suspect[0]
    assert "no attribute of a 'toxicity' tagger" in suspect[1]
    assert capsys.readouterr().err.count("warning: recipe, rule") == 2
    assert rows[0]["decision"] == "kept"  # a warning, not a decision: the rules simply did not fire


def test_why_points_at_the_import_quarantine_for_a_record_that_never_reached_the_mix(
    tmp_path: Path, capsys
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "ok", "text": "a usable document"}\n{"id": "bad"}\n')
    docs = tmp_path / "docs"
    assert main(["data", "import", f"notes={src}", "--out", str(docs)]) == 0
    out, _ = mix(tmp_path, {"documents": str(docs), "sources": [{"name": "notes"}]})
    capsys.readouterr()
    assert main(["data", "why", "bad", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"quarantined before the mix: {src}:2, missing field: 'text'" in err


def test_why_names_the_users_own_file_and_line_of_an_imported_document(tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = tmp_path / "in" / "a.jsonl"
    first.parent.mkdir()
    first.write_text(
        '{"id": "a1", "text": "the first usable document"}\n'
        '{"id": "broken"}\n'  # quarantined: the next record starts a new run
        '{"id": "a3", "text": "the third line is a document"}\n'
        '{"id": "a4", "text": "and so is the fourth line"}\n'
    )
    table = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"id": ["r0", "r1"], "text": ["row zero of a table", "row one of a table"]}), table
    )
    docs = tmp_path / "docs"
    assert main(["data", "import", f"notes={first.parent}", f"rows={table}", "--out", str(docs)]) == 0
    linked = tmp_path / "linked.jsonl"
    linked.write_text('{"id": "k1", "text": "a linked line", "source": "kept"}\n' * 1)
    more = tmp_path / "docs2"
    assert main(["data", "import", str(linked), "--link", "--extend", str(docs), "--out", str(more)]) == 0
    out, _ = mix(
        tmp_path, {"documents": str(more), "sources": [{"name": "notes"}, {"name": "rows"}, {"name": "kept"}]}
    )
    capsys.readouterr()
    for doc_id, origin in (
        ("a1", f"{first}:1"),
        ("a4", f"{first}:4"),
        ("r1", f"{table} (row 1)"),
        ("k1", f"{linked}:1"),
    ):
        assert main(["data", "why", doc_id, str(out), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["rows"][0]
        assert row["origin"] == origin, (doc_id, row)
    assert main(["data", "why", "a3", str(out)]) == 0
    assert f"origin:       {first}:3" in capsys.readouterr().out
    # the runs stay few: one per file, plus one after the quarantined line
    entries = [json.loads(line) for line in (more / "origins.jsonl").read_text().splitlines()]
    assert sum(len(e.get("runs", [])) for e in entries) == 3 and sum("same_as" in e for e in entries) == 1
    assert main(["manifest", "verify", str(more)]) == 0
