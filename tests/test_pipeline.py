"""`glasslm pipeline`: every stage in order, skipped when up to date, re-run only where changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_support import micro_pipeline

from glasslm import artifacts
from glasslm.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return micro_pipeline(
        tmp_path_factory.mktemp("pipeline"),
        "{suite: [perplexity], ppl_max_docs: 3}",
        code_bytes=150_000,
        web_bytes=200_000,
        checkpoint_every=3,
        log_every=3,
    )


def _stage_seconds(out: Path) -> dict[str, float]:
    return {k: v["seconds"] for k, v in json.loads((out / "pipeline.json").read_text()).items()}


def test_every_stage_writes_an_artifact(run: tuple[Path, Path]) -> None:
    _, out = run
    for rel in [
        "corpus",
        "attributes/tags",
        "attributes/dedupe",
        "attributes/decon",
        "mix",
        "tokenizer",
        "tokens",
        "train",
        "eval",
        "adapt/data",
        "adapt/sft",
        "adapt/dpo",
        "adapt/rl",
        "hf",
        "trace_index",
        "report",
    ]:
        assert (out / rel / "manifest.json").is_file(), rel
    # the exported model is the most adapted one: RL's
    ref = json.loads((out / "hf" / "manifest.json").read_text())["inputs"][0]
    assert str(artifacts.input_location(out / "hf", ref)).startswith(str((out / "adapt/rl").resolve()))
    state = json.loads((out / "pipeline.json").read_text())
    assert all(v["status"] == "done" for v in state.values())
    assert (out / "report" / "index.html").is_file()
    # the final model's lineage reaches back to the raw corpus
    assert main(["manifest", "verify", str(out / "hf"), "--recursive"]) == 0


def test_rerun_skips_and_a_config_change_reruns_only_what_depends_on_it(
    run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, out = run
    before = _stage_seconds(out)
    capsys.readouterr()
    assert main(["pipeline", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(0 stages ran)" in printed and _stage_seconds(out) == before
    manifest = (out / "tokens" / "manifest.json").read_bytes()
    assert (
        main(
            [
                "pipeline",
                "--config",
                str(config),
                "--out",
                str(out),
                "--train.trainer.max_steps=4",
                "--sft.trainer.max_steps=2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for stage in ("corpus", "tag", "mix", "tokenizer", "tokenize", "adapt_data"):
        assert f"[pipeline] {stage:<10} up to date" in printed
    for stage in ("train", "eval", "sft", "dpo", "rl", "hf", "report"):
        assert f"[pipeline] {stage:<10} done" in printed
    assert (out / "tokens" / "manifest.json").read_bytes() == manifest
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    # The report reads the whole run: a change to the last adaptation stage alone makes it stale too.
    assert (
        main(
            [
                "pipeline",
                "--config",
                str(config),
                "--out",
                str(out),
                "--train.trainer.max_steps=4",
                "--sft.trainer.max_steps=2",
                "--dpo.trainer.max_steps=1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for stage in ("train", "eval", "sft", "trace"):
        assert f"[pipeline] {stage:<10} up to date" in printed
    for stage in ("dpo", "rl", "hf", "report"):
        assert f"[pipeline] {stage:<10} done" in printed


def test_stage_config_typos_fail_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  trainer: {max_step: 3}\n")
    assert main(["pipeline", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "section 'train': unknown config key 'trainer.max_step' (did you mean 'trainer.max_steps'?)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run" / "corpus").exists()
    config.write_text("stages: [corpus, tran]\n")
    assert main(["pipeline", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    capsys.readouterr()
    assert main(["pipeline", "--out", str(tmp_path / "run"), "--mix.recip=x.yaml"]) == 2
    assert "section 'mix': unknown key 'recip'; did you mean 'recipe'?" in capsys.readouterr().err


def test_executor_applies_to_every_data_stage(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "stages: [corpus, tag]\ncorpus: {max_bytes_code: 20000, max_bytes_docs: 20000, max_bytes_web: 20000}\n"
        "tag: {taggers: [stats]}\n"
    )
    out = tmp_path / "run"
    assert main(["pipeline", "--config", str(config), "--out", str(out), "--executor", "local"]) == 0
    assert artifacts.read_manifest(out / "attributes" / "tags")["metrics"]["executor"] == "local"


def test_preflight_names_every_missing_file_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg" / "run.yaml"
    config.parent.mkdir()
    config.write_text("mix: {recipe: no-such-recipe.yaml}\ndecon: {tasks: [gone.jsonl]}\n")
    assert main(["pipeline", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    # relative paths in a run config are relative to the config file, and both problems are named at once
    assert f"mix.recipe: {tmp_path / 'cfg' / 'no-such-recipe.yaml'} does not exist" in err
    assert f"decon.tasks: {tmp_path / 'cfg' / 'gone.jsonl'} does not exist" in err
    assert not (tmp_path / "run").exists()


def test_pipeline_refuses_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    config = tmp_path / "run.yaml"
    config.write_text(
        "stages: [corpus]\ncorpus: {max_bytes_code: 1000, max_bytes_docs: 1000, max_bytes_web: 1000}\n"
    )
    assert main(["pipeline", "--config", str(config), "--out", str(home)]) == 2
    assert "is not a pipeline run" in capsys.readouterr().err
    assert [p.name for p in home.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))
)
def test_every_shipped_run_config_passes_the_section_checks(name: str) -> None:
    from glasslm import config as cfg
    from glasslm.pipeline.run import PipelineConfig, check_sections

    config = cfg.load(PipelineConfig, Path(__file__).parents[1] / "configs" / name)
    assert config.train, f"{name}: no train section"
    check_sections(config)


@pytest.mark.parametrize("stage", ["sft", "dpo", "rl"])
def test_every_shipped_adaptation_config_loads_and_validates(stage: str) -> None:
    from glasslm import config as cfg
    from glasslm.adapt.dpo_trainer import DPOConfig
    from glasslm.adapt.rl_trainer import RLConfig
    from glasslm.adapt.sft_trainer import SFTConfig

    kind = {"sft": SFTConfig, "dpo": DPOConfig, "rl": RLConfig}[stage]
    cfg.load(kind, Path(__file__).parents[1] / "configs" / "adapt" / f"{stage}.yaml").validate()
