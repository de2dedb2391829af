"""benchmarks/gpu_check.py cannot rot: its CPU dry run (the GPU check's steps at tiny shapes) runs here.

The full dry run takes ~60 s on two busy cores, most of it the correctness tests (tests/test_gpu.py on
CPU) and lm-eval's start-up; the default suite runs it without the eval step (tests/test_eval_lmeval.py
covers that comparison), the slow suite with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def _dry_run(out: Path, parts: str) -> dict:
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks/gpu_check.sh"),
            "--cpu-dry-run",
            "--out",
            str(out),
            "--parts",
            parts,
            "--budget",
            "400",
        ],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (CPU dry run)")
    return report


def test_cpu_dry_run_runs_every_step(tmp_path: Path) -> None:
    report = _dry_run(tmp_path, "env,correctness,train,decode")
    steps = {r["part"]: r for r in report["steps"]}
    assert all(r["status"] == "ok" for r in report["steps"]), report["steps"]
    assert steps["env"]["env"]["torch"]
    # Every GPU test ran (on CPU) and recorded its measured error against its limit.
    tests = {c["test"].split("[")[0] for c in report["checks"]}
    assert {
        "test_hf_parity_fp32_and_bf16",
        "test_greedy_decode_equals_transformers_fp32",
        "test_compiled_step_equals_eager",
        "test_fsdp2_one_rank_equals_ddp_and_plain",
        "test_exact_resume",
        "test_document_mask_equals_per_document",
    } <= tests
    names = [c["name"] for c in steps["train"]["contestants"]]
    assert names == ["glasslm", "hf"] and steps["train"]["memory_estimate"]["peak"] > 0
    assert steps["decode"]["decode"]["rows"][0]["batch"] == 1


@pytest.mark.slow
def test_cpu_dry_run_with_eval(tmp_path: Path) -> None:
    report = _dry_run(tmp_path, "eval")
    ev = [r for r in report["steps"] if r["part"] == "eval"][0]
    assert ev["status"] in ("ok", "skipped") and (ev["status"] == "skipped" or ev["summary"])


def test_train_line_parse_and_missing_peer_skip() -> None:
    step = gpu_check.Step(
        "train", "x", ["python", "train_step.py"], 10, meta={"preset": "olmo2-1b", "seq": 4096, "batch": 4}
    )
    out = (
        "glasslm: 57,012 tokens/s  483.51 TFLOP/s  MFU 48.9%  peak memory 41.2 GiB\n"
        "      hf: 46,417 tokens/s  393.66 TFLOP/s  MFU 39.8%  peak memory 60.0 GiB\n"
        "ratio glasslm / transformers: 1.23x\n"
    )
    res = gpu_check.parse(step, out)
    assert [c["tokens_per_s"] for c in res["contestants"]] == [57012.0, 46417.0]
    assert res["contestants"][0]["peak_gib"] == 41.2 and res["contestants"][1]["mfu"] == "39.8%"
    assert 40 < res["memory_estimate"]["peak"] < 80
    olmo_core = gpu_check.Step("train", "olmo-core", ["python", "x.py"], 10, needs="olmo_core")
    why = gpu_check.peer_missing(olmo_core, {"peers": {"olmo_core": False}})
    assert why is not None and "gpu_wheels.sh" in why
    assert gpu_check.peer_missing(olmo_core, {"peers": {"olmo_core": True}}) is None
