"""GRPO (Shao et al., 2024, DeepSeekMath) with verifiable rewards: advantages and the clipped loss.

For each prompt, G completions are sampled and scored; a completion's advantage is its reward
against its group's, A = (r − mean) / (std + ε), with the sample standard deviation (``torch.std``,
as open-instruct and TRL compute it). A group whose rewards are all equal has A = 0: it teaches
nothing and costs only its forward pass.

Per response token t, with ratio ρ_t = π(y_t) / π_old(y_t):

    ℓ_t = max(−A ρ_t, −A clip(ρ_t, 1 − ε, 1 + ε)) + β_KL · k3_t,   k3_t = e^{q_t} − q_t − 1,  q_t = log π_ref − log π

(PPO's clipped surrogate, ε = 0.2; k3 is Schulman's unbiased, non-negative KL estimator, GRPO's
choice). β_KL = 0 drops the reference model entirely. How ℓ_t is averaged (``rl.loss_aggregation``,
TRL's ``loss_type``):

- ``token`` (default): the sum over every response token of the step / the number of those tokens
  (DAPO's normalisation, open-instruct's default): long and short completions weigh the same per token;
- ``sequence``: each completion's mean over its tokens, then the mean over completions (the GRPO
  paper's): a long completion's tokens weigh less, so a long wrong answer is pushed down less per token;
- ``constant``: the sum over the step's tokens / (completions × ``rl.max_new_tokens``) (Dr. GRPO, Liu et
  al. 2025): every token weighs the same, whatever the step's lengths.

``rl.scale_rewards: false`` leaves out GRPO's division by the group's standard deviation (A = r − mean,
Dr. GRPO), which otherwise up-weights the groups that are nearly all right or all wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glasslm.eval.stats import mean_stderr

AGGREGATIONS = ("token", "sequence", "constant")


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """Flat rewards (n_prompts·G,), grouped by prompt in order, -> advantages of the same shape:
    (r − mean) / (std + ε), or r − mean without ``scale``."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2 (a group's standard deviation)")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def token_weights(mask: torch.Tensor, aggregation: str, max_new_tokens: int) -> torch.Tensor:
    """What each response token (``mask``, (B, T)) adds to the step's sum, which the step then divides
    by :func:`step_count`; the module docstring describes the three aggregations."""
    mask = mask.float()
    if aggregation == "token":
        return mask
    if aggregation == "sequence":
        return mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
    if aggregation == "constant":
        return mask / max_new_tokens
    raise ValueError(f"loss aggregation {aggregation!r}: choose from {list(AGGREGATIONS)}")


def figure_weights(mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Token weights for the reported figures (``kl``, ``clip_fraction``, ``ratio``), divided by the same
    :func:`step_count` as the loss: per-token means under ``token``, else means of per-completion means
    (so they stay means, whatever the loss divides by)."""
    return token_weights(mask, "token" if aggregation == "token" else "sequence", 1)


def step_count(mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """What the step averages over: response tokens (``token``) or completions (the others); a 0-d
    tensor on ``mask``'s device, so weighing by it needs no host sync."""
    if aggregation == "token":
        return mask.sum()
    return mask.any(dim=1).sum()


def token_advantages(
    advantages: torch.Tensor, labels: torch.Tensor, spare: int | None = None
) -> torch.Tensor:
    """Per-sequence advantages (B,) -> per-token (B, T); with ``spare`` (the end-of-turn id, for
    ``rl.penalise_end_of_turn: false``) a token of that id takes no negative advantage, so a wrong
    answer is pushed away from its content but not from ending its turn."""
    per_token = advantages[:, None].expand(labels.shape)
    if spare is None:
        return per_token
    return torch.where((labels == spare) & (per_token < 0), torch.zeros_like(per_token), per_token)


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
    """``logp``/``old_logp``/``ref_logp``: (B, T) per response token; ``advantages``: (B,) per
    sequence or (B, T) per token (:func:`token_advantages`)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype)
    adv = adv[:, None] if adv.dim() == 1 else adv
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
    aggregation: str = "token",
    max_new_tokens: int = 0,
) -> GRPOOutput:
    """:func:`grpo_token_terms` over ``mask`` (B, T), averaged as ``aggregation`` says; the reported
    figures are per-token means (``token``) or means of per-completion means (the others)."""
    terms = grpo_token_terms(logp, old_logp, advantages, clip_eps, kl_coef, ref_logp)
    weights = token_weights(mask, aggregation, max_new_tokens).to(logp.dtype)
    shown = figure_weights(mask, aggregation).to(logp.dtype)
    n = step_count(mask, aggregation).clamp(min=1)
    return GRPOOutput(
        loss=(terms.loss * weights).sum() / n,
        clip_fraction=float((terms.clipped * shown).sum() / n),
        kl=float((terms.kl.detach() * shown).sum() / n),
        ratio_mean=float((terms.ratio * shown).sum() / n),
    )
