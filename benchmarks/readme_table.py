"""Turn one ``benchmarks/run_all.sh`` run into the README's benchmark table and a RESULTS.md section.

``run_all.sh`` runs each benchmark with its output in ``OUT/<name>.log``, its command line in
``OUT/<name>.cmd``, ``uptime`` before and after in ``OUT/<name>.load`` and its exit status in
``OUT/<name>.rc``. Every figure a benchmark compares prints one ``BENCH-RESULT {json}`` line
(benchmarks/_bench.py: ``report``). This script gathers them, adds the machine (CPU model, cores,
date, load average, versions of every side) and

- replaces everything between ``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->`` in
  README.md with the table (nothing else in README.md is touched), so the README carries exactly the
  figures the current code produced in its latest run — a benchmark that failed shows as failed;
- appends the same table, with each command, to benchmarks/RESULTS.md.

    python benchmarks/readme_table.py OUT [--readme README.md] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
MARK = "BENCH-RESULT "
HERE = Path(__file__).resolve().parent
PEER_VENVS = {"dolma": "dolma", "datatrove": "datatrove", "lmeval": "lm_eval", "infinigram": "infini-gram"}


@dataclass
class Bench:
    name: str
    command: str
    rc: int | None
    load: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)


def load_average(uptime_line: str) -> str:
    """'load average: 1.00, 0.50, 0.25' → '1.00'. The 1-minute figure (what the run just saw)."""
    m = re.search(r"load average[s]?:\s*([\d.]+)", uptime_line)
    return m.group(1) if m else "?"


def parse_run(out: Path) -> list[Bench]:
    benches = []
    for log in sorted(out.glob("*.log"), key=lambda p: p.stat().st_mtime):
        name = log.stem
        rc_file, cmd_file, load_file = out / f"{name}.rc", out / f"{name}.cmd", out / f"{name}.load"
        rc = int(rc_file.read_text().strip()) if rc_file.is_file() and rc_file.read_text().strip() else None
        bench = Bench(
            name,
            cmd_file.read_text().strip() if cmd_file.is_file() else "?",
            rc,
            load_file.read_text().splitlines() if load_file.is_file() else [],
        )
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(MARK):
                bench.results.append(json.loads(line[len(MARK) :]))
        benches.append(bench)
    return benches


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(git: str | None = None) -> dict[str, str]:
    """Product side (this interpreter) and each peer's virtualenv that exists; ``git``: the commit the
    run measured (run_all.sh records it when it starts), else this checkout's."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"python": platform.python_version()}
    for pkg in ("glasslm", "torch", "transformers", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    for venv, pkg in PEER_VENVS.items():
        py = HERE / f".venv-{venv}" / "bin" / "python"
        if py.is_file():
            proc = subprocess.run(
                [str(py), "-c", f"from importlib.metadata import version; print(version('{pkg}'))"],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                out[f"{pkg} (peer venv)"] = proc.stdout.strip()
    if git:
        out["git"] = git
        return out
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out["git"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return out


def ratio_cell(r: dict[str, Any]) -> str:
    if r.get("n", 1) > 1:
        return f"**{r['ratio']:.2f}×** ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}, n={r['n']})"
    return f"**{r['ratio']:.2f}×** (n=1)"


def goal_cell(r: dict[str, Any]) -> str:
    goal = r.get("goal")
    if goal is None:
        return "—"
    return f"≥ {goal:g}×: {'met' if r['ratio'] >= goal else '**open**'}"


def details(r: dict[str, Any]) -> str:
    skip = {"benchmark", "figure", "peer", "ratio", "ratio_min", "ratio_max", "n", "goal", "note"}
    bits = [f"{k.replace('_', ' ')} {v}" for k, v in r.items() if k not in skip and v is not None]
    if r.get("note"):
        bits.insert(0, str(r["note"]))
    return "; ".join(bits).replace("|", "/")


def render(benches: list[Bench], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    lines = [
        f"Latest `benchmarks/run_all.sh` run: {meta['date']} on **{meta['cpu']}** ({meta['cores']} cores), "
        f"load average {meta['load_start']} at the start, {meta['load_end']} at the end (other jobs share "
        "this box: compare ratios, not absolute figures). Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + ".",
        "Ratio = ours / peer (> 1: glasslm is faster), the median of per-repeat ratios with their min–max; "
        "each repeat ran both sides back to back, alternating which goes first (ABAB). Peers are "
        "configured as their maintainers recommend (settings in the peer column and in each script's docstring).",
        "",
        "| benchmark | figure | peer (settings) | ratio (ours / peer) | goal | load (1 min, start → end) | details |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in benches:
        load = " → ".join(load_average(x) for x in b.load) or "?"
        if b.rc not in (0, None) or not b.results:
            why = f"exit {b.rc}" if b.rc not in (0, None) else "no figure printed"
            lines.append(f"| `{b.name}` | — | — | failed ({why}; see its log) | — | {load} | |")
            continue
        for r in b.results:
            lines.append(
                f"| `{r['benchmark']}` | {r['figure']} | {r['peer']} | {ratio_cell(r)} | {goal_cell(r)} "
                f"| {load} | {details(r)} |"
            )
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, table: str) -> str:
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"README has no '{BEGIN}' … '{END}' section to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def results_section(benches: list[Bench], meta: dict[str, Any], table: str) -> str:
    cmds = "\n".join(f"  - `{b.name}`: `{b.command}` (exit {b.rc})" for b in benches)
    return (
        f"\n## run_all.sh, {meta['date']}\n- Command: `bash benchmarks/run_all.sh` (output: `{meta['out']}`)\n"
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {platform.system()} {platform.release()}; load "
        f"average {meta['load_start']} → {meta['load_end']}\n- Benchmarks:\n{cmds}\n\n{table}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the run's output directory (run_all.sh's OUT)")
    ap.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-versions", action="store_true", help=argparse.SUPPRESS)  # tests: no subprocesses
    args = ap.parse_args(argv)
    benches = parse_run(args.out)
    started = (
        (args.out / "started").read_text().splitlines() if (args.out / "started").is_file() else ["?", ""]
    )
    ended = (args.out / "ended").read_text().splitlines() if (args.out / "ended").is_file() else ["", ""]
    meta = {
        "date": started[0],
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "load_start": load_average(started[1] if len(started) > 1 else ""),
        "load_end": load_average(ended[1] if len(ended) > 1 else ""),
        "versions": {} if args.no_versions else versions(started[2] if len(started) > 2 else None),
        "out": str(args.out),
    }
    table = render(benches, meta)
    args.readme.write_text(replace_between_markers(args.readme.read_text(), table))
    with args.results.open("a") as f:
        f.write(results_section(benches, meta, table))
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
