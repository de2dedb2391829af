"""``glasslm data tokenize`` (the verbs of the ``data`` group: ``data/cli.py``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from glasslm.clitools import (
    add_config_options,
    add_no_progress,
    add_out,
    add_verb,
    format_table,
    local_path,
    resolve_config,
)
from glasslm.config import ConfigError
from glasslm.data.documents import location
from glasslm.data.tokenize import TokenizeConfig, tokenize


@dataclass
class TokenizeJob:
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)


def add_verbs(verbs: Any) -> None:
    p = add_verb(
        verbs, "tokenize", _tokenize, "documents -> token shards (.npy) with a document index", "tokens"
    )
    p.add_argument(
        "docs", type=location, help="mix or documents artifact, run directory, or directory of Dolma shards"
    )
    p.add_argument("--tokenizer", type=local_path, required=True, help="tokenizer artifact or tokenizer.json")
    p.add_argument(
        "--heldout",
        type=local_path,
        default=None,
        help="held-out documents (default: the mix's heldout/<source>/)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    p.add_argument(
        "--executor", choices=["local", "process", "ray"], default=None, help="default: tokenize.executor"
    )
    add_no_progress(p)
    add_out(p, urls=True)
    add_config_options(p, run_section="tokenize", wrap="tokenize")


def _tokenize(args: argparse.Namespace) -> int:
    job = resolve_config(TokenizeJob, args)
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        job.tokenize.workers = args.workers
    if args.executor is not None:
        job.tokenize.executor = args.executor
    m = tokenize(args.docs, args.tokenizer, args.out, job.tokenize, heldout=args.heldout)
    rows = [{"split": s, **v} for s, v in m["splits"].items()]
    print(
        f"wrote {args.out}: {m['dtype']} tokens, vocab {m['vocab_size']:,}, {m['seconds']:.2f} s "
        f"({m['mb_per_s']} MB/s with {m['workers']} workers)"
    )
    print(format_table(rows, ["split", "docs", "tokens", "bytes", "parts"]))
    if m["dropped_heldout_overlap"]:
        print(f"dropped {m['dropped_heldout_overlap']} training documents equal to held-out ones")
    if m["quarantined"]:
        print(
            f"quarantined lines: {m['quarantined']} {m['quarantined_by_reason']} (see {args.out}/quarantine.jsonl)"
        )
    return 0
