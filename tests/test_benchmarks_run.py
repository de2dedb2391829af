"""The GPU benchmarks must also run (slowly) on a CPU with the tiny preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_runs_on_cpu() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/train_step.py"),
            "--preset",
            "tiny",
            "--seq-len",
            "64",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "glasslm:" in out and "tokens/s" in out and "ratio glasslm / transformers" in out


def test_train_cpu_benchmark_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/train_cpu.py"),
            "--shapes",
            "tiny",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "tiny" in out and "tokens/s" in out


# -- run_all.sh's table (issue #23): the README carries exactly what the latest run printed ----------


def _fake_run(out: Path) -> None:
    import json

    out.mkdir()
    (out / "started").write_text(
        "2026-12-05 10:00 UTC\n 10:00:00 up 1 day,  load average: 1.50, 1.20, 1.00\n"
    )
    (out / "ended").write_text("2026-12-05 10:30 UTC\n 10:30:00 up 1 day,  load average: 2.25, 1.20, 1.00\n")
    line = {
        "benchmark": "dedupe_mix_throughput.py",
        "figure": "dedupe, 50 MB",
        "peer": "dolma 1.2.1 (20 hashers)",
        "ratio": 1.384,
        "ratio_min": 1.2,
        "ratio_max": 1.5,
        "n": 3,
        "goal": 2.0,
        "note": "",
        "kept": [1, 1],
    }
    (out / "dedupe_mix.log").write_text("noise\nBENCH-RESULT " + json.dumps(line) + "\nmore noise\n")
    (out / "dedupe_mix.cmd").write_text("python benchmarks/dedupe_mix_throughput.py --mb 50\n")
    (out / "dedupe_mix.load").write_text(" up, load average: 1.50, 1, 1\n up, load average: 1.75, 1, 1\n")
    (out / "dedupe_mix.rc").write_text("0\n")
    (out / "minhash.log").write_text("Traceback …\n")
    (out / "minhash.cmd").write_text("python benchmarks/minhash_throughput.py\n")
    (out / "minhash.rc").write_text("1\n")


def test_readme_table_rewrites_only_between_markers(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_table

    _fake_run(tmp_path / "out")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\nbefore\n<!-- benchmarks:begin -->\n| old | 9.69× |\n<!-- benchmarks:end -->\nafter\n"
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    readme_table.main(
        [str(tmp_path / "out"), "--readme", str(readme), "--results", str(results), "--no-versions"]
    )
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n<!-- benchmarks:begin -->\n") and text.endswith(
        "<!-- benchmarks:end -->\nafter\n"
    )
    assert "9.69" not in text  # the stale figure is gone
    assert "**1.38×** (1.20–1.50, n=3)" in text and "≥ 2×: **open**" in text and "1.50 → 1.75" in text
    assert "2026-12-05 10:00 UTC" in text and "load average 1.50 at the start, 2.25 at the end" in text
    assert "`minhash` | — | — | failed (exit 1" in text  # a failed benchmark never keeps an old figure
    assert "dolma 1.2.1 (20 hashers)" in text
    log = results.read_text()
    assert log.startswith("# Benchmark results\n\n## run_all.sh, 2026-12-05 10:00 UTC")
    assert "python benchmarks/dedupe_mix_throughput.py --mb 50" in log and "**1.38×**" in log
    # Idempotent: a second run replaces the table instead of adding one.
    readme_table.main(
        [str(tmp_path / "out"), "--readme", str(readme), "--results", str(results), "--no-versions"]
    )
    assert readme.read_text() == text


def test_readme_has_the_markers_and_run_all_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- benchmarks:begin -->") == 1 and readme.count("<!-- benchmarks:end -->") == 1
    script = (ROOT / "benchmarks/run_all.sh").read_text()
    assert (
        "readme_table.py" in script
        and subprocess.run(["bash", "-n", str(ROOT / "benchmarks/run_all.sh")]).returncode == 0
    )
