"""``glasslm tokenizer train|encode``, ``glasslm data tokenize``, ``glasslm trace batch|doc``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    add_verb,
    emit,
    format_table,
    resolve_config,
    stage_verbs,
)
from glasslm.config import ConfigError
from glasslm.data.tokenize import TokenizeConfig, tokenize
from glasslm.tokenizer import Tokenizer, TokenizerTrainConfig
from glasslm.tokenizer_train import train_tokenizer_artifact


@dataclass
class TokenizeJob:
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "tokenizer", "train and use BPE tokenizers")
    p = add_verb(verbs, "train", _train, "train a byte-level BPE tokenizer on the train split of documents")
    p.add_argument(
        "docs", type=Path, help="mix or documents artifact, run directory, or directory of Dolma shards"
    )
    p.add_argument("--heldout", type=Path, default=None, help="held-out documents for the compression report")
    add_out(p)
    add_config_options(p, run_section="tokenizer", wrap="tokenizer")
    p = add_verb(verbs, "encode", _encode, "show the token ids and tokens of a text")
    p.add_argument("tokenizer", type=Path, help="tokenizer.json, tokenizer artifact or checkpoint")
    p.add_argument("text", help="the text to encode")
    add_json_flag(p)

    verbs = stage_verbs(sub, "data", "curate, mix and tokenize documents")
    p = add_verb(verbs, "tokenize", _tokenize, "documents -> token shards (.npy) with a document index")
    p.add_argument(
        "docs", type=Path, help="mix or documents artifact, run directory, or directory of Dolma shards"
    )
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer artifact or tokenizer.json")
    p.add_argument(
        "--heldout", type=Path, default=None, help="held-out documents (default: the mix's heldout/<source>/)"
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    add_out(p)
    add_config_options(p, run_section="tokenize", wrap="tokenize")

    verbs = stage_verbs(sub, "trace", "trace training data: data order, index and span search")
    for name, handler, text in (
        ("batch", _trace_batch, "the documents (id, source, token span) in one step's batch"),
        ("doc", _trace_doc, "every step in which a document's tokens were seen"),
    ):
        p = add_verb(verbs, name, handler, text)
        p.add_argument(
            "source",
            type=Path,
            metavar="RUN_OR_TOKENS",
            help="training run, run directory or tokens artifact",
        )
        if name == "batch":
            p.add_argument(
                "--step",
                type=int,
                required=True,
                help="training step as in metrics.jsonl (from 1; it read the loader's batch N-1)",
            )
        else:
            p.add_argument("doc_id", help="document id as in the tokens index")
            p.add_argument(
                "--max-steps",
                type=int,
                default=None,
                help="search steps 1..N (default: the steps the run took, else one epoch)",
            )
        p.add_argument("--seq-len", type=int, default=None)
        p.add_argument("--global-batch-size", type=int, default=None)
        p.add_argument("--seed", type=int, default=None)
        add_json_flag(p)


def _train(args: argparse.Namespace) -> int:
    config = resolve_config(TokenizerTrainConfig, args)
    metrics = train_tokenizer_artifact(args.docs, args.out, config, heldout=args.heldout)
    rows = [{"source": s, **v} for s, v in metrics["compression"].items()]
    print(
        f"wrote {args.out}: {metrics['vocab_size']:,} tokens (model vocab {metrics['padded_vocab_size']:,}), "
        f"BPE training {metrics['bpe_train_seconds']:.2f} s"
    )
    print(f"bytes per token on the {metrics['compression_split']} documents:")
    print(format_table(rows, ["source", "docs", "bytes", "tokens", "bytes_per_token"]))
    return 0


def _encode(args: argparse.Namespace) -> int:
    tok = Tokenizer.from_file(args.tokenizer)
    ids = tok.encode(args.text)
    data = {
        "ids": ids,
        "tokens": [tok.hf.id_to_token(i) for i in ids],
        "count": len(ids),
        "bytes": len(args.text.encode("utf-8")),
    }

    def render(d: dict[str, Any]) -> str:
        table = format_table([{"id": i, "token": t} for i, t in zip(d["ids"], d["tokens"], strict=True)])
        return f"{d['count']} tokens for {d['bytes']} bytes\n{table}"

    emit(args, data, render)
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    job = resolve_config(TokenizeJob, args)
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        job.tokenize.workers = args.workers
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


def _trace_source(args: argparse.Namespace) -> Any:
    from glasslm.trace import order

    flags = {"seq_len": args.seq_len, "global_batch_size": args.global_batch_size, "seed": args.seed}
    return order.resolve(args.source, flags)


def _trace_batch(args: argparse.Namespace) -> int:
    from glasslm.trace import order

    source = _trace_source(args)
    if args.step < 1:
        raise ConfigError(f"--step counts from 1 (as in metrics.jsonl), got {args.step}")
    data = {
        "tokens": str(source.tokens),
        "run": str(source.run) if source.run else None,
        **order.batch_docs(order.open_loader(source), args.step),
    }

    def render(d: dict[str, Any]) -> str:
        head = (
            f"step {d['step']} (loader batch {d['batch_index']}, epoch {d['epoch']}): "
            f"{len(d['instances'])} instances, {len(d['documents'])} document spans"
        )
        cols = ["slot", "instance", "doc_id", "source", "doc_start", "doc_end", "doc_tokens"]
        return head + "\n" + format_table(d["documents"], cols)

    emit(args, data, render)
    return 0


def _trace_doc(args: argparse.Namespace) -> int:
    from glasslm.trace import order

    source = _trace_source(args)
    loader = order.open_loader(source)
    max_steps = args.max_steps if args.max_steps is not None else (source.run_steps or loader.steps_per_epoch)
    try:
        result = order.doc_steps(loader, args.doc_id, max_steps)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    data = {"tokens": str(source.tokens), "run": str(source.run) if source.run else None, **result}

    def render(d: dict[str, Any]) -> str:
        head = (
            f"{d['doc_id']} ({d['source']}, {d['tokens']} tokens, {d['tokens_in_instances']} in instances): "
            f"seen in {len(d['seen'])} batch slots within steps 1..{d['max_steps']}"
        )
        return (
            head
            + "\n"
            + format_table(d["seen"], ["step", "epoch", "slot", "instance", "doc_start", "doc_end"])
        )

    emit(args, data, render)
    return 0
