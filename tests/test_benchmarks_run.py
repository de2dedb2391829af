"""The GPU benchmarks must also run (slowly) on a CPU with the tiny preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_runs_on_cpu() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/train_step.py"), "--preset", "tiny", "--seq-len", "64",
         "--batch", "2", "--steps", "2", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "glasslm:" in out and "tokens/s" in out and "ratio glasslm / transformers" in out


def test_train_cpu_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/train_cpu.py"), "--shapes", "tiny", "--batch", "2",
         "--seq-len", "32", "--steps", "1", "--repeats", "1", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "tiny" in out and "tokens/s" in out
