"""Shared pieces of the trainer tests: a tiny learnable tokens artifact and a tiny training config.

The tokens are written in exactly the layout ``glasslm data tokenize`` produces (docs/architecture.md:
``train/part-NNNNN.npy`` + ``train/index.parquet`` + manifest kind "tokens"), so the real loader reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from glasslm import artifacts

VOCAB = 128
EOS = 0
REPO = Path(__file__).resolve().parents[1]


def make_tokens(out: Path, n_docs: int = 400, seed: int = 0, parts: int = 2) -> Path:
    """Documents that count upwards with a per-document stride (1..3) mod VOCAB-1: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        length = int(rng.integers(20, 120))
        start, stride = int(rng.integers(1, VOCAB)), int(rng.integers(1, 4))
        body = (start + stride * np.arange(length)) % (VOCAB - 1) + 1  # ids 1..VOCAB-1; 0 is EOS
        docs.append(np.append(body, EOS).astype(np.uint16))
    with artifacts.create_artifact(out, "tokens", config={"fixture": "counting", "seed": seed}) as art:
        (art.path / "train").mkdir()
        rows: dict[str, list[Any]] = {"doc_id": [], "source": [], "part": [], "start": [], "end": []}
        per_part = -(-n_docs // parts)
        for part in range(parts):
            chunk = docs[part * per_part : (part + 1) * per_part]
            offset = 0
            for i, doc in enumerate(chunk):
                rows["doc_id"].append(f"doc-{part * per_part + i}")
                rows["source"].append("counting" if i % 3 else "counting-b")
                rows["part"].append(part)
                rows["start"].append(offset)
                rows["end"].append(offset + len(doc))
                offset += len(doc)
            np.save(art.path / "train" / f"part-{part:05d}.npy", np.concatenate(chunk))
        pq.write_table(pa.table(rows), art.path / "train" / "index.parquet")
        art.metrics.update({"vocab_size": VOCAB, "eos_id": EOS, "documents": n_docs})
    return out


def write_config(path: Path, tokens: Path, **sections: dict[str, Any] | None) -> Path:
    """A tiny training config (YAML) — model of ~50k parameters, 64-token sequences."""
    config: dict[str, Any] = {
        "model": {
            "preset": "tiny",
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "mlp_hidden": 64,
        },
        "data": {"tokens": str(tokens), "loader": {"seq_len": 64, "global_batch_size": 8, "seed": 1}},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup": 3},
        "trainer": {"max_steps": 12, "checkpoint_every": 4, "log_every": 1, "threads": 1, "keep_last": 10},
    }
    for name, values in sections.items():
        if values is None:  # drop the section (e.g. model, when starting from init_from)
            config.pop(name, None)
        else:
            config.setdefault(name, {}).update(values)
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def glasslm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "glasslm", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "glasslm",
        *args,
    ]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def test_fixture_is_a_tokens_artifact(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens")
    assert artifacts.read_manifest(tokens)["kind"] == "tokens"
    index = pq.read_table(tokens / "train" / "index.parquet").to_pydict()
    part0 = np.load(tokens / "train" / "part-00000.npy")
    ends = [e for e, p in zip(index["end"], index["part"], strict=True) if p == 0]
    assert ends[-1] == len(part0) and all(part0[e - 1] == EOS for e in ends)
    assert artifacts.verify(tokens).ok
