"""Supervised fine-tuning, data side and loss: chat tokenisation with assistant-only labels, packing.

A conversation is rendered with the chat template (``glasslm.tokenizer.format_chat``, OLMo-2-Instruct's)
and tokenised by ``Tokenizer.encode_chat_with_offsets``, so training sees exactly the ids ``encode_chat``
gives at inference (message contents as plain text, special tokens only from the template). Labels keep
the tokens that start inside an assistant turn's text (its content, the end-of-text that closes it, and
the newline after it, as open-instruct trains them) and set the rest, including the ``<|assistant|>\\n``
header, to -100.

Packing puts several conversations in one fixed-length row; ``doc_ids`` keep attention inside each
conversation and ``position_ids`` restart at each (``model.olmo2.document_mask``), so a packed row
computes the same loss as the conversations one by one (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from glasslm.tokenizer import EOS, Tokenizer, format_chat

IGNORE = -100


def chat_text_and_spans(
    messages: Sequence[Mapping[str, str]], eos: str = EOS, first_trained: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The templated text and the character spans [start, end) trained on: the assistant turns from
    message index ``first_trained`` on (DPO trains only the response, not assistant turns in its prompt)."""
    parts: list[str] = [eos]
    spans: list[tuple[int, int]] = []
    pos = len(eos)
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "assistant" and i >= first_trained:
            header = "<|assistant|>\n"
            body = m["content"] + eos + ("" if last else "\n")
            spans.append((pos + len(header), pos + len(header) + len(body)))
            piece = header + body
        elif m["role"] == "assistant":
            piece = f"<|assistant|>\n{m['content']}{eos}" + ("" if last else "\n")
        else:
            piece = f"<|{m['role']}|>\n{m['content']}\n"
        parts.append(piece)
        pos += len(piece)
    text = "".join(parts)
    if text != format_chat(messages, eos=eos):  # one template, two renderings: never let them drift
        raise AssertionError("chat_text_and_spans disagrees with tokenizer.format_chat")
    return text, spans


@dataclass
class Example:
    """One conversation, shifted for next-token prediction: ``labels[t]`` is the target after ``input_ids[t]``."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def tokenize_conversation(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], max_len: int, first_trained: int = 0
) -> Example | None:
    """Token ids (identical to ``encode_chat``) with assistant-only targets; None if nothing is left to
    train on after truncation to ``max_len`` input tokens."""
    _, spans = chat_text_and_spans(messages, first_trained=first_trained)
    # encode_chat's ids, so a special-token string inside a message is trained on as text, as it is served.
    ids, offsets = tokenizer.encode_chat_with_offsets(messages)
    trainable = [any(s <= start < e for s, e in spans) for start, _ in offsets]
    ids, trainable = ids[: max_len + 1], trainable[: max_len + 1]
    labels = [tok if keep else IGNORE for tok, keep in zip(ids[1:], trainable[1:], strict=True)]
    example = Example(input_ids=ids[:-1], labels=labels)
    return example if example.n_targets > 0 else None


def tokenize_all(
    tokenizer: Tokenizer, conversations: Iterable[Sequence[Mapping[str, str]]], max_len: int
) -> tuple[list[Example], int]:
    """(examples, number dropped because no assistant token survived truncation)."""
    out, dropped = [], 0
    for messages in conversations:
        ex = tokenize_conversation(tokenizer, messages, max_len)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


def tokenize_whole(
    tokenizer: Tokenizer, conversations: Iterable[Sequence[Mapping[str, str]]], max_len: int
) -> tuple[list[Example], int]:
    """As :func:`tokenize_all`, but a conversation longer than ``max_len`` input tokens is left out
    (and counted) instead of cut: for chat mixed into another objective, where a reply cut short
    would teach the model that its turns never end."""
    examples, dropped = tokenize_all(tokenizer, conversations, max_len + 1)
    whole = [ex for ex in examples if len(ex.input_ids) <= max_len]
    return whole, dropped + len(examples) - len(whole)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (rows, seq_len)
    labels: torch.Tensor
    doc_ids: torch.Tensor  # conversation index within the row; padding gets its own id
    position_ids: torch.Tensor

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            *(t.to(device) for t in (self.input_ids, self.labels, self.doc_ids, self.position_ids))
        )

    @property
    def n_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


def pack(examples: Sequence[Example], seq_len: int) -> list[list[int]]:
    """Greedy packing in order: indices of the examples in each row (each row's total ≤ seq_len)."""
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len}: tokenise with max_len=seq_len")
        if current and used + n > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    return rows


def collate(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int
) -> PackedBatch:
    """Tensors for the given packed rows (padding: pad_id input, IGNORE label, a doc id of its own)."""
    B = len(rows)
    input_ids = torch.full((B, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((B, seq_len), IGNORE, dtype=torch.long)
    doc_ids = torch.full((B, seq_len), -1, dtype=torch.long)
    position_ids = torch.zeros((B, seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        pos = 0
        for d, idx in enumerate(row):
            ex = examples[idx]
            n = len(ex.input_ids)
            input_ids[r, pos : pos + n] = torch.tensor(ex.input_ids)
            labels[r, pos : pos + n] = torch.tensor(ex.labels)
            doc_ids[r, pos : pos + n] = d
            position_ids[r, pos : pos + n] = torch.arange(n)
            pos += n
        doc_ids[r, pos:] = len(row)  # padding attends only to padding
        position_ids[r, pos:] = torch.arange(seq_len - pos)
    return PackedBatch(input_ids, labels, doc_ids, position_ids)


Reduction = Literal["mean", "sum"]


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy over assistant tokens.

    ``mean``: average over the batch's target tokens. ``sum``: open-instruct's ``reduce_loss: sum``
    (Tülu 3's choice), the plain sum over target tokens, so every token weighs the same whatever the
    length of its conversation or the number of targets in its batch; the caller divides by a constant
    (the trainer divides by its tokens-per-step budget) to keep the learning rate meaningful.
    """
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )
