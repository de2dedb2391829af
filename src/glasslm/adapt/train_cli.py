"""``glasslm adapt sft|dpo|rl [CONFIG] --out RUN/adapt/<stage> [--model MODEL] [--data DATA] [--key=value …]``.

Each verb runs the Trainer with the stage's objective and batch source (``glasslm.adapt.base``), so it
takes the same ``--resume``, trainer, optimizer, schedule and distributed keys as ``glasslm train``
and runs under torchrun the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glasslm.clitools import add_config_options, add_out, add_verb, local_path, resolve_config
from glasslm.config import ConfigError

if TYPE_CHECKING:
    from glasslm.train.trainer import RunResult, Trainer

STAGES = {
    "sft": ("supervised fine-tuning on chat data (assistant tokens only, packed)", "configs/adapt/sft.yaml"),
    "dpo": (
        "direct preference optimisation against the initial model (dpo or dpo_norm)",
        "configs/adapt/dpo.yaml",
    ),
    "rl": ("GRPO with verifiable rewards, sampling with the generation engine", "configs/adapt/rl.yaml"),
}


def register(verbs: Any) -> None:
    for stage, (help_, example) in STAGES.items():
        p = add_verb(verbs, stage, _run, help_)
        p.epilog = (f"example:\n  glasslm adapt {stage} {example} --model runs/demo/"
                    f"{'train' if stage == 'sft' else 'adapt/sft' if stage == 'dpo' else 'adapt/sft'} "
                    f"--data runs/demo/adapt/data --out runs/demo/adapt/{stage}\n")  # fmt: skip
        p.add_argument(
            "config_pos", nargs="?", type=local_path, metavar="CONFIG", help="config YAML (or --config)"
        )
        add_out(p, help=f"run directory to write (RUN/adapt/{stage})")
        p.add_argument(
            "--model", type=local_path, default=None, help="the model to start from (sets model.init_from)"
        )
        p.add_argument(
            "--data", type=local_path, default=None, help="adapt_data artifact or JSONL file (sets data.path)"
        )
        p.add_argument(
            "--resume",
            default="never",
            help="'auto': continue from the newest checkpoint in --out; a checkpoint path; or 'never'",
        )
        add_config_options(p, run_section=stage)
        p.set_defaults(adapt_stage=stage)


def classes(stage: str) -> tuple[type, Callable[..., Trainer]]:
    """The stage's config class and the function that composes its Trainer."""
    if stage == "sft":
        from glasslm.adapt.sft_trainer import SFTConfig, sft_trainer

        return SFTConfig, sft_trainer
    if stage == "dpo":
        from glasslm.adapt.dpo_trainer import DPOConfig, dpo_trainer

        return DPOConfig, dpo_trainer
    from glasslm.adapt.rl_trainer import RLConfig, rl_trainer

    return RLConfig, rl_trainer


def run_stage(stage: str, config: Any, out: Path, resume: str = "never") -> RunResult:
    from glasslm.train import distributed

    _, make_trainer = classes(stage)
    world = distributed.init(config.distributed, config.trainer.device)
    try:
        return make_trainer(config, Path(out), world, resume).run()
    finally:
        distributed.shutdown(world)


def _run(args: argparse.Namespace) -> int:
    from glasslm.eval.chat_suite import CHAT_SUITE, failure_of, format_figures
    from glasslm.train.trainer import TrainingDiverged

    stage = args.adapt_stage
    if args.config_pos is not None and args.config is not None:
        raise ConfigError("give the config either as CONFIG or with --config, not both")
    args.config = args.config or args.config_pos
    if args.config is None and args.resume != "never" and (args.out / "config.yaml").is_file():
        args.config = args.out / "config.yaml"
    if args.model is not None:
        args.overrides = [*args.overrides, f"--model.init_from={args.model}"]
    if args.data is not None:
        args.overrides = [*args.overrides, f"--data.path={args.data}"]
    config_cls, _ = classes(stage)
    config: Any = resolve_config(config_cls, args)
    try:
        result = run_stage(stage, config, args.out, args.resume)
    except TrainingDiverged as e:
        print(f"glasslm: error: {e}", file=sys.stderr)
        return 3
    print(
        f"adapt {stage}: {result.steps} steps in {result.wall_s:.1f}s; final loss {result.final_loss:.4f}; "
        f"run at {result.run_dir}"
    )
    record = result.metrics.get(CHAT_SUITE)
    if isinstance(record, dict):
        print(f"adapt {stage}: chat suite after: {format_figures(record['after'])}"
              + ("" if not record["checked"] else "; check passed" if record["passed"] else "; check FAILED"))  # fmt: skip
        failure = failure_of(stage, record)
        if failure is not None:  # the manifest records it; the command (and a pipeline) stops here
            print(f"glasslm: error: {failure}", file=sys.stderr)
            return 4
    return 0
