"""``glasslm reproduce``: re-run recorded glasslm verbs, compare output files, refuse anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.fixture
def init_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Relative paths, as a user types them: reproduce must resolve them against the recorded cwd.
    monkeypatch.chdir(tmp_path)
    assert main(["model", "init", "--preset", "tiny", *TINY, "--seed", "3", "--out", "ckpt"]) == 0
    return tmp_path / "ckpt"


def rewrite_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_model_init_reproduces_identically(
    init_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = artifacts.read_manifest(init_ckpt)
    assert manifest["command"][:3] == ["glasslm", "model", "init"]
    monkeypatch.chdir("/")  # from anywhere
    assert main(["reproduce", str(init_ckpt), "--json", "--keep", str(tmp_path / "again")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["identical"] and data["differing"] == []
    assert {f["path"] for f in data["files"]} == set(manifest["files"])
    assert all(f["status"] == "identical" for f in data["files"])
    # the overrides were replaced by the recorded resolved config; the output went elsewhere
    assert "--config" in data["rerun"] and not any(w.startswith("--model.") for w in data["rerun"])
    assert artifacts.read_manifest(tmp_path / "again")["config"] == manifest["config"]


def test_convert_to_hf_reproduces_identically(
    init_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["convert", "to-hf", "ckpt", "hf"]) == 0  # positional OUT, relative input
    capsys.readouterr()
    assert main(["reproduce", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "IDENTICAL" in out and "model.safetensors" in out


def test_differing_output_is_named_and_exits_1(init_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    # As if the code had changed since: the recorded hash of one file no longer matches a re-run.
    manifest = artifacts.read_manifest(init_ckpt)
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64
    rewrite_manifest(init_ckpt, files=manifest["files"])
    assert main(["reproduce", str(init_ckpt), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["identical"] and data["differing"] == ["model.safetensors"]


def test_changed_input_is_reported_before_running(
    init_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["convert", "to-hf", str(init_ckpt), "--out", str(tmp_path / "hf")]) == 0
    (init_ckpt / "config.yaml").write_text((init_ckpt / "config.yaml").read_text() + "\n# edited\n")
    capsys.readouterr()
    assert main(["reproduce", str(tmp_path / "hf"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["rerun"] == [] and any("config.yaml" in p for p in data["problems"])


@pytest.mark.parametrize(
    "command",
    [
        ["sh", "-c", "touch PWNED"],
        "glasslm model init --out x; touch PWNED",
        ["glasslm", "manifest", "show", "."],  # a read-only verb: no artifact to compare
        ["glasslm", "no-such-stage", "--out", "x"],
        ["/usr/bin/env", "glasslm", "model", "init", "--out", "x"],
    ],
)
def test_anything_but_a_glasslm_verb_is_refused(
    init_ckpt: Path, tmp_path: Path, command: object, capsys: pytest.CaptureFixture
) -> None:
    rewrite_manifest(init_ckpt, command=command)
    assert main(["reproduce", str(init_ckpt)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_manifest_show_prints_each_lineage_node(
    init_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["convert", "to-hf", "ckpt", "--out", "hf"]) == 0
    capsys.readouterr()
    assert main(["manifest", "show", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    for expected in (
        "- hf_model",
        "- checkpoint",
        "command: glasslm model init",
        "config:  seed=3",
        artifacts.manifest_hash(init_ckpt)[:12],
    ):
        assert expected in out
