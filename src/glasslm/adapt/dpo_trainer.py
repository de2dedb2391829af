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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from glasslm import artifacts
from glasslm.adapt.base import AdaptConfig, AdaptTrainer, split_micro
from glasslm.adapt.dpo import (
    DEFAULT_BETA,
    PairExample,
    collate_pairs,
    dpo_loss,
    policy_logps,
    reference_logprobs,
    sequence_logprobs,
    tokenize_pair,
)
from glasslm.adapt.formats import load_preferences
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.modes import eval_mode
from glasslm.train import distributed

REFERENCE_CACHE = "reference_logprobs.safetensors"
CACHE_KEY = "glasslm_cache_key"  # what the cached log-probs were computed from (JSON, sorted keys)


@dataclass
class DPOOptions:
    loss_type: Literal["dpo", "dpo_norm"] = "dpo_norm"  # Tülu 3's length-normalised DPO
    beta: float | None = None  # None: 0.1 for dpo, 5 for dpo_norm
    reference_batch_size: int = 16  # pairs per forward when computing the reference cache

    @property
    def beta_value(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.loss_type]


@dataclass
class DPOConfig(AdaptConfig):
    dpo: DPOOptions = field(default_factory=DPOOptions)


def _tokenize_pairs(
    trainer: AdaptTrainer, path: Path, limit: int | None, quarantine: Quarantine
) -> list[PairExample]:
    seq_len = trainer.config.data.loader.seq_len
    prefs = load_preferences(path, quarantine)[:limit]
    pairs = [p for p in (tokenize_pair(trainer.tok, pref, seq_len) for pref in prefs) if p is not None]
    return pairs


class DPOTrainer(AdaptTrainer):
    stage = "dpo"
    data_file, heldout_file = "dpo.jsonl", "dpo_heldout.jsonl"
    config: DPOConfig

    def load_items(self, config: AdaptConfig) -> None:
        self.quarantine = Quarantine()
        self.pairs = _tokenize_pairs(self, self.train_path, None, self.quarantine)
        if not self.pairs:
            raise ConfigError(
                f"{self.train_path}: no usable preference pair ({self.quarantine.total} quarantined)"
            )
        self.heldout_pairs = (
            _tokenize_pairs(self, self.heldout_path, config.data.eval_limit, self.quarantine)
            if self.heldout_path
            else []
        )

    @property
    def n_items(self) -> int:
        return len(self.pairs)

    # ------------------------------------------------------------ the reference cache

    def _cache_key(self) -> dict[str, str]:
        init = model_ckpt.resolve_model_dir(self.config.model.init_from or "")
        init_hash = (
            artifacts.manifest_hash(init) if (init / artifacts.MANIFEST).is_file() else str(init.resolve())
        )
        held = artifacts.sha256_file(self.heldout_path) if self.heldout_path else ""
        return {"train_sha256": self.data_sha256, "heldout_sha256": held, "init_model": init_hash,
                "seq_len": str(self.config.data.loader.seq_len), "heldout_limit": str(self.config.data.eval_limit)}  # fmt: skip

    def _load_reference(self) -> None:
        file = self.out / REFERENCE_CACHE
        key = self._cache_key()
        if file.is_file():
            from safetensors import safe_open

            with safe_open(str(file), "pt") as f:
                meta = f.metadata() or {}
            if meta.get(CACHE_KEY) == json.dumps(key, sort_keys=True):
                tensors = load_file(str(file))
                self.ref_train, self.ref_heldout = tensors["train"], tensors["heldout"]
                return
            if self.resume_from is not None:
                raise ConfigError(
                    f"{file}: cached for other data or another initial model; cannot resume this run"
                )
        if self.resume_from is None:
            model = self.policy  # at step 0 the policy *is* the reference
        else:
            model = model_ckpt.load_model(self.config.model.init_from or "", device=self.world.device).model
        bs, pad, dev = self.config.dpo.reference_batch_size, self.tok.pad_id, self.world.device
        self.ref_train = reference_logprobs(model, self.pairs, pad, bs, dev).float()
        self.ref_heldout = reference_logprobs(model, self.heldout_pairs, pad, bs, dev).float()
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".tmp")
            # One metadata entry: safetensors writes several in hash-map order, which differs run to run
            # (the same reference log-probs must give the same bytes: glasslm reproduce).
            save_file(
                {"train": self.ref_train, "heldout": self.ref_heldout},
                str(tmp),
                metadata={CACHE_KEY: json.dumps(key, sort_keys=True)},
            )
            tmp.replace(file)
        distributed.barrier(self.world)

    def run(self) -> Any:
        self._load_reference()
        return super().run()

    # ------------------------------------------------------------ batches and loss

    def _batch(self, step: int) -> dict[str, Any]:
        idx = self.local_items(step)
        micros = []
        for part in split_micro(len(idx), self.micro_batch):
            chosen = [idx[i] for i in part]
            batch = collate_pairs([self.pairs[i] for i in chosen], self.tok.pad_id)
            batch["ref"] = self.ref_train[chosen]
            micros.append(batch)
        return {"micros": micros}

    def _count(self, micro: dict[str, torch.Tensor]) -> int:
        return int(micro["ref"].shape[0])

    def _pair_terms(
        self, logits: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        kind = self.config.dpo.loss_type
        sums, n = sequence_logprobs(logits, labels)
        k = ref.shape[0]
        chosen, rejected = policy_logps(sums[:k], n[:k], kind), policy_logps(sums[k:], n[k:], kind)
        ref_chosen = policy_logps(ref[:, 0].to(sums), ref[:, 2].to(sums), kind)
        ref_rejected = policy_logps(ref[:, 1].to(sums), ref[:, 3].to(sums), kind)
        return (
            dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.config.dpo.beta_value),
            chosen,
            rejected,
        )

    def _loss(
        self, logits: torch.Tensor, micro: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out, chosen, rejected = self._pair_terms(logits, micro["labels"], micro["ref"])
        objective = out.losses.sum()
        return objective, {
            "loss": objective,
            "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float().sum(),
            "reward_margin": (out.chosen_rewards - out.rejected_rewards).sum(),
            "chosen_logp": chosen.detach().sum(),
            "rejected_logp": rejected.detach().sum(),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        if not self.heldout_pairs:
            return {}
        model = self.policy
        with eval_mode(model):
            acc = margin = logp_acc = 0.0
            bs = self.config.dpo.reference_batch_size
            for part in split_micro(len(self.heldout_pairs), bs):
                idx = list(part)
                batch = collate_pairs([self.heldout_pairs[i] for i in idx], self.tok.pad_id)
                logits = model(batch["input_ids"].to(self.world.device))
                out, chosen, rejected = self._pair_terms(logits, batch["labels"].to(self.world.device),
                                                         self.ref_heldout[idx].to(self.world.device))  # fmt: skip
                acc += float((out.chosen_rewards > out.rejected_rewards).float().sum())
                margin += float((out.chosen_rewards - out.rejected_rewards).sum())
                logp_acc += float((chosen > rejected).float().sum())
        n = len(self.heldout_pairs)
        return {"reward_accuracy": acc / n, "reward_margin": margin / n, "logp_accuracy": logp_acc / n,
                "heldout_pairs": n}  # fmt: skip
