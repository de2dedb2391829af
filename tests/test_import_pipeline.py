"""`glasslm pipeline` on your own data: corpus.inputs (a folder of JSONL, a Parquet file, a WARC built
here) → import → tag → dedupe → decon → mix → tokenizer → tokenize, every later stage unchanged."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
from test_import import page, write_warc

from glasslm.cli import main

WORDS = [
    "river",
    "stone",
    "garden",
    "window",
    "letter",
    "morning",
    "market",
    "bridge",
    "lantern",
    "harbor",
    "meadow",
    "candle",
    "orchard",
    "village",
    "story",
    "bread",
    "evening",
    "winter",
    "summer",
    "forest",
    "mountain",
    "valley",
    "teacher",
    "student",
    "music",
    "paper",
]


def prose(rng: random.Random, n: int = 120) -> str:
    sentences = []
    for _ in range(n // 12):
        words = [rng.choice(WORDS) for _ in range(12)]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


RECIPE = """
documents: ""
attributes: []
seed: 0
sources:
""" + "".join(
    f"""
  - name: {name}
    match: [{name}]
    weight: 1.0
    heldout: {{count: 2}}
    dedupe: true
    decon: true
"""
    for name in ("mine", "tables", "web", "notes", "hf")
)


def test_pipeline_imports_corpus_inputs_and_runs_every_data_stage(tmp_path):
    rng = random.Random(0)
    jdir = tmp_path / "jsonl"
    jdir.mkdir()
    for shard in range(2):
        (jdir / f"{shard}.jsonl").write_text(
            "".join(json.dumps({"id": f"m{shard}-{i}", "text": prose(rng)}) + "\n" for i in range(15))
        )
    pq.write_table(
        pa.table({"text": [prose(rng) for _ in range(15)], "n": list(range(15))}), tmp_path / "t.parquet"
    )
    write_warc(
        tmp_path / "crawl.warc.gz",
        [(f"http://example.org/{i}", "text/html", page(f"P{i}", prose(rng)), 200) for i in range(15)]
        + [("http://example.org/x.png", "image/png", b"PNG", 200)],
    )
    notes = tmp_path / "notes"  # a text/Markdown tree: one document per file
    (notes / "sub").mkdir(parents=True)
    for i in range(8):
        (notes / ("sub" if i % 2 else ".") / f"n{i}.md").write_text(f"# Note {i}\n\n{prose(rng)}\n")
    (notes / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, ...\n")
    hf = tmp_path / "ds"  # the layout datasets.Dataset.save_to_disk writes
    hf.mkdir()
    table = pa.table({"text": [prose(rng) for _ in range(8)], "label": list(range(8))})
    with (
        pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (hf / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (hf / "dataset_info.json").write_text("{}")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"question": "An unrelated evaluation question about chemistry and atoms."}) + "\n"
    )
    config = tmp_path / "run.yaml"
    config.write_text(f"""
stages: [corpus, tag, dedupe, decon, mix, tokenizer, tokenize]
corpus:
  inputs:
    - {{path: {jdir}, source: mine}}
    - {{path: {tmp_path / "t.parquet"}, source: tables}}
    - {{path: {tmp_path / "crawl.warc.gz"}, source: web, format: warc}}
    - {{path: {notes}, source: notes, format: text}}
    - {{path: {hf}, source: hf}}
tag: {{taggers: [langid, gopher, stats]}}
decon: {{tasks: [{tasks}]}}
mix: {{recipe: {tmp_path / "recipe.yaml"}}}
tokenizer: {{vocab_size: 300}}
""")
    run = tmp_path / "run"
    assert main(["pipeline", "--config", str(config), "--out", str(run)]) == 0
    corpus = json.loads((run / "corpus" / "manifest.json").read_text())
    assert corpus["command"][1:3] == ["data", "import"]
    m = corpus["metrics"]
    assert {k: v["docs"] for k, v in m["domains"].items()} == {
        "mine": 30,
        "tables": 15,
        "web": 15,
        "notes": 9,
        "hf": 8,
    }
    assert m["quarantined"] == 1 and m["records"] == 78
    assert (
        len(corpus["sources"]) == 14
    )  # two JSONL shards, the Parquet file, the WARC, 9 notes files, the Arrow file
    # The ledger (mix) holds one row per imported line, and the held-out split is per imported domain.
    ledger = pq.read_table(run / "mix" / "ledger.parquet").to_pylist()
    assert len(ledger) == 77
    assert {r["source"] for r in ledger if r["split"] == "held_out"} == {
        "mine",
        "tables",
        "web",
        "notes",
        "hf",
    }
    tokens = json.loads((run / "tokens" / "manifest.json").read_text())
    assert {"heldout/mine", "heldout/tables", "heldout/web", "heldout/notes", "heldout/hf", "train"} <= set(
        tokens["metrics"]["splits"]
    )
