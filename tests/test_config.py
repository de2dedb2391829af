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
