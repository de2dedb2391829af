"""Direct preference optimisation (Rafailov et al., 2023): sequence log-probs, losses, metrics, reference cache.

With π the policy and π_ref the frozen reference (the SFT model), for a pair (chosen y_w, rejected y_l):

    h = β · [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))],   loss = −log σ(h)

- ``dpo`` (sigmoid DPO, β = 0.1): log π(y) is the *sum* of the response tokens' log-probs.
- ``dpo_norm`` (Tülu 3's length-normalised DPO, β = 5): log π(y) is their *mean*, so a long response
  is not favoured or punished for its length.

Implicit rewards are β·(log π − log π_ref); reward accuracy is the fraction of pairs whose chosen
reward exceeds the rejected one, the margin their mean difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from glasslm.adapt.formats import Preference
from glasslm.adapt.sft import IGNORE, Example, tokenize_conversation
from glasslm.model.modes import eval_mode
from glasslm.tokenizer import Tokenizer

LossType = Literal["dpo", "dpo_norm"]
DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "dpo_norm": 5.0}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position (fp32), 0 where the label is IGNORE. Shapes (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    picked = torch.gather(logp, -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, exclude: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, number of response tokens), one per row; targets equal to
    ``exclude`` (the end-of-turn token, for ``dpo.margin_end_of_turn: false``) are left out."""
    return response_sums(token_logprobs(logits, labels), labels, exclude)


def response_sums(
    token_logps: torch.Tensor, labels: torch.Tensor, exclude: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logprobs` from already computed :func:`token_logprobs`."""
    keep = labels != IGNORE
    if exclude is not None:
        keep &= labels != exclude
    return (token_logps * keep).sum(-1), keep.sum(-1)


def policy_logps(sum_logps: torch.Tensor, n_tokens: torch.Tensor, loss_type: LossType) -> torch.Tensor:
    """What the loss compares: the sum (``dpo``) or the per-token mean (``dpo_norm``)."""
    if loss_type == "dpo_norm":
        return sum_logps / n_tokens.clamp(min=1)
    return sum_logps


@dataclass
class DPOOutput:
    losses: torch.Tensor  # per pair
    chosen_rewards: torch.Tensor  # per pair (detached)
    rejected_rewards: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    def metrics(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "reward_accuracy": float((self.chosen_rewards > self.rejected_rewards).float().mean()),
            "reward_margin": float((self.chosen_rewards - self.rejected_rewards).mean()),
            "chosen_reward": float(self.chosen_rewards.mean()),
            "rejected_reward": float(self.rejected_rewards.mean()),
            "chosen_logp": float(chosen_logps.detach().mean()),
            "rejected_logp": float(rejected_logps.detach().mean()),
        }


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> DPOOutput:
    """Sigmoid DPO on already-reduced log-probs (sums for ``dpo``, means for ``dpo_norm``)."""
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return DPOOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


# --------------------------------------------------------------------------- data


@dataclass
class PairExample:
    chosen: Example
    rejected: Example


def tokenize_pair(tokenizer: Tokenizer, pref: Preference, max_len: int) -> PairExample | None:
    """Each side as a full conversation with labels on its response only (prompt turns masked)."""
    k = len(pref.prompt)
    chosen = tokenize_conversation(tokenizer, [*pref.prompt, *pref.chosen], max_len, first_trained=k)
    rejected = tokenize_conversation(tokenizer, [*pref.prompt, *pref.rejected], max_len, first_trained=k)
    if chosen is None or rejected is None:
        return None
    return PairExample(chosen, rejected)


def collate_pairs(pairs: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: rows [chosen_0 … chosen_{n-1}, rejected_0 … rejected_{n-1}] (right padding)."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    T = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
    return {"input_ids": input_ids, "labels": labels}


@torch.no_grad()
def reference_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[PairExample],
    pad_id: int,
    batch_size: int,
    device: torch.device | str,
    exclude: int | None = None,
) -> torch.Tensor:
    """(n_pairs, 4): [chosen sum, rejected sum, chosen tokens, rejected tokens] under ``model``
    (without ``exclude`` targets, as :func:`sequence_logprobs`).

    Computed once before training and cached (DPO's reference never changes), which halves the
    forward passes per step and lets the reference model leave memory.
    """
    with eval_mode(model):
        out = torch.zeros(len(pairs), 4, dtype=torch.float64)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = collate_pairs(chunk, pad_id)
            logits = model(batch["input_ids"].to(device))
            sums, n = sequence_logprobs(logits, batch["labels"].to(device), exclude)
            k = len(chunk)
            out[start : start + k, 0] = sums[:k].double().cpu()
            out[start : start + k, 1] = sums[k:].double().cpu()
            out[start : start + k, 2] = n[:k].double().cpu()
            out[start : start + k, 3] = n[k:].double().cpu()
    return out
