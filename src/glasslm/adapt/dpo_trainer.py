"""``glasslm adapt dpo``: preference optimisation of a model against itself as the frozen reference.

The reference log-probabilities of every training and held-out pair are computed once, before the
first step, with the initial model, and cached in the run (``RUN/reference_logprobs.safetensors``,
keyed by the data files' and the initial model's hashes), so training needs one model in memory and
one forward per pair side; a resumed run reads the cache.

Held-out evaluation, before and after: ``reward_accuracy`` (share of pairs whose implicit reward
β·(log π − log π_ref) is higher for the chosen answer; 0 before training, where π = π_ref and every
pair ties), ``reward_margin``, and ``logp_accuracy``, the share of pairs where the model itself gives
the chosen answer the higher (sum or per-token, per ``dpo.loss_type``) log-probability.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from glasslm import artifacts
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
from glasslm.adapt.dpo import (
    DEFAULT_BETA,
    DPOOutput,
    PairExample,
    collate_pairs,
    dpo_loss,
    policy_logps,
    reference_logprobs,
    response_sums,
    token_logprobs,
    tokenize_pair,
)
from glasslm.adapt.formats import load_preferences
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.modes import eval_mode
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer
from glasslm.train import distributed
from glasslm.train.batches import StepBatch
from glasslm.train.callbacks import Callback
from glasslm.train.train_model import Micro, TrainModel
from glasslm.train.trainer import Trainer

STAGE = Stage("dpo", "dpo.jsonl", "dpo_heldout.jsonl", headline=("reward_accuracy",))
REFERENCE_CACHE = "reference_logprobs.safetensors"
CACHE_KEY = "glasslm_cache_key"  # what the cached log-probs were computed from (JSON, sorted keys)


@dataclass
class DPOOptions:
    loss_type: Literal["dpo", "dpo_norm"] = "dpo_norm"  # Tülu 3's length-normalised DPO
    beta: float | None = None  # None: 0.1 for dpo, 5 for dpo_norm
    reference_batch_size: int = 16  # pairs per forward when computing the reference cache
    # Weight of the chosen response's negative log-likelihood per token added to each pair's loss
    # (RPO: Pang et al. 2024; Liu et al. 2024). DPO alone lowers the chosen answers' likelihood along
    # with the rejected ones', which the chat suite sees as a worse held-out assistant loss (#17).
    # 1: RPO's own setting; configs/tiny.yaml measures 4 (docs/adaptation.md).
    nll_coef: float = 1.0
    # Whether the end-of-turn token counts in the DPO margin (it always counts in the NLL term). Both
    # answers of a pair end their turn, so it carries no preference; but under dpo_norm each token
    # weighs 1/length, and the rejected answers are shorter (median 29 vs 41 tokens), so the margin
    # pushes the end of turn down after them more than up after the chosen ones, and the chat suite's
    # end-of-turn rate fell 0.03-0.06 (configs/cpu-1h.yaml, README Adaptation).
    margin_end_of_turn: bool = True

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss_type]


@dataclass
class DPOConfig(AdaptConfig):
    dpo: DPOOptions = field(default_factory=DPOOptions)

    def validate(self) -> None:
        super().validate()
        if self.dpo.nll_coef < 0:
            raise ConfigError(f"dpo.nll_coef must be >= 0, got {self.dpo.nll_coef}")


def dpo_trainer(
    config: DPOConfig, out: Path, world: distributed.World, resume: str, callbacks: Sequence[Callback] = ()
) -> Trainer:
    """The DPO run's Trainer; ``callbacks`` (e.g. more before/after evaluations) run after the stage's own."""
    return adapt_trainer(STAGE, config, out, world, resume, DPOData, callbacks)


def _tokenize_pairs(
    tok: Tokenizer, seq_len: int, path: Path, limit: int | None, quarantine: Quarantine
) -> list[PairExample]:
    prefs = load_preferences(path, quarantine)[:limit]
    return [p for p in (tokenize_pair(tok, pref, seq_len) for pref in prefs) if p is not None]


class DPOData:
    """Training and held-out preference pairs; with the model, their reference log-probs."""

    def __init__(self, config: DPOConfig, data: AdaptData, world: distributed.World):
        self.config, self.data, self.world = config, data, world
        self.quarantine = Quarantine()
        seq_len = config.data.loader.seq_len
        self.pairs = _tokenize_pairs(data.tok, seq_len, data.train_path, None, self.quarantine)
        if not self.pairs:
            raise ConfigError(
                f"{data.train_path}: no usable preference pair ({self.quarantine.total} quarantined)"
            )
        self.heldout_pairs = (
            _tokenize_pairs(data.tok, seq_len, data.heldout_path, config.data.eval_limit, self.quarantine)
            if data.heldout_path
            else []
        )
        loader = config.data.loader
        self.items = StepItems(len(self.pairs), loader.global_batch_size, loader, world, data.data_sha256)

    def parts(self, ctx: StageContext) -> StageParts:
        ref_train, ref_heldout = self._reference(ctx)
        objective = DPOObjective(self.config.dpo, self._margin_exclude())
        pad, device = self.data.tok.pad_id, self.world.device
        batches = DPOBatches(self.pairs, ref_train, self.items, ctx.micro_batch, pad, device)
        evaluation = DPOEval(objective, self.heldout_pairs, ref_heldout, self.config.dpo.reference_batch_size, pad,
                             device)  # fmt: skip
        return StageParts(objective, batches, evaluation)

    def _margin_exclude(self) -> int | None:
        return None if self.config.dpo.margin_end_of_turn else self.data.tok.eos_id

    # ------------------------------------------------------------ the reference cache

    def _cache_key(self) -> dict[str, str]:
        init = model_ckpt.resolve_model_dir(self.config.model.init_from or "")
        init_hash = (
            artifacts.manifest_hash(init) if (init / artifacts.MANIFEST).is_file() else str(init.resolve())
        )
        held = artifacts.sha256_file(self.data.heldout_path) if self.data.heldout_path else ""
        key = {"train_sha256": self.data.data_sha256, "heldout_sha256": held, "init_model": init_hash,
               "seq_len": str(self.config.data.loader.seq_len), "heldout_limit": str(self.config.data.eval_limit)}  # fmt: skip
        if not self.config.dpo.margin_end_of_turn:  # only then: earlier runs' caches keep their bytes
            key["margin_end_of_turn"] = "false"
        return key

    def _reference(self, ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(training pairs', held-out pairs' reference log-probs): from the run's cache when it was
        computed from the same data and initial model, else computed now and cached."""
        file = ctx.out / REFERENCE_CACHE
        key = self._cache_key()
        if file.is_file():
            from safetensors import safe_open

            with safe_open(str(file), "pt") as f:
                meta = f.metadata() or {}
            if meta.get(CACHE_KEY) == json.dumps(key, sort_keys=True):
                tensors = load_file(str(file))
                return tensors["train"], tensors["heldout"]
            if ctx.resumed:
                raise ConfigError(
                    f"{file}: cached for other data or another initial model; cannot resume this run"
                )
        dev = self.world.device
        model: torch.nn.Module = ctx.model.module  # at step 0 the policy *is* the reference
        if ctx.resumed:
            model = model_ckpt.load_model(self.config.model.init_from or "", device=dev).model
        bs, pad = self.config.dpo.reference_batch_size, self.data.tok.pad_id
        exclude = self._margin_exclude()
        ref_train = reference_logprobs(model, self.pairs, pad, bs, dev, exclude).float()
        ref_heldout = reference_logprobs(model, self.heldout_pairs, pad, bs, dev, exclude).float()
        if self.world.is_main:
            ctx.out.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".tmp")
            # One metadata entry: safetensors writes several in hash-map order, which differs run to run
            # (the same reference log-probs must give the same bytes: glasslm reproduce).
            save_file({"train": ref_train, "heldout": ref_heldout}, str(tmp),
                      metadata={CACHE_KEY: json.dumps(key, sort_keys=True)})  # fmt: skip
            tmp.replace(file)
        distributed.barrier(self.world)
        return ref_train, ref_heldout


