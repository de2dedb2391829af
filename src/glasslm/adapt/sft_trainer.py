"""``glasslm adapt sft``: supervised fine-tuning on chat data: an objective and a batch source for the Trainer.

Conversations are tokenised with the chat template (labels on assistant turns only), shuffled with the
run's seed and packed greedily into rows of ``data.loader.seq_len`` tokens with document masking;
``data.loader.global_batch_size`` rows make one optimizer step.

Loss normalisation (``sft.reduce_loss``): ``mean`` averages over the step's assistant tokens (over all
micro-batches and ranks, so accumulation does not change the objective); ``sum`` is open-instruct's
``reduce_loss: sum`` (Tülu 3): every token weighs the same in every step, whatever the number of
targets in its batch; the sum is divided by the step's fixed row capacity (rows × seq_len) so the
learning rate keeps its meaning.

Before and after training the held-out assistant-token loss is measured, and the share of held-out
prompts whose greedy answer is non-empty and ends its turn with end-of-text (``eos_rate``) within
``sft.eval_max_new_tokens`` tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from glasslm.adapt.base import (
    AdaptConfig,
    AdaptData,
    Stage,
    StageContext,
    StageParts,
    StepItems,
    adapt_trainer,
    split_micro,
)
from glasslm.adapt.formats import load_sft
from glasslm.adapt.sft import IGNORE, Example, collate, pack, sft_loss, tokenize_all
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.model.generate import generate_batch
from glasslm.model.modes import eval_mode
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer
from glasslm.train import distributed
from glasslm.train.batches import StepBatch
from glasslm.train.callbacks import Callback
from glasslm.train.train_model import Micro, TrainModel
from glasslm.train.trainer import Trainer

STAGE = Stage("sft", "sft.jsonl", "sft_heldout.jsonl", headline=("heldout_loss", "eos_rate"))


@dataclass
class SFTOptions:
    reduce_loss: Literal["mean", "sum"] = "mean"
    eval_max_new_tokens: int = 64


@dataclass
class SFTConfig(AdaptConfig):
    sft: SFTOptions = field(default_factory=SFTOptions)


def sft_trainer(
    config: SFTConfig, out: Path, world: distributed.World, resume: str, callbacks: Sequence[Callback] = ()
) -> Trainer:
    """The SFT run's Trainer; ``callbacks`` (e.g. more before/after evaluations) run after the stage's own."""
    return adapt_trainer(STAGE, config, out, world, resume, SFTData, callbacks)


class SFTData:
    """Conversations shuffled with the run's seed, tokenised, packed into rows; the held-out ones."""

    def __init__(self, config: SFTConfig, data: AdaptData, world: distributed.World):
        self.config, self.tok = config, data.tok
        seq_len = config.data.loader.seq_len
        self.quarantine = Quarantine()
        conversations = load_sft(data.train_path, self.quarantine)
        random.Random(config.data.loader.seed).shuffle(conversations)
        self.examples, dropped = tokenize_all(self.tok, conversations, seq_len)
        if not self.examples:
            raise ConfigError(
                f"{data.train_path}: no usable conversation ({self.quarantine.total} quarantined, "
                f"{dropped} with no assistant token within data.loader.seq_len={seq_len})"
            )
        self.rows = pack(self.examples, seq_len)
        self.heldout = (
            load_sft(data.heldout_path, self.quarantine)[: config.data.eval_limit]
            if data.heldout_path
            else []
        )
        loader = config.data.loader
        self.items = StepItems(len(self.rows), loader.global_batch_size, loader, world, data.data_sha256)

    def parts(self, ctx: StageContext) -> StageParts:
        device = ctx.model.world.device
        batches = SFTBatches(self.examples, self.rows, self.items, ctx.micro_batch, self.tok.pad_id, device)
        evaluation = SFTEval(self.heldout, self.config, device)
        return StageParts(SFTObjective(self.config.sft.reduce_loss), batches, evaluation)


class SFTBatches:
    def __init__(
        self,
        examples: list[Example],
        rows: list[list[int]],
        items: StepItems,
        micro_batch: int,
        pad_id: int,
        device: torch.device,
    ):
        self.examples, self.rows, self.items = examples, rows, items
        self.micro_batch, self.pad_id, self.device = micro_batch, pad_id, device

    def batch(self, step: int) -> StepBatch:
        rows = [self.rows[i] for i in self.items.local(step)]
        micros = []
        for part in split_micro(len(rows), self.micro_batch):
            b = collate(self.examples, [rows[i] for i in part], self.items.loader.seq_len, self.pad_id)
            micro = {
                "input_ids": b.input_ids,
                "labels": b.labels,
                "doc_ids": b.doc_ids,
                "position_ids": b.position_ids,
            }
            micros.append({k: v.to(self.device) for k, v in micro.items()})
        return StepBatch(micros)

    def position(self, step: int) -> dict[str, Any]:
        return self.items.position(step)


class SFTObjective:
    """Cross-entropy over assistant tokens, summed; the step divides by its target tokens (``mean``)
    or by its row capacity (``sum``)."""

    def __init__(self, reduce_loss: Literal["mean", "sum"]):
        self.reduce_loss = reduce_loss

    def count(self, micro: Micro) -> int:
        if self.reduce_loss == "sum":
            return micro["labels"].numel()
        return int((micro["labels"] != IGNORE).sum())

    def loss(self, model: TrainModel, micro: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = sft_loss(model.forward(micro), micro["labels"], "sum")
        return ce, {"loss": ce}


class SFTEval:
    """Held-out assistant-token loss, and the share of greedy answers that end their turn (``eos_rate``)."""

    def __init__(self, heldout: list[list[dict[str, str]]], config: SFTConfig, device: torch.device):
        self.heldout, self.config, self.device = heldout, config, device

    @torch.no_grad()
    def evaluate(self, model: OLMo2, tokenizer: Tokenizer) -> dict[str, Any]:
        if not self.heldout:
            return {}
        with eval_mode(model):
            examples, _ = tokenize_all(tokenizer, self.heldout, self.config.data.loader.seq_len)
            total, n = 0.0, 0
            for ex in examples:
                logits = model(torch.tensor([ex.input_ids], device=self.device))
                total += float(sft_loss(logits, torch.tensor([ex.labels], device=self.device), "sum"))
                n += ex.n_targets
        from glasslm.model.generate import SamplingParams

        prompts = [tokenizer.encode_chat(_prompt_of(c), add_generation_prompt=True) for c in self.heldout]
        params = SamplingParams(max_new_tokens=self.config.sft.eval_max_new_tokens, temperature=0.0)
        outs = generate_batch(model, tokenizer, prompts, params)
        # A turn ended properly: something was said, then end-of-text (an empty answer does not count).
        ended = sum(o.finish_reason == "stop" and len(o.token_ids) > 0 for o in outs)
        return {"heldout_loss": total / max(n, 1), "eos_rate": ended / max(len(outs), 1),
                "heldout_conversations": len(examples)}  # fmt: skip

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        return {}


def _prompt_of(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant turn."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last]
