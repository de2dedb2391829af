"""Training a byte-level BPE tokenizer (``glasslm tokenizer train``): the runtime tokenizer is
``glasslm/tokenizer.py``; this module trains one and writes it as a ``tokenizer`` artifact.

Kept apart from the runtime so that the tokenizer the data and model code load imports no data code
(``data/tokenize.py`` imports ``tokenizer``; training reads documents through ``data/``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from glasslm import artifacts
from glasslm.data.documents import Location, iter_documents
from glasslm.tokenizer import (
    CHAT_TEMPLATE,
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS,
    BPEConfig,
    Tokenizer,
    TokenizerTrainConfig,
    new_bpe,
)


def bpe_trainer(config: BPEConfig) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..4, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so nothing is ever unknown
        show_progress=False,
    )


# Longest pre-tokenized word the trainer sees, in byte-level symbols. BPE training re-counts a word's
# pairs at every merge that touches it, so one 300 KB line (minified code, base64, "xxxx…") made as
# one word took 82 s against 0.004 s without it (tokenizers' max_token_length does not help: it limits
# tokens, not words). Words are cut into pieces this long for training only; the runtime pre-tokenizer
# is unchanged. The default corpus's longest word is 93 symbols, so its tokenizer is the same bytes.
MAX_TRAINING_WORD = 256


def train_bpe(texts: Iterable[Sequence[str]], config: BPEConfig) -> HFTokenizer:
    """Train on batches of texts. Deterministic: the same texts in the same order give the same file."""
    tok = new_bpe()
    runtime = tok.pre_tokenizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [runtime, pre_tokenizers.Split(Regex(f".{{1,{MAX_TRAINING_WORD}}}"), behavior="isolated")]
    )
    tok.train_from_iterator(texts, trainer=bpe_trainer(config))
    tok.pre_tokenizer = runtime
    return tok


def _text_batches(
    shards: Sequence[Location], max_bytes: int | None, batch: int = 1000
) -> Iterator[list[str]]:
    seen = 0
    buf: list[str] = []
    for shard in shards:
        for _, doc in iter_documents(shard):
            buf.append(doc["text"])
            seen += len(doc["text"].encode("utf-8"))
            if len(buf) >= batch:
                yield buf
                buf = []
            if max_bytes is not None and seen >= max_bytes:
                if buf:
                    yield buf
                return
    if buf:
        yield buf


def bytes_per_token(
    tok: Tokenizer, shards: Sequence[Location], max_bytes_per_source: int
) -> dict[str, dict[str, float]]:
    """UTF-8 bytes per token (EOS not counted) per document source: the compression report."""
    totals: dict[str, list[int]] = {}
    for shard in shards:
        texts: dict[str, list[str]] = {}
        for _, doc in iter_documents(shard):
            source = doc.get("source") or "unknown"
            seen = totals.setdefault(source, [0, 0, 0])
            if seen[0] < max_bytes_per_source:
                texts.setdefault(source, []).append(doc["text"])
                seen[0] += len(doc["text"].encode("utf-8"))
        for source, batch in texts.items():
            totals[source][1] += sum(
                len(e.ids) for e in tok.hf.encode_batch_fast(batch, add_special_tokens=False)
            )
            totals[source][2] += len(batch)
    return {
        s: {"bytes": b, "tokens": t, "docs": d, "bytes_per_token": round(b / t, 4) if t else 0.0}
        for s, (b, t, d) in sorted(totals.items())
    }


def train_tokenizer_artifact(
    docs: str | Path, out: str | Path, config: TokenizerTrainConfig, heldout: str | Path | None = None
) -> dict[str, Any]:
    """Train on the train split of ``docs``; write tokenizer.json + chat template as a ``tokenizer`` artifact."""
    from glasslm.data.tokenize import find_inputs  # numpy/pyarrow and torch: only when training
    from glasslm.model.presets import pad_vocab

    config.tokenizer.validate()
    inputs = find_inputs(docs, heldout)
    started = time.perf_counter()
    hf = train_bpe(_text_batches(inputs.train, config.tokenizer.max_train_bytes), config.tokenizer)
    train_seconds = time.perf_counter() - started
    refs = [inputs.artifact] if inputs.artifact is not None else []
    with artifacts.create_artifact(out, "tokenizer", config=config, inputs=refs) as art:
        # The config is exactly what `--config` takes (glasslm reproduce re-runs with it); where the
        # documents came from is in `inputs`, and here too when they were a plain folder.
        art.extra["read_from"] = {
            "docs": str(Path(docs).resolve()),
            "heldout": str(inputs.heldout_root) if inputs.heldout_root else None,
        }
        hf.save(str(art.path / "tokenizer.json"))
        (art.path / CHAT_TEMPLATE_FILE).write_text(CHAT_TEMPLATE)
        tok = Tokenizer.from_file(art.path)
        eval_shards = [p for p, _ in inputs.heldout] or list(inputs.train)
        art.metrics.update(
            {
                "vocab_size": tok.vocab_size,
                "padded_vocab_size": pad_vocab(tok.vocab_size),
                "special_ids": {t: tok.hf.token_to_id(t) for t in SPECIAL_TOKENS},
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "bpe_train_seconds": round(train_seconds, 3),
                "compression_split": "heldout" if inputs.heldout else "train",
                "compression": bytes_per_token(tok, eval_shards, config.tokenizer.max_eval_bytes),
            }
        )
        metrics = dict(art.metrics)
    return metrics


def import_tokenizer_artifact(file: str | Path, out: str | Path) -> dict[str, Any]:
    """A given ``tokenizer.json`` (OLMo-2's, say) as a ``tokenizer`` artifact, instead of training one.

    The file is recorded as a file input (its path and sha256), so lineage reaches it and ``manifest
    verify`` notices when it changes; a chat template beside it is kept, else ours is written."""
    from glasslm.model.presets import pad_vocab

    source = Path(file)
    if not source.is_file():
        raise artifacts.ArtifactError(f"tokenizer.file: {source} is not a file (expected a tokenizer.json)")
    try:
        tok = Tokenizer.from_file(source)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise artifacts.ArtifactError(f"{source}: not a usable tokenizer.json ({e})") from None
    sha256 = artifacts.sha256_file(source)
    ref = {"path": str(source.resolve()), "kind": artifacts.FILE_INPUT, "sha256": sha256}
    with artifacts.create_artifact(out, "tokenizer", inputs=[ref]) as art:
        art.extra["imported_from"] = {"path": str(source.resolve()), "sha256": sha256}
        shutil.copyfile(source, art.path / "tokenizer.json")
        (art.path / CHAT_TEMPLATE_FILE).write_text(tok.chat_template)
        art.metrics.update(
            {
                "vocab_size": tok.vocab_size,
                "padded_vocab_size": pad_vocab(tok.vocab_size),
                "special_ids": {t: tok.hf.token_to_id(t) for t in SPECIAL_TOKENS},
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "imported": True,
            }
        )
        metrics = dict(art.metrics)
    return metrics
