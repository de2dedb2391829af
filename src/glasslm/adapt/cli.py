"""``glasslm adapt data|sft|dpo|rl``: adaptation data offline, then SFT, DPO and GRPO on the trainer."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from glasslm import artifacts
from glasslm.adapt.builders import ADAPT_DATA, AdaptDataConfig, build
from glasslm.clitools import add_config_options, add_out, add_verb, resolve_config, stage_verbs
from glasslm.data.documents import write_jsonl


@dataclass
class DataBuildConfig:
    adapt_data: AdaptDataConfig = field(default_factory=AdaptDataConfig)


def register(sub: Any) -> None:
    verbs = stage_verbs(
        sub, "adapt", "adapt a model to chat: offline data, SFT, DPO, RL with verifiable rewards"
    )
    p = add_verb(
        verbs,
        "data",
        _data,
        "build SFT, preference and verifiable-task data offline (Tülu formats)",
        ADAPT_DATA,
    )
    p.epilog = "example:\n  glasslm adapt data --out runs/demo/adapt/data --adapt_data.rl_heldout=256"
    add_out(p)
    add_config_options(p, run_section="adapt_data", wrap="adapt_data")
    from glasslm.adapt import train_cli

    train_cli.register(verbs)


def _data(args: argparse.Namespace) -> int:
    config = resolve_config(DataBuildConfig, args)
    data = build(config.adapt_data)
    with artifacts.create_artifact(args.out, ADAPT_DATA, config=config) as art:
        for name, records in data.files():
            write_jsonl(art.path / name, records)
        art.metrics.update(data.counts)
    counts = ", ".join(f"{k} {v}" for k, v in data.counts.items() if isinstance(v, int))
    print(f"wrote {args.out}: {counts}")
    return 0