class DPOBatches:
    """The step's pairs, each micro-batch its chosen rows then its rejected rows, with their
    reference log-probs (``ref``)."""

    def __init__(
        self,
        pairs: list[PairExample],
        ref: torch.Tensor,
        items: StepItems,
        micro_batch: int,
        pad_id: int,
        device: torch.device,
    ):
        self.pairs, self.ref, self.items = pairs, ref, items
        self.micro_batch, self.pad_id, self.device = micro_batch, pad_id, device

    def batch(self, step: int) -> StepBatch:
        idx = self.items.local(step)
        micros = []
        for part in split_micro(len(idx), self.micro_batch):
            chosen = [idx[i] for i in part]
            batch = collate_pairs([self.pairs[i] for i in chosen], self.pad_id)
            batch["ref"] = self.ref[chosen]
            micros.append({k: v.to(self.device) for k, v in batch.items()})
        return StepBatch(micros)

    def position(self, step: int) -> dict[str, Any]:
        return self.items.position(step)


class DPOObjective:
    """DPO's loss summed over the micro-batch's pairs (the step divides by its pairs)."""

    def __init__(self, options: DPOOptions, margin_exclude: int | None = None):
        self.options, self.margin_exclude = options, margin_exclude

    def count(self, micro: Micro) -> int:
        return int(micro["ref"].shape[0])

    def pair_terms(
        self, logits: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor
    ) -> tuple[DPOOutput, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(DPO output, chosen and rejected policy log-probs, chosen NLL per token) of a batch of
        chosen-then-rejected rows."""
        kind = self.options.loss_type
        token_logps = token_logprobs(logits, labels)
        sums, n = response_sums(token_logps, labels, self.margin_exclude)
        all_sums, all_n = response_sums(token_logps, labels) if self.margin_exclude is not None else (sums, n)
        k = ref.shape[0]
        chosen, rejected = policy_logps(sums[:k], n[:k], kind), policy_logps(sums[k:], n[k:], kind)
        ref_chosen = policy_logps(ref[:, 0].to(sums), ref[:, 2].to(sums), kind)
        ref_rejected = policy_logps(ref[:, 1].to(sums), ref[:, 3].to(sums), kind)
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.options.beta_value)
        return out, chosen, rejected, -all_sums[:k] / all_n[:k].clamp(min=1)

    def loss(self, model: TrainModel, micro: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out, chosen, rejected, nll = self.pair_terms(model.forward(micro), micro["labels"], micro["ref"])
        objective = out.losses.sum() + self.options.nll_coef * nll.sum()
        return objective, {
            "loss": objective,
            "chosen_nll": nll.detach().sum(),
            "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float().sum(),
            "reward_margin": (out.chosen_rewards - out.rejected_rewards).sum(),
            "chosen_logp": chosen.detach().sum(),
            "rejected_logp": rejected.detach().sum(),
        }


class DPOEval:
    """Held-out reward accuracy and margin against the reference, and ``logp_accuracy``."""

    def __init__(
        self,
        objective: DPOObjective,
        pairs: list[PairExample],
        ref: torch.Tensor,
        batch_size: int,
        pad_id: int,
        device: torch.device,
    ):
        self.objective, self.pairs, self.ref = objective, pairs, ref
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, device

    @torch.no_grad()
    def evaluate(self, model: OLMo2, tokenizer: Tokenizer) -> dict[str, Any]:
        if not self.pairs:
            return {}
        with eval_mode(model):
            acc = margin = logp_acc = 0.0
            for part in split_micro(len(self.pairs), self.batch_size):
                idx = list(part)
                batch = collate_pairs([self.pairs[i] for i in idx], self.pad_id)
                logits = model(batch["input_ids"].to(self.device))
                out, chosen, rejected, _ = self.objective.pair_terms(
                    logits, batch["labels"].to(self.device), self.ref[idx].to(self.device)
                )
                acc += float((out.chosen_rewards > out.rejected_rewards).float().sum())
                margin += float((out.chosen_rewards - out.rejected_rewards).sum())
                logp_acc += float((chosen > rejected).float().sum())
        n = len(self.pairs)
        return {"reward_accuracy": acc / n, "reward_margin": margin / n, "logp_accuracy": logp_acc / n,
                "heldout_pairs": n}  # fmt: skip

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        return {}
