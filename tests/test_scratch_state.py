"""Resumable scratch state is data only: a planted pickle in a work directory is never loaded.

A work directory sits beside ``--out``, so anyone who can write there can leave files for the next
run. Each test here runs a stage once with a scratch directory it keeps, then plants a pickle that
would create a file when unpickled under every name that run left (and under the old ``.pkl``
names), runs the same job again on the planted directory, and checks that nothing was unpickled,
that the run succeeded by recomputing, and that its outputs equal the clean run's.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokens_support import make_docs, make_tokenizer

from glasslm.artifacts import code_version, create_artifact
from glasslm.cli import main
from glasslm.data import decon, dedupe, mixer, tokenize
from glasslm.data.documents import write_jsonl
from glasslm.data.executors import (
    STATE_SUFFIX,
    fingerprint,
    load_array,
    load_state,
    resumable,
    save_state,
    work_dir,
)


class Payload:
    """Unpickling this creates ``path``: the evidence that a planted pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Path.touch, (self.path,)


def plant(names: list[str], scratch: Path, evidence: Path) -> None:
    """A pickle (and, for ``.npy``, a pickled object array) under each name, plus the old ``.pkl`` names."""
    data = pickle.dumps(Payload(evidence))
    for name in names:
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".npy"):  # an object array: np.load would unpickle it if allowed to
            np.save(target, np.array([Payload(evidence)], dtype=object), allow_pickle=True)
        else:
            target.write_bytes(data)
        if name.endswith(STATE_SUFFIX):  # where the pickling code looked for its state
            target.with_name(target.name.replace(STATE_SUFFIX, ".pkl")).write_bytes(data)


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def outputs(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in files(root) if name != "manifest.json"}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    shards = {}
    for s in range(2):
        shards[f"s{s}.jsonl.gz"] = [
            {
                "id": f"d{s}-{i}",
                "source": "web",
                "text": " ".join(words[(i * 3 + k * (s + 2)) % len(words)] for k in range(30))
                + f" number {s} {i}",
            }
            for i in range(12)
        ]
    shards["s1.jsonl.gz"].append({**shards["s0.jsonl.gz"][0], "id": "copy"})  # an exact duplicate
    with create_artifact(tmp_path / "docs", "documents") as w:
        for name, rows in shards.items():
            write_jsonl(w.path / "documents" / name, rows)
    return tmp_path / "docs"


# --- the state format ------------------------------------------------------------------------------


def test_state_round_trips_arrays_and_json(tmp_path: Path) -> None:
    state = {
        "ids": ["a", "b"],
        "n": 3,
        "x": 0.1,
        "nan": float("nan"),
        "nested": {"k": [1, None, True]},
        "hashes": np.arange(5, dtype=np.uint64),
        "keys": np.zeros((2, 3), np.uint64),
        "digests": np.array([b"\x01\x00", b"\x00\x02"], dtype="S2"),
    }
    save_state(tmp_path / "s.state.npz", state)
    back = load_state(tmp_path / "s.state.npz")
    assert back is not None
    assert back["ids"] == ["a", "b"] and back["n"] == 3 and back["x"] == 0.1 and np.isnan(back["nan"])
    assert back["nested"] == {"k": [1, None, True]}
    assert back["hashes"].dtype == np.uint64 and back["hashes"].tolist() == list(range(5))
    assert back["keys"].shape == (2, 3)
    assert back["digests"].tolist() == [b"\x01", b"\x00\x02"]  # numpy drops trailing zero bytes


def test_object_arrays_are_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot be stored as data"):
        save_state(tmp_path / "s.state.npz", {"x": np.array([{"a": 1}], dtype=object)})


def test_a_planted_pickle_is_never_loaded_and_the_result_is_recomputed(tmp_path: Path) -> None:
    evidence = tmp_path / "pwned"
    path = tmp_path / f"r{STATE_SUFFIX}"
    plant([path.name, "a.npy"], tmp_path, evidence)
    assert load_state(path) is None
    assert load_array(tmp_path / "a.npy") is None
    assert resumable(path, lambda: {"value": 7}) == {"value": 7}
    assert resumable(path, lambda: {"value": 8}) == {"value": 7}  # now resumed, from data
    assert not evidence.exists()


def test_fingerprint_includes_the_code_version() -> None:
    parts = ("dedupe", {"ngram": 5}, "abc123")
    assert fingerprint(*parts) == fingerprint(*parts, code=code_version())
    here = code_version()
    for change in ({"version": "0.0.0-other"}, {"git": "0" * 40}, {"dirty": not here["dirty"]}):
        assert fingerprint(*parts, code={**here, **change}) != fingerprint(*parts)
    assert fingerprint(*parts) != fingerprint("dedupe", {"ngram": 6}, "abc123")


