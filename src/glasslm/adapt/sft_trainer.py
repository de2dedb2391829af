"""``glasslm adapt sft``: supervised fine-tuning on chat data, run by the pretraining trainer.

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
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from glasslm.adapt.base import AdaptConfig, AdaptTrainer, generate, split_micro
from glasslm.adapt.formats import load_sft
from glasslm.adapt.sft import IGNORE, collate, pack, sft_loss, tokenize_all
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.model.modes import eval_mode


@dataclass
class SFTOptions:
    reduce_loss: Literal["mean", "sum"] = "mean"
    eval_max_new_tokens: int = 64


@dataclass
class SFTConfig(AdaptConfig):
    sft: SFTOptions = field(default_factory=SFTOptions)


class SFTTrainer(AdaptTrainer):
    stage = "sft"
    data_file, heldout_file = "sft.jsonl", "sft_heldout.jsonl"
    config: SFTConfig

    def load_items(self, config: AdaptConfig) -> None:
        seq_len = config.data.loader.seq_len
        quarantine = Quarantine()
        conversations = load_sft(self.train_path, quarantine)
        random.Random(config.data.loader.seed).shuffle(conversations)
        self.examples, dropped = tokenize_all(self.tok, conversations, seq_len)
        if not self.examples:
            raise ConfigError(
                f"{self.train_path}: no usable conversation ({quarantine.total} quarantined, "
                f"{dropped} with no assistant token within data.loader.seq_len={seq_len})"
            )
        self.rows = pack(self.examples, seq_len)
        self.quarantine, self.dropped = quarantine, dropped
        self.heldout = (
            load_sft(self.heldout_path, quarantine)[: config.data.eval_limit] if self.heldout_path else []
        )

    @property
    def n_items(self) -> int:
        return len(self.rows)

    def _batch(self, step: int) -> dict[str, Any]:
        rows = [self.rows[i] for i in self.local_items(step)]
        seq_len, pad = self.config.data.loader.seq_len, self.tok.pad_id
        micros = []
        for part in split_micro(len(rows), self.micro_batch):
            b = collate(self.examples, [rows[i] for i in part], seq_len, pad)
            micros.append({"input_ids": b.input_ids, "labels": b.labels, "doc_ids": b.doc_ids,
                           "position_ids": b.position_ids})  # fmt: skip
        return {"micros": micros}

    def _count(self, micro: dict[str, torch.Tensor]) -> int:
        if self.config.sft.reduce_loss == "sum":
            return micro["labels"].numel()
        return int((micro["labels"] != IGNORE).sum())

    def _loss(
        self, logits: torch.Tensor, micro: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = sft_loss(logits, micro["labels"], "sum")
        return ce, {"loss": ce}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        if not self.heldout:
            return {}
        model = self.policy
        with eval_mode(model):
            examples, _ = tokenize_all(self.tok, self.heldout, self.config.data.loader.seq_len)
            total, n = 0.0, 0
            for ex in examples:
                logits = model(torch.tensor([ex.input_ids], device=self.world.device))
                total += float(sft_loss(logits, torch.tensor([ex.labels], device=self.world.device), "sum"))
                n += ex.n_targets
        from glasslm.model.generate import SamplingParams

        prompts = [self.tok.encode_chat(_prompt_of(c), add_generation_prompt=True) for c in self.heldout]
        params = SamplingParams(max_new_tokens=self.config.sft.eval_max_new_tokens, temperature=0.0)
        outs = generate(self, prompts, params)
        # A turn ended properly: something was said, then end-of-text (an empty answer does not count).
        ended = sum(o.finish_reason == "stop" and len(o.token_ids) > 0 for o in outs)
        return {"heldout_loss": total / max(n, 1), "eos_rate": ended / max(len(outs), 1),
                "heldout_conversations": len(examples)}  # fmt: skip


def _prompt_of(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant turn."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last]
