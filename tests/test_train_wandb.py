"""Weights & Biases logging (``trainer.wandb``): offline, no network, files inside the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_train_support import make_tokens, write_config

from glasslm.cli import main
from glasslm.train.metrics import read_metrics


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _records(run_file: Path) -> list[bytes]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log blocks of 32 KiB whose records are (crc32, length, type) + payload; a payload
    split over blocks comes as FIRST, MIDDLE…, LAST pieces. (wandb 0.31 ships no Python reader.)"""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a .wandb file"
    block, pos, out, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: the rest is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding at the end
            break
        pending = payload if kind in (1, 2) else pending + payload  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end one
            out.append(pending)
    return out


def _logged_losses(run_file: Path) -> list[float]:
    """The ``loss`` of every history row in an offline run's ``.wandb`` log."""
    from wandb.proto import wandb_internal_pb2

    losses = []
    for data in _records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if "loss" in items:
                losses.append(float(items["loss"]))
    return losses


def test_wandb_offline_run_holds_the_logged_loss(tmp_path: Path, offline: None) -> None:
    pytest.importorskip("wandb")
    tokens = make_tokens(tmp_path / "tokens", n_docs=120)
    cfg = write_config(
        tmp_path / "c.yaml",
        tokens,
        trainer={
            "max_steps": 3,
            "checkpoint_every": 3,
            "wandb": True,
            "wandb_project": "glasslm-test",
        },
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, sorted(p.name for p in (run / "wandb").iterdir())
    run_files = list(offline_runs[0].glob("run-*.wandb"))
    assert len(run_files) == 1
    expected = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert len(expected) == 3
    assert _logged_losses(run_files[0]) == pytest.approx(expected, rel=1e-12)
    # wandb's symlinks (latest-run, debug.log, a log in its cache) are not left in the artifact
    assert not [p for p in (run / "wandb").rglob("*") if p.is_symlink()]
    assert main(["manifest", "verify", str(run), "--no-inputs"]) == 0


def test_wandb_missing_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    tokens = make_tokens(tmp_path / "tokens", n_docs=60)
    cfg = write_config(tmp_path / "c.yaml", tokens, trainer={"max_steps": 2, "wandb": True})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "trainer.wandb" in err and "glasslm[wandb]" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # stopped before writing anything