# --- every stage that resumes ----------------------------------------------------------------------


def test_dedupe_ignores_planted_scratch(docs: Path, tmp_path: Path) -> None:
    job = dedupe.DedupeJob(workers=1, executor="local")
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    clean.mkdir()
    planted.mkdir()
    dedupe.run(docs, clean, job, scratch=work_dir(tmp_path / "a", "x"))
    evidence = tmp_path / "pwned"
    plant(files(tmp_path / ".a.work-x"), work_dir(tmp_path / "b", "x"), evidence)
    metrics = dedupe.run(docs, planted, job, scratch=tmp_path / ".b.work-x")
    assert not evidence.exists()
    assert metrics["exact_duplicate_docs"] == 1
    assert outputs(planted) == outputs(clean)


def test_decon_ignores_planted_scratch(docs: Path, tmp_path: Path) -> None:
    task = tmp_path / "task.jsonl"
    task.write_text('{"q": "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi"}\n')
    job = decon.DeconJob(workers=1, executor="local")
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    clean.mkdir()
    planted.mkdir()
    decon.run(docs, [task], clean, job, scratch=work_dir(tmp_path / "a", "x"))
    evidence = tmp_path / "pwned"
    plant(files(tmp_path / ".a.work-x"), work_dir(tmp_path / "b", "x"), evidence)
    decon.run(docs, [task], planted, job, scratch=tmp_path / ".b.work-x")
    assert not evidence.exists()
    assert outputs(planted) == outputs(clean)


@pytest.mark.parametrize("heldout", [0, 3], ids=["one_pass", "two_pass"])
def test_mix_ignores_planted_scratch(docs: Path, tmp_path: Path, heldout: int) -> None:
    recipe = mixer.Recipe(
        seed=1,
        workers=1,
        executor="local",
        sources=[mixer.SourceRecipe(name="web", heldout=mixer.HeldOut(count=heldout))],
    )
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    clean.mkdir()
    planted.mkdir()
    mixer.run(recipe, docs, [], clean, work_dir(tmp_path / "a", "x"))
    left = [n for n in files(tmp_path / ".a.work-x") if not n.startswith("out/")]
    assert any(n.endswith(STATE_SUFFIX) for n in left)
    assert ("heldout-ngrams.npy" in left) == bool(heldout)
    evidence = tmp_path / "pwned"
    plant(left, work_dir(tmp_path / "b", "x"), evidence)
    mixer.run(recipe, docs, [], planted, tmp_path / ".b.work-x")
    assert not evidence.exists()
    assert outputs(planted) == outputs(clean)


def test_tokenize_ignores_planted_scratch(tmp_path: Path) -> None:
    source = make_docs(tmp_path / "mix", shards=2, per_shard=20, heldout=4)
    tok = make_tokenizer(source, tmp_path / "tok", vocab=300)
    config = tokenize.TokenizeConfig(workers=1, executor="local", progress=False)
    clean = tmp_path / "clean"
    tokenize.tokenize(source, tok, clean, config)
    held, train, work = tokenize.plan(source, tok, tmp_path / "planted", config)
    names = [
        f"task-{t.index:05d}.{'heldout' if t.heldout else 'train'}{STATE_SUFFIX}" for t in [*held, *train]
    ]
    evidence = tmp_path / "pwned"
    plant(names, work, evidence)
    tokenize.tokenize(source, tok, tmp_path / "planted", config)
    assert not evidence.exists()
    assert outputs(tmp_path / "planted") == outputs(clean)


def test_tag_ignores_planted_scratch(tmp_path: Path) -> None:
    from test_tag_cli import Boom, make_documents  # the module pytest imported (not a second copy)

    docs = make_documents(tmp_path / "docs")
    out = tmp_path / "tagged"
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
    Boom.armed = True
    with pytest.raises(RuntimeError, match="boom"):  # interrupted: shard a done, its marker in the work dir
        main(args)
    [work] = tmp_path.glob(".tagged.work-*")
    evidence = tmp_path / "pwned"
    plant(
        [*files(work / "done"), "a-0000.jsonl.gz" + STATE_SUFFIX, "b-0000.jsonl.gz" + STATE_SUFFIX],
        work / "done",
        evidence,
    )
    Boom.armed = False
    assert main(args) == 0
    assert not evidence.exists()
    fresh = tmp_path / "fresh"
    assert main([*args[:-3], "--out", str(fresh)]) == 0
    for name in ("a-0000.jsonl.gz", "b-0000.jsonl.gz", "quarantine.jsonl"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
