"""``glasslm data tag``: Dolma layout, quarantine, manifest, run-dir input, resume, executors agree."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from glasslm.artifacts import create_artifact, manifest_hash
from glasslm.cli import main
from glasslm.data.documents import read_jsonl, write_jsonl
from glasslm.data.taggers import Tagger, register

GOOD = [
    {"id": "a1", "text": "Mail me at jane@example.com today.\n", "source": "web"},
    {"id": "a2", "text": "The cat sat on the mat.", "source": "web"},
]


def make_documents(root: Path) -> Path:
    """A documents artifact with two shards; shard b has bad lines of four kinds."""
    with create_artifact(root, "documents") as w:
        write_jsonl(w.path / "documents" / "a-0000.jsonl.gz", GOOD)
        bad = (
            b"\n".join(
                [
                    json.dumps(
                        {"id": "b1", "text": "First line of b.\nSecond line, BOOM here.", "source": "docs"}
                    ).encode(),
                    b"{not json",
                    json.dumps({"id": "b2", "text": "   "}).encode(),
                    json.dumps({"id": "b1", "text": "duplicate id"}).encode(),
                    b"\xff\xfe invalid utf-8",
                    json.dumps({"id": "b3", "text": "Last good document.", "source": "docs"}).encode(),
                ]
            )
            + b"\n"
        )
        (w.path / "documents" / "b-0000.jsonl.gz").write_bytes(gzip.compress(bad, mtime=0))
    return root


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return make_documents(tmp_path / "run" / "corpus")


def test_tag_writes_dolma_layout_quarantine_and_manifest(docs, tmp_path, capsys):
    out = tmp_path / "run" / "attributes" / "t1"
    # DOCS given as the run directory: the documents artifact is found in corpus/
    rc = main(
        [
            "data",
            "tag",
            str(tmp_path / "run"),
            "--taggers",
            "char_length,pii",
            "--experiment",
            "t1",
            "--workers",
            "1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["docs"] == 4 and report["quarantined"] == 4
    assert report["quarantined_by_reason"] == {
        "duplicate id": 1,
        "empty field": 1,
        "invalid UTF-8": 1,
        "malformed JSON": 1,
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "a-0000.jsonl.gz",
        "b-0000.jsonl.gz",
        "manifest.json",
        "quarantine.jsonl",
    ]
    a = list(read_jsonl(out / "a-0000.jsonl.gz"))
    assert [r["id"] for r in a] == ["a1", "a2"]
    assert a[0]["attributes"]["t1__char_length__length"] == [[0, 35, 35.0]]
    assert a[0]["attributes"]["t1__pii__EMAIL_ADDRESS"] == [[11, 27, 1.0]]
    assert set(a[1]["attributes"]) == {
        "t1__char_length__length",
        "t1__pii__doc",
        "t1__pii__email_count",
        "t1__pii__phone_count",
        "t1__pii__ip_count",
    }
    assert [r["id"] for r in read_jsonl(out / "b-0000.jsonl.gz")] == ["b1", "b3"]
    quarantined = list(read_jsonl(out / "quarantine.jsonl"))
    assert [(Path(q["file"]).name, q["line"]) for q in quarantined] == [
        ("b-0000.jsonl.gz", 2),
        ("b-0000.jsonl.gz", 3),
        ("b-0000.jsonl.gz", 4),
        ("b-0000.jsonl.gz", 5),
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "attributes"
    [ref] = manifest["inputs"]
    assert (ref["kind"], ref["sha256"]) == ("documents", manifest_hash(docs))
    assert (out / ref["path"]).resolve() == docs.resolve()  # absolute, or relative to the artifact
    assert [t["name"] for t in manifest["taggers"]] == ["char_length", "pii"]
    assert manifest["config"]["tag"]["experiment"] == "t1"
    assert manifest["metrics"]["docs_per_source"] == {"docs": 2, "web": 2}
    assert not list(out.parent.glob(".t1.work-*"))  # the work directory is removed once published


def test_unknown_tagger_and_bad_experiment_are_config_errors(docs, tmp_path, capsys):
    assert main(["data", "tag", str(docs), "--taggers", "gopher,nope", "--out", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["data", "tag", str(docs), "--experiment", "a__b", "--out", str(tmp_path / "x")]) == 2


@register("test_boom")
class Boom(Tagger):
    """Fails on texts containing BOOM while ``armed``: a crash in the middle of a run."""

    armed = True
    calls: list[str] = []

    def tag(self, text):
        Boom.calls.append(text)
        if Boom.armed and "BOOM" in text:
            raise RuntimeError("boom")
        return {"len": [[0, len(text), float(len(text))]]}


def test_an_interrupted_run_resumes_without_redoing_finished_shards(docs, tmp_path, capsys):
    out = tmp_path / "resumed"
    args = [
        "data",
        "tag",
        str(docs),
        "--taggers",
        "test_boom",
        "--experiment",
        "r",
        "--executor",
        "local",
        "--out",
        str(out),
        "--json",
    ]
    Boom.armed, Boom.calls[:] = True, []
    with pytest.raises(RuntimeError, match="boom"):
        main(args)
    assert not out.exists()  # nothing published under the final name
    assert len(list(tmp_path.glob(".resumed.work-*/done/*.state.npz"))) == 1  # shard a finished

    Boom.armed, Boom.calls[:] = False, []
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards_resumed"] == 1 and report["docs"] == 4
    assert all("BOOM" in t or "Last good" in t for t in Boom.calls)  # only shard b was tagged again

    fresh = tmp_path / "fresh"
    assert main([*args[:-3], "--out", str(fresh)]) == 0
    for name in ("a-0000.jsonl.gz", "b-0000.jsonl.gz", "quarantine.jsonl"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()


def test_process_pool_output_is_byte_identical_to_in_process(docs, tmp_path):
    outs = {}
    for executor in ("local", "process"):
        outs[executor] = tmp_path / executor
        assert (
            main(
                [
                    "data",
                    "tag",
                    str(docs),
                    "--taggers",
                    "gopher,c4,stats,code",
                    "--experiment",
                    "x",
                    "--executor",
                    executor,
                    "--workers",
                    "2",
                    "--out",
                    str(outs[executor]),
                ]
            )
            == 0
        )
    for name in ("a-0000.jsonl.gz", "b-0000.jsonl.gz", "quarantine.jsonl"):
        assert (outs["local"] / name).read_bytes() == (outs["process"] / name).read_bytes()
