"""``glasslm pipeline``: every stage, in order, from raw text to a chat model and a report.

The pipeline is nothing but the stages' own verbs called in order (in-process, through
``glasslm.cli.main``). Each stage is skipped when its output artifact exists and was made from the
same inputs (by manifest hash) with the same stage config, so re-running is cheap, an interrupted
pipeline continues where it stopped, and changing one stage's config re-runs only that stage and
what depends on it. The fingerprints live in ``RUN/pipeline.json`` with each stage's time.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glasslm.clitools import add_config_options, out_path, resolve_config

DATA_STAGES = ("tag", "dedupe", "decon", "mix", "tokenize")  # the stages with an executor


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run every stage, from raw text to a chat model and a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=out_path, default=Path("runs/tiny"), help="run directory (default runs/tiny)"
    )
    p.add_argument("--force", default="", help="comma-separated stages to re-run even if up to date")
    p.add_argument(
        "--executor",
        choices=["local", "process", "ray"],
        default=None,
        help=f"how every data stage ({', '.join(DATA_STAGES)}) runs its shard tasks (default: each "
        "section's executor, process)",
    )
    add_config_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from glasslm.cli import main
    from glasslm.config import ConfigError, did_you_mean
    from glasslm.pipeline.run import PipelineConfig, override_keys, resolve_paths, run_pipeline
    from glasslm.pipeline.stages import DEFAULT_CONFIG, STAGES

    if args.config is None:
        args.config = DEFAULT_CONFIG
    config: Any = resolve_config(PipelineConfig, args)
    if args.executor is not None:
        for name in DATA_STAGES:
            getattr(config, name)["executor"] = args.executor
    resolve_paths(config, Path(args.config).resolve().parent, override_keys(args.overrides))
    force = [s.strip() for s in args.force.split(",") if s.strip()]
    names = [stage.name for stage in STAGES]
    for name in force:  # a typo would silently not re-run the stage it meant
        if name not in names:
            raise ConfigError(
                f"--force {name!r} is not a stage{did_you_mean(name, names)}; stages: {', '.join(names)}"
            )
    run_pipeline(config, args.out, main, force=force)
    return 0
