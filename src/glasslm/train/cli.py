"""``glasslm train [CONFIG] --out RUN/train [--resume auto] [--key=value …]``.

Multi-process: ``python -m torch.distributed.run --nproc-per-node 2 -m glasslm train CONFIG --out … \
--distributed.strategy=fsdp`` (torchrun sets RANK/WORLD_SIZE; every process runs this same verb).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from glasslm.clitools import add_config_options, add_out, local_path, resolve_config
from glasslm.config import ConfigError


def register(sub: Any) -> None:
    help_ = "pretrain an OLMo-2 model on a tokens artifact (one process, or many under torchrun)"
    p = sub.add_parser(
        "train",
        help=help_,
        description=help_,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  glasslm train configs/tiny.yaml --data.tokens=runs/demo/tokens --out runs/demo/train\n"
        "  glasslm train --out runs/demo/train --resume auto   # the run's own config.yaml\n"
        "  python -m torch.distributed.run --nproc-per-node 2 -m glasslm train configs/tiny.yaml \\\n"
        "      --out runs/demo/train --distributed.strategy=ddp\n",
    )
    p.add_argument(
        "config_pos", nargs="?", type=local_path, metavar="CONFIG", help="training config YAML (or --config)"
    )
    add_out(p, help="run directory to write (RUN/train)")
    p.add_argument(
        "--resume",
        default="never",
        help="'auto': continue from the newest complete checkpoint in --out (start fresh if none); "
        "a checkpoint path: continue from that one; 'never' (default): refuse to touch an existing run",
    )
    add_config_options(p, run_section="train")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from glasslm.train.config import TrainConfig
    from glasslm.train.pretrain import train
    from glasslm.train.setup import check_fresh_out
    from glasslm.train.trainer import TrainingDiverged

    if args.config_pos is not None and args.config is not None:
        raise ConfigError("give the config either as CONFIG or with --config, not both")
    args.config = args.config or args.config_pos
    if args.resume == "never":
        check_fresh_out(args.out)
    if args.config is None and args.resume != "never" and (args.out / "config.yaml").is_file():
        args.config = args.out / "config.yaml"  # resuming with no config: the run's own
    config = resolve_config(TrainConfig, args)
    try:
        result = train(config, args.out, resume=args.resume)
    except TrainingDiverged as e:
        print(f"glasslm: error: {e}", file=sys.stderr)
        return 3
    if result.is_main and result.final_loss is not None:
        print(
            f"trained {result.steps} steps ({result.tokens:,} tokens) in {result.wall_s:.1f}s; "
            f"final loss {result.final_loss:.4f}; run at {result.run_dir}"
        )
    return 0
