"""Artifact directories: manifests, atomic creation, verification and lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glasslm import artifacts
from glasslm.cli import main


def _make(tmp_path: Path, name: str, inputs: list[Path] | None = None) -> Path:
    out = tmp_path / name
    with artifacts.create_artifact(out, "thing", config={"a": 1}, inputs=inputs or []) as art:
        (art.path / "data.txt").write_text(f"hello {name}\n")
        (art.path / "sub").mkdir()
        (art.path / "sub" / "more.bin").write_bytes(b"\x00\x01")
        art.metrics["n"] = 2
    return out


def test_manifest_records_files_config_code_and_inputs(tmp_path: Path) -> None:
    parent = _make(tmp_path, "parent")
    child = _make(tmp_path, "child", [parent])
    m = artifacts.read_manifest(child)
    assert m["kind"] == "thing" and m["config"] == {"a": 1} and m["metrics"] == {"n": 2}
    assert set(m["files"]) == {"data.txt", "sub/more.bin"}
    assert m["files"]["sub/more.bin"]["bytes"] == 2
    assert m["files"]["data.txt"]["sha256"] == artifacts.sha256_file(child / "data.txt")
    assert m["code"]["version"]
    assert m["inputs"][0]["sha256"] == artifacts.manifest_hash(parent)
    assert m["inputs"][0]["kind"] == "thing"


def test_failure_leaves_nothing_and_keeps_old(tmp_path: Path) -> None:
    out = _make(tmp_path, "a")
    before = (out / "manifest.json").read_text()
    with pytest.raises(RuntimeError), artifacts.create_artifact(out, "thing") as art:
        (art.path / "partial").write_text("x")
        raise RuntimeError("crash")
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_verify_names_changed_missing_added(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = _make(tmp_path, "parent")
    child = _make(tmp_path, "child", [parent])
    assert main(["manifest", "verify", str(child)]) == 0
    (child / "data.txt").write_text("tampered\n")
    (child / "sub" / "more.bin").unlink()
    (child / "extra").write_text("new")
    capsys.readouterr()
    assert main(["manifest", "verify", str(child), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["artifacts"][0]
    assert (
        report["changed"] == ["data.txt"]
        and report["missing"] == ["sub/more.bin"]
        and report["added"] == ["extra"]
    )
    # a change in a parent is found with --recursive, and the child notices the parent's manifest changed
    clean = _make(tmp_path, "child2", [parent])
    (parent / "data.txt").write_text("changed parent\n")
    assert main(["manifest", "verify", str(clean)]) == 0
    assert main(["manifest", "verify", str(clean), "--recursive"]) == 1
    assert "data.txt" in capsys.readouterr().out


def test_show_prints_lineage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = _make(tmp_path, "parent")
    child = _make(tmp_path, "child", [parent])
    assert main(["manifest", "show", str(child), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lineage"]["inputs"][0]["path"] == str(parent.resolve())
    assert data["lineage"]["inputs"][0]["matches"] is True
    assert main(["manifest", "show", str(child)]) == 0
    text = capsys.readouterr().out
    assert "lineage:" in text and str(parent.resolve()) in text


def test_find_artifact_in_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _make(run, "thing")
    assert artifacts.find_artifact(run, "thing") == run / "thing"
    assert artifacts.find_artifact(run / "thing", "thing") == run / "thing"
    with pytest.raises(artifacts.ArtifactError, match="expected other"):
        artifacts.find_artifact(run / "thing", "other")
    with pytest.raises(artifacts.ArtifactError, match="no such directory"):
        artifacts.find_artifact(tmp_path / "nope", "thing")
