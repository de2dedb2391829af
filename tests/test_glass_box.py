"""Glass-box integrity (#21): --out never loses a user's files, verify sees links and moved runs,
and `glasslm reproduce` gives identical outputs for every artifact kind a pipeline makes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pipeline_support import micro_pipeline

from glasslm import artifacts
from glasslm.cli import main

TINY = [
    "--model.d_model=32",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--model.n_kv_heads=1",
    "--model.mlp_hidden=64",
    "--model.vocab_size=128",
    "--model.max_seq_len=64",
]


def _init(out: Path, seed: int = 0) -> int:
    return main(["model", "init", "--preset", "tiny", *TINY, "--seed", str(seed), "--out", str(out)])


# ---------------------------------------------------------------- the --out rule


def test_out_never_replaces_a_directory_glasslm_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "code.py").write_text("precious")
    assert _init(mine) == 2
    assert (
        "is not a glasslm artifact; refusing to replace it (nothing was deleted)" in capsys.readouterr().err
    )
    assert (mine / "src" / "code.py").read_text() == "precious"
    # the refusal comes before the work, and the current directory is protected the same way
    cwd = Path.cwd()
    os.chdir(mine)
    try:
        assert _init(Path(".")) == 2
    finally:
        os.chdir(cwd)
    assert (mine / "src" / "code.py").read_text() == "precious"
    with pytest.raises(SystemExit):  # --out "" (an unset shell variable) is an argparse error
        main(["model", "init", "--preset", "tiny", "--out", ""])
    assert "--out is empty" in capsys.readouterr().err


def test_out_replaces_only_an_artifact_of_its_kind_and_never_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    assert _init(ckpt, seed=1) == 0 and _init(ckpt, seed=2) == 0  # re-running a verb replaces its artifact
    assert artifacts.read_manifest(ckpt)["config"]["seed"] == 2
    # an artifact holding a file its manifest does not list is not replaced without --force
    (ckpt / "notes.txt").write_text("mine")
    assert _init(ckpt) == 2 and (ckpt / "notes.txt").is_file()
    (ckpt / "notes.txt").unlink()
    hf = tmp_path / "hf"
    assert main(["convert", "to-hf", str(ckpt), "--out", str(hf)]) == 0
    capsys.readouterr()
    assert _init(hf) == 2  # another kind: refused...
    assert "holds a 'hf_model' artifact, not a 'checkpoint' one" in capsys.readouterr().err
    assert (
        main(["model", "init", "--preset", "tiny", *TINY, "--out", str(hf), "--force"]) == 0
    )  # ...unless --force
    assert artifacts.read_manifest(hf)["kind"] == "checkpoint"
    assert main(["convert", "to-hf", str(hf), "--out", str(hf), "--force"]) == 2  # never the input itself
    assert "would replace the input" in capsys.readouterr().err
    assert main(["convert", "to-hf", str(hf), "--out", str(hf / "inside")]) == 2  # nor inside it
    assert "inside the input artifact" in capsys.readouterr().err
    assert (hf / "model.safetensors").is_file()


def test_a_data_stage_refuses_its_out_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(3)))
    docs, other = tmp_path / "docs", tmp_path / "other"
    for out in (docs, other):
        assert main(["data", "import", str(src), "--out", str(out)]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    # another kind (documents, not attributes), and the input itself (with or without --force): all
    # refused up front, so no tagging happens and no work directory is left beside --out
    assert main(["data", "tag", str(docs), "--taggers", "stats", "--out", str(other)]) == 2
    assert "holds a 'documents' artifact, not a 'attributes' one" in capsys.readouterr().err
    for force in ([], ["--force"]):
        assert main(["data", "tag", str(docs), "--taggers", "stats", "--out", str(docs), *force]) == 2
        assert "would replace the input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_verify_of_a_directory_that_is_no_artifact_points_at_the_ones_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _init(tmp_path / "run" / "ckpt") == 0
    capsys.readouterr()
    assert main(["manifest", "verify", str(tmp_path / "run")]) == 2
    assert "not an artifact (no manifest.json); artifacts in it: ckpt" in capsys.readouterr().err


def test_unwritable_out_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _init(blocker / "below") in (1, 2)  # a path under a regular file cannot be created
    err = capsys.readouterr().err
    assert err.startswith("glasslm: error:") and "Traceback" not in err


# ---------------------------------------------------------------- verify: links, special files, moved runs


def test_links_and_special_files_are_changes_and_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "ckpt"
    assert _init(ckpt) == 0
    (ckpt / "tokenizer.json").symlink_to("/etc/passwd")
    capsys.readouterr()
    assert main(["manifest", "verify", str(ckpt), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["artifacts"][0]
    assert report["irregular"] == ["tokenizer.json"] and not report["ok"]
    # a verb reading the artifact refuses it rather than following the link
    assert main(["convert", "to-hf", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    # so does every verb that only wants the artifact's tokenizer
    assert main(["tokenizer", "encode", str(ckpt), "x"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    (ckpt / "tokenizer.json").unlink()
    os.mkfifo(ckpt / "pipe")
    assert main(["manifest", "verify", str(ckpt)]) == 1
    assert "irregular: pipe" in capsys.readouterr().out


def test_a_copied_run_verifies_its_own_copy_and_missing_inputs_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert _init(run / "ckpt") == 0
    assert main(["convert", "to-hf", str(run / "ckpt"), "--out", str(run / "hf")]) == 0
    capsys.readouterr()
    assert json.loads((run / "hf" / "manifest.json").read_text())["inputs"][0]["path"] == "../ckpt"
    copy = tmp_path / "downloaded"
    shutil.copytree(run, copy)
    assert main(["manifest", "verify", str(copy / "hf"), "--recursive"]) == 0
    capsys.readouterr()
    # tampering with the copy is found in the copy (the original is fine and is not what is checked)
    with open(copy / "ckpt" / "config.yaml", "a") as f:
        f.write("# edited\n")
    capsys.readouterr()
    assert main(["manifest", "verify", str(copy / "hf"), "--recursive", "--json"]) == 1
    reports = json.loads(capsys.readouterr().out)["artifacts"]
    assert [r["path"] for r in reports if not r["ok"]] == [str(copy / "ckpt")]
    assert main(["manifest", "verify", str(run / "hf"), "--recursive"]) == 0
    # a missing input is an error, never OK; --no-inputs checks the artifact's own files only
    shutil.rmtree(copy / "ckpt")
    capsys.readouterr()
    assert main(["manifest", "verify", str(copy / "hf")]) == 1
    assert "inputs_missing" in capsys.readouterr().out
    assert main(["manifest", "verify", str(copy / "hf"), "--recursive"]) == 1
    assert "MISSING" in capsys.readouterr().out
    assert main(["manifest", "verify", str(copy / "hf"), "--no-inputs"]) == 0


# ---------------------------------------------------------------- reproduce every artifact kind


def test_reproduce_leaves_verb_words_alone_when_the_cwd_has_such_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("model", "init", "convert", "to-hf", "tiny"):  # directories named like the command's words
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["model", "init", "--preset", "tiny", *TINY, "--out", "ckpt"]) == 0
    assert main(["convert", "to-hf", "ckpt", "hf"]) == 0
    capsys.readouterr()
    for artifact in ("ckpt", "hf"):
        assert main(["reproduce", artifact, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["identical"] and data["rerun"][1:3] in (["model", "init"], ["convert", "to-hf"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("glassbox")
    return micro_pipeline(
        base,
        "{suite: [perplexity], ppl_max_docs: 3}",
        code_bytes=120_000,
        web_bytes=150_000,
        checkpoint_every=3,
        log_every=1,
    )[1]


EVERY_ARTIFACT = [
    "corpus",
    "attributes/tags",
    "attributes/dedupe",
    "attributes/decon",
    "mix",
    "tokenizer",
    "tokens",
    "train",
    "train/checkpoints/step000003",
    "eval",
    "adapt/data",
    "adapt/sft",
    "adapt/dpo",
    "adapt/rl",
    "hf",
    "trace_index",
    "report",
]


@pytest.mark.parametrize("rel", EVERY_ARTIFACT)
def test_reproduce_gives_identical_outputs(run: Path, rel: str, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    code = main(["reproduce", str(run / rel), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["identical"], (data["problems"], data["differing"], data["output"][-2000:])
    statuses = {f["status"] for f in data["files"]}
    assert statuses <= {"identical", "same values"}
    # "same values" is only for JSON whose measured fields (times, speeds) differ: the rest is byte-equal
    same_values = [f["path"] for f in data["files"] if f["status"] == "same values"]
    assert all(p.endswith((".json", ".jsonl", ".yaml")) for p in same_values)
    if rel in ("corpus", "mix", "tokenizer", "tokens", "hf", "trace_index", "report"):
        assert statuses == {"identical"}, same_values


def test_reproduce_a_moved_run_uses_the_moved_inputs(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    capsys.readouterr()
    assert main(["reproduce", str(moved / "tokens"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["identical"]
    assert str(moved / "mix") in data["rerun"] and str(run / "mix") not in data["rerun"]
    # the moved copy's input is what is checked: change it and reproduce refuses before running
    with open(moved / "mix" / "quarantine.jsonl", "a") as f:
        f.write("\n")
    assert main(["reproduce", str(moved / "tokens"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["rerun"] == [] and any(str(moved / "mix") in p for p in data["problems"])


@pytest.mark.parametrize("rel", ["train", "eval", "adapt/sft", "trace_index", "report"])
def test_reproduce_of_a_copy_run_from_elsewhere_is_identical(
    run: Path, rel: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy's own inputs are read (the original's absolute paths in its configs are re-pointed), and
    what an output says of its paths (an eval title, the report's labels) reads as recorded."""
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(["reproduce", str(moved / rel), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["identical"], (data["problems"], data["differing"], data["output"][-2000:])
    assert not any(str(run) in word for word in data["rerun"]), data["rerun"]


# ---------------------------------------------------------------- energy, report, config edges


def test_energy_of_a_pipeline_run_counts_every_stage(run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["energy", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    state = json.loads((run / "pipeline.json").read_text())
    assert [s["stage"] for s in data["stages"]] == list(state)  # data stages too, not only pretraining
    assert data["kwh"] == pytest.approx(sum(s["kwh"] for s in data["stages"])) and data["kwh"] > 0
    # a stage's whole time counts, its evaluations outside the training loop included
    for s in data["stages"]:
        assert s["wall_s"] >= state[s["stage"]]["seconds"] - 1e-6, s
    assert {s["method"] for s in data["stages"] if s["stage"] in ("corpus", "tag", "mix")} == {"tdp-estimate"}
    assert main(["energy", str(run / "train"), "--json"]) == 0  # one training run: that run only
    assert "stages" not in json.loads(capsys.readouterr().out)


def test_report_counts_skipped_steps_between_logged_rows(tmp_path: Path) -> None:
    from glasslm.report.base import Run
    from glasslm.report.model_sections import training_section

    (tmp_path / "train").mkdir()
    rows = [
        {
            "step": s,
            "tokens": 64 * s,
            "loss": 5.0 - s / 10,
            "lr": 1e-3,
            "tokens_per_s": 100.0,
            "skipped": False,
            "skipped_total": 1 if s > 3 else 0,
        }
        for s in (2, 4, 6)
    ]  # step 3 skipped, unlogged
    (tmp_path / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    section = training_section([Run(tmp_path, "r")])
    summary = next(table for title, table in section.tables if title.startswith("Last logged step"))
    assert summary[0]["skipped_steps"] == 1


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_a_run_of_no_steps_is_a_config_error(
    tmp_path: Path, steps: str, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "t"),
                f"--trainer.max_steps={steps}",
                "--data.tokens=" + str(tmp_path),
            ]
        )
        == 2
    )
    assert f"trainer.max_steps must be >= 1, got {steps}" in capsys.readouterr().err


def test_energy_names_the_training_runs_of_a_run_made_verb_by_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "demo" / "adapt" / "sft").mkdir(parents=True)
    (tmp_path / "demo" / "adapt" / "sft" / "metrics.jsonl").write_text("")
    assert main(["energy", str(tmp_path / "demo")]) == 2
    assert "it holds the training runs adapt/sft" in capsys.readouterr().err
    assert main(["energy", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_a_run_continued_in_place_may_be_given_its_own_config(tmp_path: Path) -> None:
    import argparse

    from glasslm.cli import check_out_early

    run = tmp_path / "train"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("trainer: {max_steps: 2}\n")
    args = argparse.Namespace(
        stage="train", out=run, config_pos=run / "config.yaml", config=None, resume="auto", overrides=[]
    )
    check_out_early(args)  # not "would replace the input": a resumed run keeps its config.yaml
    args.overrides = [f"--data.tokens={run / 'tokens'}"]
    with pytest.raises(artifacts.ArtifactError, match="would replace the input"):
        check_out_early(args)  # but its tokens cannot live inside it


def test_one_writer_per_out_and_a_killed_writers_temp_directory_is_swept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two runs with one --out deleted each other's work (or both trained); now the second is refused,
    naming the first. A `.NAME.tmp-PID` a killed process left is removed by the next writer."""
    out = tmp_path / "model"
    with artifacts.writing(out):  # as another glasslm process writing it would hold it
        assert _init(out) == 2
        assert f"another glasslm process (pid {os.getpid()}) is writing it" in capsys.readouterr().err
    assert not (tmp_path / ".model.lock").exists() and not out.exists()
    left = tmp_path / ".model.tmp-4194304"  # above Linux's pid_max: a process that no longer runs
    (left / "sub").mkdir(parents=True)
    assert _init(out) == 0
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
