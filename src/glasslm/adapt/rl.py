"""GRPO (Shao et al., 2024, DeepSeekMath) with verifiable rewards: advantages and the clipped loss.

For each prompt, G completions are sampled and scored; a completion's advantage is its reward
against its group's, A = (r − mean) / (std + ε), with the sample standard deviation (``torch.std``,
as open-instruct and TRL compute it). A group whose rewards are all equal has A = 0: it teaches
nothing and costs only its forward pass.

Per response token t, with ratio ρ_t = π(y_t) / π_old(y_t):

    ℓ_t = max(−A ρ_t, −A clip(ρ_t, 1 − ε, 1 + ε)) + β_KL · k3_t,   k3_t = e^{q_t} − q_t − 1,  q_t = log π_ref − log π

(PPO's clipped surrogate, ε = 0.2; k3 is Schulman's unbiased, non-negative KL estimator, GRPO's
choice). The loss is *token-level*: the sum of ℓ_t over every response token of the batch divided by
the number of those tokens (DAPO's normalisation, also open-instruct's default), so long and short
completions weigh the same per token. β_KL = 0 drops the reference model entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glasslm.eval.stats import mean_stderr


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Flat rewards (n_prompts·G,), grouped by prompt in order, -> advantages of the same shape."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2 (a group's standard deviation)")
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def signal_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the completions whose group's rewards are not all equal (the only ones with A ≠ 0).
    If no group has signal: the first group, whose advantages are 0, so the step changes nothing
    but every rank still has a batch."""
    groups = rewards.view(-1, group_size)
    signal = (groups.max(dim=1).values > groups.min(dim=1).values).nonzero().flatten().tolist() or [0]
    return [g * group_size + j for g in signal for j in range(group_size)]


def paired_change(name: str, diffs: list[float]) -> dict[str, float]:
    """Per-item after − before differences on the same items -> their mean (``name``) and its
    standard error (``name_se``: sample standard deviation / √n); {} for no items."""
    if not diffs:
        return {}
    mean, se = mean_stderr(diffs)
    return {name: mean, f"{name}_se": se}


@dataclass
class GRPOTerms:
    """Per-token pieces, (B, T); masked positions hold garbage and must be weighted by the mask."""

    loss: torch.Tensor  # the clipped surrogate plus the KL term
    kl: torch.Tensor  # k3 (zeros without a reference)
    clipped: torch.Tensor  # 1.0 where the clipped term was the one taken
    ratio: torch.Tensor


def grpo_token_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> GRPOTerms:
    """``logp``/``old_logp``/``ref_logp``: (B, T) per response token; ``advantages``: (B,)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype)[:, None]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (the reference model's token log-probs)")
        q = ref_logp - logp
        kl = torch.exp(q) - q - 1.0
        per_token = per_token + kl_coef * kl
    return GRPOTerms(per_token, kl, (clipped > unclipped).to(logp.dtype).detach(), ratio.detach())


@dataclass
class GRPOOutput:
    loss: torch.Tensor
    clip_fraction: float  # share of tokens whose clipped term was the one taken
    kl: float  # mean k3 estimate per token (0 without a reference)
    ratio_mean: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> GRPOOutput:
    """The token-level mean of :func:`grpo_token_terms` over ``mask`` (B, T)."""
    terms = grpo_token_terms(logp, old_logp, advantages, clip_eps, kl_coef, ref_logp)
    mask = mask.to(logp.dtype)
    n = mask.sum().clamp(min=1)
    return GRPOOutput(
        loss=(terms.loss * mask).sum() / n,
        clip_fraction=float((terms.clipped * mask).sum() / n),
        kl=float((terms.kl.detach() * mask).sum() / n),
        ratio_mean=float((terms.ratio * mask).sum() / n),
    )
