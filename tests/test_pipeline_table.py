"""The stage table is the one source of the pipeline: its order, the run config's sections, each
section's checks, the paths resolved against the config file, preflight, argv and fingerprints."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from glasslm import config as cfg
from glasslm.cli import main
from glasslm.config import ConfigError
from glasslm.pipeline import run as pipeline
from glasslm.pipeline.stage import FileKey, Stage
from glasslm.pipeline.stages import RUN_SECTIONS, STAGES

SRC = Path(__file__).resolve().parents[1] / "src" / "glasslm"


@dataclass
class HelloConfig:
    """The config of the test-defined stage below."""

    preset: str = "tiny"
    notes: str | None = None


# A stage this test adds: a real verb (a randomly initialised model), a config class, a file key.
HELLO = Stage(
    "hello",
    "hello",
    (),
    lambda c: ["model", "init", "--preset", c.section.get("preset", "tiny"), "--out", c.path("hello")],
    config=f"{__name__}:HelloConfig",
    files=(FileKey("notes", "a notes file", fingerprint="stat"),),
)


def test_every_section_and_the_order_come_from_the_table() -> None:
    names = [s.name for s in STAGES]
    fields = [f.name for f in dataclasses.fields(pipeline.PipelineConfig)]
    assert fields == ["stages", *names] and list(RUN_SECTIONS) == fields
    assert len(set(names)) == len(names)
    runnable = {"decon": {"tasks": [__file__]}, "eval": {"suite": ["perplexity"]}}
    plan = pipeline.plan(cfg.from_dict(pipeline.PipelineConfig, runnable))
    assert [s.stage.name for s in plan] == names
    # the core knows no stage: no run-section list, no stage name as a string in config.py
    assert not hasattr(cfg, "RUN_SECTIONS")
    source = (SRC / "config.py").read_text()
    assert not [n for n in names if re.search(rf"[\"']{n}[\"']", source)]
    # every config class named by the table exists, and every input is an earlier stage's output
    outs: set[str] = set()
    for stage in STAGES:
        assert stage.config is None or dataclasses.is_dataclass(stage.config_class())
        for rel in stage.input_paths(names, {s.name: s for s in STAGES}):
            assert rel in outs, (stage.name, rel)
        outs.add(stage.out)


def test_a_stage_added_to_the_table_appears_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stages = [*STAGES, HELLO]
    cls = pipeline.config_class(stages)
    assert [f.name for f in dataclasses.fields(cls)][-1] == "hello"
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "run.yaml").write_text("stages: [hello]\nhello: {preset: tiny, notes: notes.txt}\n")

    # its section is checked against its config class before anything runs
    with pytest.raises(ConfigError, match=r"section 'hello': unknown config key 'prest'"):
        pipeline.check_sections(cfg.from_dict(cls, {"hello": {"prest": "tiny"}}), stages)
    # its file key resolves relative to the config file, and preflight names the missing file
    config = cfg.load(cls, folder / "run.yaml")
    pipeline.resolve_paths(config, folder, set(), stages)
    assert config.hello["notes"] == str(folder / "notes.txt")
    with pytest.raises(ConfigError, match=r"hello.notes: .*notes.txt does not exist"):
        pipeline.plan(config, stages)
    (folder / "notes.txt").write_text("one\n")
    # its order and argv: last of the full table, and alone when `stages` names it
    full = cfg.from_dict(cls, {"decon": {"tasks": [__file__]}, "eval": {"suite": ["perplexity"]}})
    assert [s.stage.name for s in pipeline.plan(full, stages)][-1] == "hello"
    (step,) = pipeline.plan(config, stages)
    run = tmp_path / "run"
    assert step.argv(run, run / ".pipeline/config.yaml") == [
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        str(run / "hello"),
    ]

    # it runs, is skipped when up to date, and re-runs when the file it watches changes
    pipeline.run_pipeline(config, run, main, stages=stages)
    state = json.loads((run / "pipeline.json").read_text())
    assert state["hello"]["status"] == "done" and (run / "hello" / "manifest.json").is_file()
    capsys.readouterr()
    pipeline.run_pipeline(config, run, main, stages=stages)
    assert "[pipeline] hello      up to date" in capsys.readouterr().out
    st = (folder / "notes.txt").stat()
    os.utime(folder / "notes.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    pipeline.run_pipeline(config, run, main, stages=stages)
    assert "[pipeline] hello      done" in capsys.readouterr().out
    # the stage is unknown to the pipeline without its table entry
    with pytest.raises(ConfigError, match="unknown stage 'hello'"):
        pipeline.plan(cfg.from_dict(pipeline.PipelineConfig, {"stages": ["hello"]}))


def test_fingerprint_is_unchanged_for_a_run_of_the_previous_code(tmp_path: Path) -> None:
    """The fingerprint's bytes as the code before the stage table computed them, for a stage with a
    recipe (hashed), one with task files (size and mtime) and one with inputs: a resumed run of the
    previous code is still recognised (checked there on a whole micro run, recorded here by formula)."""
    import hashlib

    from glasslm import artifacts

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sources: []\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("{}\n")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text("{}")
    known = {s.name: s for s in STAGES}

    def old(name: str, section: dict, files: list[Path], hashed: Path | None, inputs: list[str]) -> str:
        h = hashlib.sha256()
        h.update(name.encode())
        h.update(json.dumps(section, sort_keys=True, default=str).encode())
        if hashed is not None:
            h.update(artifacts.sha256_file(hashed).encode())
        for file in files:
            st = file.stat()
            h.update(f"{file}:{st.st_size}:{st.st_mtime_ns}".encode())
        for rel in inputs:
            manifest = tmp_path / rel / "manifest.json"
            h.update(rel.encode())
            h.update(artifacts.sha256_file(manifest).encode() if manifest.is_file() else b"missing")
        return h.hexdigest()

    mix = {"recipe": str(recipe)}
    mix_inputs = list(known["mix"].input_paths([], known))
    assert pipeline.fingerprint(known["mix"], mix_inputs, tmp_path, mix) == old(
        "mix", mix, [], recipe, mix_inputs
    )
    decon = {"tasks": [str(tasks)], "n": 8}
    assert pipeline.fingerprint(known["decon"], ["corpus"], tmp_path, decon) == old(
        "decon", decon, [tasks], None, ["corpus"]
    )
