"""``glasslm tokenizer train|encode|import``: train a BPE tokenizer, inspect one, or import a given one."""

from __future__ import annotations

import argparse
from typing import Any

from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    add_verb,
    emit,
    format_table,
    local_path,
    resolve_config,
    stage_verbs,
)
from glasslm.tokenizer import Tokenizer, TokenizerTrainConfig


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "tokenizer", "train and use BPE tokenizers")
    p = add_verb(
        verbs,
        "train",
        _train,
        "train a byte-level BPE tokenizer on the train split of documents",
        "tokenizer",
    )
    p.add_argument(
        "docs", type=local_path, help="mix or documents artifact, run directory, or directory of Dolma shards"
    )
    p.add_argument(
        "--heldout", type=local_path, default=None, help="held-out documents for the compression report"
    )
    add_out(p)
    add_config_options(p, run_section="tokenizer", wrap="tokenizer")
    p = add_verb(verbs, "encode", _encode, "show the token ids and tokens of a text")
    p.add_argument("tokenizer", type=local_path, help="tokenizer.json, tokenizer artifact or checkpoint")
    p.add_argument("text", help="the text to encode")
    add_json_flag(p)
    p = add_verb(
        verbs,
        "import",
        _import,
        "use a given tokenizer.json (OLMo-2's, say) as a tokenizer artifact instead of training one",
        "tokenizer",
    )
    p.add_argument("file", type=local_path, help="the tokenizer.json to use")
    add_out(p)


def _train(args: argparse.Namespace) -> int:
    from glasslm.tokenizer_train import train_tokenizer_artifact

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


def _import(args: argparse.Namespace) -> int:
    from glasslm.tokenizer_train import import_tokenizer_artifact

    metrics = import_tokenizer_artifact(args.file, args.out)
    print(
        f"wrote {args.out}: {metrics['vocab_size']:,} tokens (model vocab {metrics['padded_vocab_size']:,}) "
        f"from {args.file}"
    )
    return 0
