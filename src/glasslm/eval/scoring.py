"""Log-likelihood of continuations given contexts, batched, with each shared prefix run once.

The requests of one multiple-choice example share their context (ranked classification) or their
continuation after different contexts (WinoGrande's partial scoring). Instead of running every
(context, continuation) sequence separately, as lm-evaluation-harness does, we pack a group into one
row as a *prefix tree*: the longest common token prefix once, then each sequence's remaining tokens
one after another. An attention mask lets each suffix see the shared prefix and its own earlier
tokens only, and position ids restart after the prefix, so every suffix token sees exactly what it
would see in its own sequence. For 5-shot prompts with four choices this computes about a quarter
of the tokens; the result equals the plain per-sequence computation up to float rounding (tested).

Tokenisation follows lm-evaluation-harness (``HFLM._encode_pair``): spaces at the end of the context
move to the continuation, the pair is encoded whole, and the continuation is what follows the
encoded context. So both harnesses score the same token ids.

Two more savings, both exact:

- *The task's shared prefix, once.* OLMES k-shot prompts use the same fixed shots for every example
  of a task, so every sequence of a ``score_groups`` call usually starts with the same few hundred
  tokens. Their keys and values are computed once (batch 1) and every batch attends to them through a
  KV cache whose prefix is broadcast over the batch; only the tokens after it go through the model.
  Left-truncated sequences (too long for the model) start elsewhere and are scored without it.
- *The LM head where it is read.* Only the positions that predict continuation tokens go through the
  head and the fp32 log-softmax (lm-evaluation-harness computes the log-softmax over every position).
  Rows with no sharing inside them (one plain causal sequence) are batched apart and run with no
  explicit mask, so attention takes the fused causal kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glasslm.model.kv_cache import StaticKVCache
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer


@dataclass(frozen=True)
class Scored:
    """Log-probability (nats) of one continuation, its length in tokens, and whether greedy."""

    logprob: float
    n_tokens: int
    greedy: bool


class ScoringError(ValueError):
    """A request that cannot be scored (e.g. a continuation longer than the model's context)."""


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, prefix_id: int
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-evaluation-harness splits them."""
    context, continuation = _split_space(context, continuation)
    if not context:
        # Nothing to condition on: lm-eval conditions on the EOS/BOS token; so do we.
        return [prefix_id], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def encode_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], prefix_id: int
) -> list[tuple[list[int], list[int]]]:
    """``encode_pair`` for many pairs at once: one batched tokenizer call, each distinct context
    encoded once (the choices of an example share theirs)."""
    split = [_split_space(c, t) for c, t in pairs]
    contexts = sorted({c for c, _ in split if c})
    ctx_ids = dict(zip(contexts, tokenizer.encode_batch(contexts), strict=True))
    wholes = tokenizer.encode_batch([c + t for c, t in split])
    out = []
    for (context, _), whole in zip(split, wholes, strict=True):
        if not context:
            out.append(([prefix_id], whole))  # the continuation alone, after EOS (see encode_pair)
        else:
            ctx = ctx_ids[context]
            out.append((ctx, whole[len(ctx) :]))
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


@dataclass
class _Row:
    """One packed row: token ids, position ids, which segment each token belongs to, and for each
    request of the group the row indices whose logits predict its continuation tokens."""

    ids: list[int]
    pos: list[int]
    seg: list[int]  # 0 = shared prefix, i+1 = suffix of request i
    gather: list[tuple[int, list[int], list[int]]]  # (request index, row positions, target ids)
    truncated: bool = False  # a context was left-truncated: the row does not start the task's way

    @property
    def n_shared(self) -> int:
        """Tokens of the group's shared prefix (segment 0) at the start of the row."""
        return self.seg.count(0)

    @property
    def first_scored(self) -> int:
        return min(positions[0] for _, positions, _ in self.gather)


def _pack(
    pairs: Sequence[tuple[list[int], list[int]]], index: Sequence[int], truncated: bool = False
) -> _Row:
    # The input of a sequence is everything but its last token (its logits would predict nothing).
    inputs = [ctx + cont[:-1] for ctx, cont in pairs]
    p = _common_prefix(inputs)
    ids, pos, seg = list(inputs[0][:p]), list(range(p)), [0] * p
    gather = []
    for k, ((ctx, cont), inp) in enumerate(zip(pairs, inputs, strict=True)):
        offset = len(ids)
        suffix = inp[p:]
        ids += suffix
        pos += range(p, p + len(suffix))
        seg += [k + 1] * len(suffix)
        # Position j of this sequence sits at row index j (j < p) or offset + j - p.
        rows = [j if j < p else offset + j - p for j in range(len(ctx) - 1, len(inp))]
        gather.append((index[k], rows, list(cont)))
    return _Row(ids, pos, seg, gather, truncated)


def _batch_mask(seg: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) mask from segment ids: causal; a suffix sees the shared prefix (segment 0) and
    itself, never another suffix. Padding carries a distinct negative segment per position, so it
    attends to itself only (no softmax row is empty, which would give NaN) and nobody attends to it."""
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    visible = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    return (causal & visible)[:, None]


class _PrefixCache:
    """The keys and values of one prefix (batch 1), shared by every row of a batch (a ``KVCache``:
    ``length`` counts the prefix, then this batch's tokens once its forward is done).

    ``update`` broadcasts the prefix over the batch (a stride-0 ``expand``) and joins the new tokens'
    keys and values to it. Attention takes one key tensor, so that join writes the prefix's keys and
    values out per row (a copy of B·P·kv_dim numbers per layer, no recomputation); nothing is stored,
    so one prefix serves every batch."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):  # (layers, 1, kv heads, prefix, head dim)
        self.k, self.v = k, v
        self.length = self.max_len = k.shape[3]

    def for_batch(self) -> _PrefixCache:
        return _PrefixCache(self.k, self.v)  # a fresh length: the model advances it per forward

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = k.shape[0]
        pk, pv = self.k[layer].expand(B, -1, -1, -1), self.v[layer].expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, tokens: int) -> None:
        self.length += tokens


class Scorer:
    """Scores groups of (context ids, continuation ids) with one forward pass per packed group."""

    # Below this many shared tokens a separate prefix pass is not worth its overhead.
    MIN_SHARED_PREFIX = 16

    def __init__(
        self, model: OLMo2, batch_tokens: int = 8192, max_len: int | None = None, share_prefix: bool = True
    ):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.batch_tokens = batch_tokens
        self.share_prefix = share_prefix
        self.forward_tokens = 0  # tokens actually run through the model (for the efficiency report)

    def score_groups(self, groups: Sequence[Sequence[tuple[list[int], list[int]]]]) -> list[list[Scored]]:
        """``groups[g][i]`` is (context ids, continuation ids); returns a Scored for each, same shape."""
        flat: list[tuple[list[int], list[int]]] = []
        rows: list[_Row] = []
        for group in groups:
            start = len(flat)
            fitted = [self._fit(ctx, cont) for ctx, cont in group]
            pairs = [pair for pair, _ in fitted]
            cut = any(c for _, c in fitted)
            flat += pairs
            index = list(range(start, start + len(pairs)))
            packed = _pack(pairs, index, cut)
            if len(packed.ids) <= self.max_len:
                rows.append(packed)
            else:  # too long to share: each sequence on its own (each fits by _fit)
                rows += [_pack([pair], [i], c) for (pair, c), i in zip(fitted, index, strict=True)]
        results: list[Scored | None] = [None] * len(flat)
        shared, alone = self._split_shared(rows)
        cache = self._prefix_cache(shared[0].ids[: self._prefix_len(shared)]) if shared else None
        for part, part_cache in ((shared, cache), (alone, None)):
            # Plain causal rows need no mask (the fused kernel); the rest are batched apart from them.
            causal = [r for r in part if r.n_shared == len(r.ids)]
            tree = [r for r in part if r.n_shared != len(r.ids)]
            for batch in self._batches(causal) + self._batches(tree):
                self._run(batch, results, part_cache)
        out, k = [], 0
        for group in groups:
            out.append([results[k + i] for i in range(len(group))])
            k += len(group)
        return out  # type: ignore[return-value]

    def _split_shared(self, rows: list[_Row]) -> tuple[list[_Row], list[_Row]]:
        """(rows that start with the task's shared prefix, the others)."""
        if not self.share_prefix:
            return [], rows
        whole = [r for r in rows if not r.truncated]
        if len(whole) < 2 or self._prefix_len(whole) < self.MIN_SHARED_PREFIX:
            return [], rows
        return whole, [r for r in rows if r.truncated]

    @staticmethod
    def _prefix_len(rows: Sequence[_Row]) -> int:
        """Tokens every row starts with, within each row's own shared segment and before the first
        position whose logits are read (the prefix pass computes no logits)."""
        limit = min(min(r.n_shared, r.first_scored) for r in rows)
        return min(limit, _common_prefix([r.ids[:limit] for r in rows]))

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Longest first, so each batch holds rows of similar length (little padding)."""
        out: list[list[_Row]] = []
        batch: list[_Row] = []
        for row in sorted(rows, key=lambda r: -len(r.ids)):
            longest = len(batch[0].ids) if batch else len(row.ids)
            if batch and (len(batch) + 1) * longest > self.batch_tokens:
                out.append(batch)
                batch = []
            batch.append(row)
        return out + [batch] if batch else out

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[tuple[list[int], list[int]], bool]:
        """Left-truncate the context so the sequence's input fits the model (as lm-eval does);
        returns the pair and whether it was cut."""
        if not cont:
            raise ScoringError("empty continuation: every choice must encode to at least one token")
        if len(cont) > self.max_len:
            raise ScoringError(
                f"continuation of {len(cont)} tokens exceeds the model's context {self.max_len}"
            )
        keep = self.max_len + 1 - len(cont)
        return ((ctx[-keep:], cont), True) if len(ctx) > keep else ((ctx, cont), False)

    @torch.inference_mode()
    def _prefix_cache(self, prefix: list[int]) -> _PrefixCache:
        cache = StaticKVCache(self.model.config, 1, len(prefix), self.device, self.dtype)
        ids = torch.tensor([prefix], device=self.device)
        self.model.hidden(ids, cache=cache)  # fills the cache; the head is not needed
        self.forward_tokens += len(prefix)
        return _PrefixCache(cache.k, cache.v)

    @torch.inference_mode()
    def _run(self, batch: Sequence[_Row], results: list[Scored | None], prefix: _PrefixCache | None) -> None:
        P = prefix.length if prefix is not None else 0
        length = max(len(r.ids) for r in batch) - P
        ids = torch.zeros(len(batch), length, dtype=torch.long)
        pos = torch.zeros(len(batch), length, dtype=torch.long)
        seg = -torch.arange(1, length + 1).repeat(len(batch), 1)  # padding: its own segment per position
        rows, cols, targets, owners = [], [], [], []
        for b, row in enumerate(batch):
            n = len(row.ids) - P
            ids[b, :n] = torch.tensor(row.ids[P:])
            pos[b, :n] = torch.tensor(row.pos[P:])
            seg[b, :n] = torch.tensor(row.seg[P:])
            for index, positions, target in row.gather:
                rows += [b] * len(positions)
                cols += [c - P for c in positions]
                targets += target
                owners.append((index, len(target)))
        self.forward_tokens += sum(len(r.ids) - P for r in batch)
        dev = self.device
        if all(r.n_shared == len(r.ids) for r in batch):
            # One causal sequence per row: right padding is never attended to by a real token, so no
            # mask is needed (None lets the model take the fused causal path, or its own prefix mask).
            mask = None
        else:
            mask = _batch_mask(seg)
            if P:  # every token sees the whole shared prefix
                mask = torch.cat([torch.ones(len(batch), 1, length, P, dtype=torch.bool), mask], dim=-1)
            mask = mask.to(dev)
        cache = prefix.for_batch() if prefix is not None else None
        position_ids = (
            pos.to(dev) if mask is not None else None
        )  # causal rows: P, P+1, … (the model's default)
        hidden = self.model.hidden(ids.to(dev), position_ids=position_ids, attn_mask=mask, cache=cache)
        # Only the positions that predict continuation tokens go through the head and the fp32
        # log-softmax.
        sel = self.model.lm_head(
            hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        ).float()
        tgt = torch.tensor(targets, device=dev)
        lp = F.log_softmax(sel, dim=-1).gather(-1, tgt[:, None]).squeeze(-1).double().cpu()
        hit = (sel.argmax(-1) == tgt).cpu()
        k = 0
        for index, n in owners:
            results[index] = Scored(
                logprob=float(lp[k : k + n].sum()), n_tokens=n, greedy=bool(hit[k : k + n].all())
            )
            k += n


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Negative log-likelihood in nats over a text of ``n_bytes`` UTF-8 bytes, as bits per byte."""
    return nats / (n_bytes * math.log(2)) if n_bytes else float("nan")
