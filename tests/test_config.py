"""The config system: YAML < dotted overrides, strict keys with suggestions, type errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from glasslm import config as cfg
from glasslm.cli import main
from glasslm.model.olmo2 import ModelConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    exclude: list[str] = field(default_factory=lambda: ["embed"])


@dataclass
class Run:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: Optim = field(default_factory=Optim)
    name: str = "run"
    steps: int = 10
    compile: bool = False
    mode: Literal["ddp", "fsdp", "none"] = "none"
    init_from: Path | None = None
    mixture: dict[str, float] = field(default_factory=dict)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n_layers: 6\noptim:\n  lr: 3e-4\nname: base\n")
    run = cfg.load(
        Run,
        f,
        [
            "--model.n_layers=4",
            "--optim.lr=1e-2",
            "--compile=true",
            "--mode=fsdp",
            "--init_from=/tmp/x",
            "--mixture={web: 0.5, code: 2}",
            "--optim.betas=[0.8, 0.99]",
        ],
    )
    assert run.model.n_layers == 4 and run.model.d_model == ModelConfig().d_model
    assert run.optim.lr == 1e-2 and run.name == "base"  # "3e-4" from YAML 1.1 is a string: still a float
    assert run.compile is True and run.mode == "fsdp" and run.init_from == Path("/tmp/x")
    assert run.mixture == {"web": 0.5, "code": 2.0} and run.optim.betas == (0.8, 0.99)
    assert cfg.load(Run, f).optim.lr == 3e-4


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(
        cfg.ConfigError, match=r"unknown config key 'model.n_layer' \(did you mean 'model.n_layers'\?\)"
    ):
        cfg.load(Run, None, ["--model.n_layer=4"])
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(
        cfg.ConfigError, match=r"c.yaml: unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"
    ):
        cfg.load(Run, f)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--steps=ten", "config key 'steps': expected int, got 'ten'"),
        ("--model.n_layers=2.5", "config key 'model.n_layers': expected int"),
        ("--compile=maybe", "config key 'compile': expected bool"),
        ("--mode=tp", r"config key 'mode': expected one of \['ddp', 'fsdp', 'none'\]"),
        ("--optim.lr=fast", "config key 'optim.lr': expected float"),
        ("--name.sub=1", "config key 'name' has no sub-keys"),
    ],
)
def test_wrong_types_name_key_and_expectation(override: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(Run, None, [override])


def test_yaml_type_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n_layers: [1, 2]\n")
    with pytest.raises(cfg.ConfigError, match="model.n_layers': expected int"):
        cfg.load(Run, f)
    f.write_text("model: 3\n")
    with pytest.raises(cfg.ConfigError, match="model"):
        cfg.load(Run, f)
    f.write_text("- a\n- b\n")
    with pytest.raises(cfg.ConfigError, match="top level must be a mapping"):
        cfg.load(Run, f)


def test_model_validation_is_a_config_error() -> None:
    with pytest.raises(cfg.ConfigError, match="divisible"):
        cfg.load(Run, None, ["--model.d_model=130"])


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    run = cfg.load(Run, None, ["--model.n_kv_heads=2", "--optim.exclude=embed,norm"])
    f = tmp_path / "resolved.yaml"
    f.write_text(cfg.dump_yaml(run))
    assert cfg.load(Run, f) == run
    assert run.optim.exclude == ["embed", "norm"]


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["model", "init", "--preset", "tiny", "--out", str(tmp_path / "m"), "--model.n_head=3"])
    assert rc == 2
    assert "did you mean 'model.n_heads'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    rc = main(["model", "init", "--preset", "tiyn", "--out", str(tmp_path / "m")])
    assert rc == 2 and "did you mean 'tiny'" in capsys.readouterr().err


def test_cli_override_with_spaces_is_not_a_positional(tmp_path: Path) -> None:
    from glasslm.model.checkpoint import load_model

    out = tmp_path / "m"
    assert (
        main(
            [
                "model",
                "init",
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--model.n_layers=2",
                "--model.d_model= 64",
            ]
        )
        == 0
    )
    assert load_model(out).config.d_model == 64


def test_yaml_files_that_would_mislead_are_one_line_errors(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 1e-3\n  lr: 1e-2\n")  # PyYAML keeps the last, silently
    with pytest.raises(cfg.ConfigError, match=r"twice.yaml:3:3: not valid YAML: key 'lr' is given twice"):
        cfg.load(Run, twice, [])
    merged = tmp_path / "merge.yaml"
    merged.write_text("base: &b {lr: 0.5}\noptim:\n  <<: *b\n")  # a merge key is not a duplicate
    assert cfg.read_yaml(merged)["optim"] == {"lr": 0.5}
    binary = tmp_path / "utf16.yaml"
    binary.write_bytes("name: x\n".encode("utf-16"))
    with pytest.raises(cfg.ConfigError, match="not a UTF-8 text file"):  # was a UnicodeDecodeError traceback
        cfg.load(Run, binary, [])
    with pytest.raises(cfg.ConfigError, match="is a directory"):
        cfg.load(Run, tmp_path, [])
    tab = tmp_path / "tab.yaml"
    tab.write_text("optim:\n\tlr: 1\n")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(Run, tab, [])
    assert "\n" not in str(info.value) and "tab.yaml:2:1" in str(info.value)


def test_numbers_are_exact_and_never_nan(tmp_path: Path) -> None:
    assert cfg.load(Run, None, ["--steps=1_000", "--optim.lr=2e-4"]).steps == 1000
    assert cfg.load(Run, None, ["--steps=2e6"]).steps == 2_000_000
    assert cfg.load(Run, None, [f"--steps={2**62 + 1}"]).steps == 2**62 + 1  # exact, not through a float
    with pytest.raises(
        cfg.ConfigError, match="too large a whole number"
    ):  # was 1000000000000000019884624838656
        cfg.load(Run, None, ["--steps=1e30"])
    with pytest.raises(cfg.ConfigError, match="config key 'optim.lr': expected a number, got NaN"):
        cfg.load(Run, None, ["--optim.lr=nan"])


@pytest.mark.parametrize(
    "where, values, says",
    [  # values that got past validation into a traceback, a Rust abort, or a run that trains on nan
        ("glasslm.train.config:OptimConfig", {"lr": "inf"}, "optim.lr must be positive and finite"),
        (
            "glasslm.tokenizer:BPEConfig",
            {"vocab_size": "1e12"},
            "tokenizer.vocab_size must be at most 4,194,304",
        ),
        ("glasslm.data.tag:TagRun", {"workers": -3}, "config key 'workers' must be >= 0"),
    ],
)
def test_values_that_used_to_escape_validation(where: str, values: dict[str, object], says: str) -> None:
    import importlib

    module, _, name = where.partition(":")
    with pytest.raises(cfg.ConfigError, match=says):
        cfg.from_dict(getattr(importlib.import_module(module), name), values)


def test_a_bad_torchrun_variable_and_a_misspelt_pipeline_stage_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glasslm.train.config import DistributedConfig
    from glasslm.train.distributed import init

    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(cfg.ConfigError, match=r"\$WORLD_SIZE must be a whole number"):
        init(DistributedConfig(), "cpu")
    monkeypatch.delenv("WORLD_SIZE")
    assert (
        main(["pipeline", "--out", str(tmp_path / "run"), "--force=trian"]) == 2
    )  # it ran, re-running nothing
    assert "--force 'trian' is not a stage (did you mean 'train'?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
