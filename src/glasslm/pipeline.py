"""``glasslm pipeline``: every stage, in order, from raw text to a chat model and a report.

The pipeline is nothing but the stages' own verbs called in order (in-process, through
``glasslm.cli.main``). Each stage is skipped when its output artifact exists and was made from the
same inputs (by manifest hash) with the same stage config, so re-running is cheap, an interrupted
pipeline continues where it stopped, and changing one stage's config re-runs only that stage and
what depends on it. The fingerprints live in ``RUN/pipeline.json`` with each stage's time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm import config as cfg
from glasslm.clitools import add_config_options, resolve_config
from glasslm.config import ConfigError

# The checkout's configs/ (scripts/install.sh installs glasslm editable, so this is the repository).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@dataclass
class PipelineConfig:
    """Which stages run, and each stage's config section (passed to the stage's verb as --config)."""

    stages: list[str] = field(default_factory=list)  # empty: every stage in STAGES order
    corpus: dict[str, Any] = field(default_factory=dict)
    tag: dict[str, Any] = field(default_factory=dict)
    dedupe: dict[str, Any] = field(default_factory=dict)
    decon: dict[str, Any] = field(default_factory=dict)
    mix: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    tokenize: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    adapt_data: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    rl: dict[str, Any] = field(default_factory=dict)
    hf: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    name: str
    out: str  # artifact path relative to the run directory
    inputs: list[str]  # artifact paths (relative) this stage reads
    argv: Callable[[Path, Path, dict[str, Any]], list[str]]  # (run dir, run config file, section) -> argv
    resumable: bool = False  # an interrupted run of this stage continues (--resume auto)


def _rel(run: Path, rel: str) -> str:
    return str(run / rel)


def _recipe(section: dict[str, Any]) -> Path:
    return Path(section.get("recipe", REPO / "configs" / "recipes" / "default.yaml"))


REPO = Path(__file__).resolve().parents[2]
ATTRIBUTES = ["attributes/tags", "attributes/dedupe", "attributes/decon"]

STAGES: list[Stage] = [
    # corpus.inputs given: your own data through `data import` (the default corpus otherwise).
    Stage("corpus", "corpus", [], lambda r, c, s: ["data", "import" if s.get("inputs") else "corpus",
                                                   "--out", _rel(r, "corpus"), "--config", str(c)]),
    Stage("tag", "attributes/tags", ["corpus"],
          lambda r, c, s: ["data", "tag", _rel(r, "corpus"), "--out", _rel(r, "attributes/tags"), "--config", str(c)]),
    Stage("dedupe", "attributes/dedupe", ["corpus"],
          lambda r, c, s: ["data", "dedupe", _rel(r, "corpus"), "--out", _rel(r, "attributes/dedupe"), "--config", str(c)]),
    Stage("decon", "attributes/decon", ["corpus"],
          lambda r, c, s: ["data", "decon", _rel(r, "corpus"), *(["--tasks", *s["tasks"]] if s.get("tasks") else []),
                           "--out", _rel(r, "attributes/decon"), "--config", str(c)]),
    Stage("mix", "mix", ["corpus", *ATTRIBUTES],
          lambda r, c, s: ["data", "mix", str(_recipe(s)), "--documents", _rel(r, "corpus"),
                           "--attributes", *[_rel(r, a) for a in ATTRIBUTES], "--out", _rel(r, "mix")]),
    Stage("tokenizer", "tokenizer", ["mix"],
          lambda r, c, s: ["tokenizer", "train", _rel(r, "mix"), "--out", _rel(r, "tokenizer"), "--config", str(c)]),
    Stage("tokenize", "tokens", ["mix", "tokenizer"],
          lambda r, c, s: ["data", "tokenize", _rel(r, "mix"), "--tokenizer", _rel(r, "tokenizer"),
                           "--out", _rel(r, "tokens"), "--config", str(c)]),
    Stage("train", "train", ["tokens"],
          lambda r, c, s: ["train", "--config", str(c), "--out", _rel(r, "train"), "--resume", "auto",
                           f"--data.tokens={_rel(r, 'tokens')}"], resumable=True),
    Stage("eval", "eval", ["train", "tokens"],
          lambda r, c, s: ["eval", _rel(r, "train"), "--tokens", _rel(r, "tokens"), "--out", _rel(r, "eval"),
                           "--config", str(c)]),
    Stage("adapt_data", "adapt/data", [],
          lambda r, c, s: ["adapt", "data", "--out", _rel(r, "adapt/data"), "--config", str(c)]),
    Stage("sft", "adapt/sft", ["train", "adapt/data"],
          lambda r, c, s: ["adapt", "sft", "--config", str(c), "--model", _rel(r, "train"),
                           "--data", _rel(r, "adapt/data"), "--out", _rel(r, "adapt/sft"), "--resume", "auto"],
          resumable=True),
    Stage("dpo", "adapt/dpo", ["adapt/sft", "adapt/data"],
          lambda r, c, s: ["adapt", "dpo", "--config", str(c), "--model", _rel(r, "adapt/sft"),
                           "--data", _rel(r, "adapt/data"), "--out", _rel(r, "adapt/dpo"), "--resume", "auto"],
          resumable=True),
    Stage("rl", "adapt/rl", ["adapt/dpo", "adapt/data"],
          lambda r, c, s: ["adapt", "rl", "--config", str(c), "--model", _rel(r, "adapt/dpo"),
                           "--data", _rel(r, "adapt/data"), "--out", _rel(r, "adapt/rl"), "--resume", "auto"],
          resumable=True),
    # The exported model is the run's final one (see _final_model); this is the default.
    Stage("hf", "hf", ["adapt/dpo"], lambda r, c, s: ["convert", "to-hf", _rel(r, "adapt/dpo"), "--out", _rel(r, "hf")]),
    Stage("trace", "trace_index", ["tokens", "train"],
          lambda r, c, s: ["trace", "index", str(r), "--out", _rel(r, "trace_index")]),
    # Its real inputs are every artifact of the run (see _report_stage); this is the minimum.
    Stage("report", "report", ["train"], lambda r, c, s: ["report", str(r)]),
]
DEFAULT_STAGES = [s.name for s in STAGES]  # rl included: ~50 s of the tiny run on two cores
MODEL_STAGES = [("rl", "adapt/rl"), ("dpo", "adapt/dpo"), ("sft", "adapt/sft"), ("train", "train")]


def _final_model(names: list[str]) -> str:
    """The most adapted model among the stages that run (what `hf` exports)."""
    return next((rel for stage, rel in MODEL_STAGES if stage in names), "train")


def _export_stage(names: list[str]) -> Stage:
    model = _final_model(names)
    return Stage("hf", "hf", [model], lambda r, c, s: ["convert", "to-hf", _rel(r, model), "--out", _rel(r, "hf")])


def _report_stage(names: list[str], known: dict[str, Stage]) -> Stage:
    """The report reads the whole run (funnel, curves, evals, adaptation, trace samples), so any stage
    that ran before it makes it stale, not only training."""
    inputs = [known[n].out for n in names if n != "report" and n in known]
    return Stage("report", "report", inputs, lambda r, c, s: ["report", str(r)])


# The typed config each stage's verb reads from its section (module, class, wrap): checked before
# anything runs, so a typo in the last stage's section fails in the first second, not the tenth minute.
SECTION_CLASSES: dict[str, tuple[str, str, str | None]] = {
    "corpus": ("glasslm.data.corpus", "CorpusRun", "corpus"),
    "tag": ("glasslm.data.tag", "TagRun", "tag"),
    "dedupe": ("glasslm.data.dedupe", "DedupeJob", "dedupe"),
    "decon": ("glasslm.data.decon", "DeconJob", "decon"),
    "tokenizer": ("glasslm.tokenizer", "TokenizerTrainConfig", "tokenizer"),
    "tokenize": ("glasslm.data.cli_tokens", "TokenizeJob", "tokenize"),
    "train": ("glasslm.train.config", "TrainConfig", None),
    "eval": ("glasslm.eval.harness", "EvalConfig", None),
    "adapt_data": ("glasslm.adapt.cli", "DataBuildConfig", "adapt_data"),
    "sft": ("glasslm.adapt.sft_trainer", "SFTConfig", None),
    "dpo": ("glasslm.adapt.dpo_trainer", "DPOConfig", None),
    "rl": ("glasslm.adapt.rl_trainer", "RLConfig", None),
}


def check_sections(config: PipelineConfig) -> None:
    import importlib

    for name, (module, cls_name, wrap) in SECTION_CLASSES.items():
        section = getattr(config, name)
        if not section:
            continue
        cls = getattr(importlib.import_module(module), cls_name)
        if name == "decon":  # `tasks` (task files) goes to the command line, not into DeconJob
            section = {k: v for k, v in section.items() if k != "tasks"}
        try:
            cfg.check_keys(cls, {wrap: section} if wrap else section)
        except ConfigError as e:
            raise ConfigError(f"section '{name}': {e}") from None
    if config.mix and set(config.mix) - {"recipe"}:
        raise ConfigError(f"section 'mix': only 'recipe' (a recipe file) is allowed, got {sorted(config.mix)}")


def _fingerprint(stage: Stage, run: Path, section: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(stage.name.encode())
    h.update(json.dumps(section, sort_keys=True, default=str).encode())
    if stage.name == "mix":
        h.update(artifacts.sha256_file(_recipe(section)).encode())
    for rel in stage.inputs:
        manifest = run / rel / artifacts.MANIFEST
        h.update(rel.encode())
        h.update(artifacts.sha256_file(manifest).encode() if manifest.is_file() else b"missing")
    return h.hexdigest()


def _state(run: Path) -> dict[str, Any]:
    path = run / "pipeline.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(run: Path, state: dict[str, Any]) -> None:
    tmp = run / "pipeline.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(run / "pipeline.json")


def run_pipeline(config: PipelineConfig, run: Path, force: list[str] | None = None) -> dict[str, Any]:
    from glasslm.cli import main as cli_main

    names = config.stages or DEFAULT_STAGES
    known = {s.name: s for s in STAGES} | {"hf": _export_stage(names)}
    for name in names:
        if name not in known:
            raise ConfigError(f"config key 'stages': unknown stage '{name}' (stages: {', '.join(known)})")
    known["report"] = _report_stage(names, known)
    check_sections(config)
    run.mkdir(parents=True, exist_ok=True)
    (run / ".pipeline").mkdir(exist_ok=True)
    # Every verb reads its own section of this one file (config.load's run_section).
    config_file = run / ".pipeline" / "config.yaml"
    sections = {k: v for k, v in cfg.to_dict(config).items() if k != "stages"}
    # Keys the pipeline turns into command-line arguments are not part of the verbs' configs.
    sections["decon"] = {k: v for k, v in sections["decon"].items() if k != "tasks"}
    sections["mix"] = {}
    config_file.write_text(yaml.safe_dump(sections, sort_keys=False))
    state = _state(run)
    total_start = time.perf_counter()
    ran: list[str] = []
    for name in names:
        stage = known[name]
        section: dict[str, Any] = getattr(config, name)
        fingerprint = _fingerprint(stage, run, section)
        out = run / stage.out
        previous = state.get(name, {})
        done = (out / artifacts.MANIFEST).is_file() and previous.get("status") == "done"
        if done and previous.get("fingerprint") == fingerprint and name not in (force or []):
            print(f"[pipeline] {name:<10} up to date ({previous.get('seconds', 0):.1f} s when it ran)", flush=True)
            continue
        for rel in stage.inputs:
            if not (run / rel / artifacts.MANIFEST).is_file():
                raise artifacts.ArtifactError(f"stage '{name}' needs {run / rel}, which does not exist yet")
        interrupted = previous.get("status") == "running" and previous.get("fingerprint") == fingerprint
        if out.exists() and not (stage.resumable and interrupted):
            shutil.rmtree(out)  # made from other inputs or another config: start again
        argv = stage.argv(run, config_file, section)
        state[name] = {"fingerprint": fingerprint, "status": "running", "argv": argv}
        _save_state(run, state)
        print(f"[pipeline] {name:<10} glasslm {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        rc = cli_main(argv)
        seconds = time.perf_counter() - start
        if rc != 0:
            raise RuntimeError(f"stage '{name}' failed (exit {rc}): glasslm {' '.join(argv)}")
        state[name].update(status="done", seconds=round(seconds, 2))
        _save_state(run, state)
        ran.append(name)
        print(f"[pipeline] {name:<10} done in {seconds:.1f} s", flush=True)
    total = time.perf_counter() - total_start
    print(f"[pipeline] finished in {total:.1f} s ({len(ran)} stages ran); stage times:", flush=True)
    for name in names:
        mark = "" if name in ran else " (earlier)"
        print(f"  {name:<10} {state.get(name, {}).get('seconds', 0):8.1f} s{mark}")
    return state


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run every stage, from raw text to a chat model and a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/tiny"), help="run directory (default runs/tiny)")
    p.add_argument("--force", default="", help="comma-separated stages to re-run even if up to date")
    add_config_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.config is None:
        args.config = DEFAULT_CONFIG
    config = resolve_config(PipelineConfig, args)
    run_pipeline(config, args.out, force=[s for s in args.force.split(",") if s])
    return 0
