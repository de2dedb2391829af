"""Rewards, DPO and GRPO formulas against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from glasslm.adapt import dpo, rewards, rl
from glasslm.adapt.sft import IGNORE, sft_loss

# ------------------------------------------------------------------ rewards


@pytest.mark.parametrize(
    ("completion", "truth", "name", "expected"),
    [
        ("95", "95", "numeric", 1.0),
        ("The answer is 95.", "95", "numeric", 1.0),
        ("3 + 4 = 7, so answer: 12", "12", "numeric", 1.0),  # the answer marker wins over the last number
        ("I think 7 then 12", "12", "numeric", 1.0),  # else the last number
        ("1,234", "1234", "numeric", 1.0),
        ("-24<|endoftext|> 5", "-24", "numeric", 1.0),  # text after end-of-text is ignored
        ("12.0", "12", "numeric", 1.0),
        ("13", "12", "numeric", 0.0),
        ("no number", "12", "numeric", 0.0),
        ("The Lisbon!", "lisbon", "exact_match", 1.0),  # SQuAD normalisation
        ("Answer: a red", "red", "exact_match", 1.0),
        ("Oslo", "Lisbon", "exact_match", 0.0),
        ("HELLO", "HELLO", "string_equal", 1.0),
        ("HELLO.", "HELLO", "string_equal", 1.0),
        ("hello", "HELLO", "string_equal", 0.0),  # case is the task here
        ("olleh ", "olleh", "string_equal", 1.0),
        ("42", "42", "gsm8k", 1.0),  # open-instruct's dataset names resolve through aliases
    ],
)
def test_rewards(completion: str, truth: str, name: str, expected: float) -> None:
    assert rewards.reward_for(name)(completion, truth) == expected


def test_unknown_reward_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="numeric"):
        rewards.reward_for("nope")


def test_extract_answer() -> None:
    assert rewards.extract_answer("work...\nThe answer is  Oslo\nmore") == "Oslo"
    assert rewards.extract_answer("  plain  ") == "plain"
    assert rewards.normalize_text("The  Quick, brown fox!") == "quick brown fox"


# ------------------------------------------------------------------ SFT loss


def test_sft_loss_mean_and_sum_over_assistant_tokens_only() -> None:
    # Two positions are targets: p(target) = 3/4 and 1/4 (logits [0, ln 3]); the third is masked.
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, IGNORE]])
    expected_sum = -math.log(3 / 4) - math.log(1 / 4)
    assert sft_loss(logits, labels, "sum").item() == pytest.approx(expected_sum, rel=1e-6)
    assert sft_loss(logits, labels, "mean").item() == pytest.approx(expected_sum / 2, rel=1e-6)


# ------------------------------------------------------------------ DPO


def test_sequence_logprobs_sum_and_count() -> None:
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, IGNORE]])
    total, n = dpo.sequence_logprobs(logits, labels)
    assert total.item() == pytest.approx(math.log(3 / 4) + math.log(1 / 4), rel=1e-6)
    assert n.item() == 2
    assert dpo.policy_logps(total, n, "dpo_norm").item() == pytest.approx(total.item() / 2, rel=1e-6)
    assert dpo.policy_logps(total, n, "dpo").item() == total.item()


def test_dpo_margin_can_leave_out_the_end_of_turn_but_the_nll_keeps_it() -> None:
    from glasslm.adapt.dpo_trainer import DPOObjective, DPOOptions

    end = 0
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[2, 3, end], [1, end, IGNORE]])  # a chosen row, then its rejected row
    token = dpo.token_logprobs(logits, labels)
    total, n = dpo.sequence_logprobs(logits, labels, exclude=end)
    assert n.tolist() == [2, 1]
    assert total.tolist() == pytest.approx([(token[0, 0] + token[0, 1]).item(), token[1, 0].item()])
    ref = torch.tensor([[0.0, 0.0, 2.0, 1.0]])  # chosen sum, rejected sum, chosen tokens, rejected tokens
    options = DPOOptions(loss_type="dpo_norm", margin_end_of_turn=False)
    _, chosen, rejected, nll = DPOObjective(options, margin_exclude=end).pair_terms(logits, labels, ref)
    assert chosen.item() == pytest.approx(total[0].item() / 2)
    assert rejected.item() == pytest.approx(total[1].item())
    assert nll.item() == pytest.approx(-token[0].sum().item() / 3)  # the chosen reply's end is still learnt
    _, chosen_all, _, nll_all = DPOObjective(DPOOptions(loss_type="dpo_norm")).pair_terms(logits, labels, ref)
    assert chosen_all.item() == pytest.approx(token[0].sum().item() / 3)
    assert nll_all.item() == pytest.approx(nll.item())


def test_sigmoid_dpo_by_hand() -> None:
    # beta 0.1: rewards 0.1·(−2 + 2.5) = 0.05 and 0.1·(−3 + 2.5) = −0.05; h = 0.1; loss = log(1 + e^−0.1).
    out = dpo.dpo_loss(
        torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.5]), 0.1
    )
    assert out.loss.item() == pytest.approx(0.6443966600735709, rel=1e-6)
    m = out.metrics(torch.tensor([-2.0]), torch.tensor([-3.0]))
    assert m["reward_accuracy"] == 1.0
    assert m["reward_margin"] == pytest.approx(0.1, rel=1e-5)
    assert m["chosen_reward"] == pytest.approx(0.05, rel=1e-5)
    assert m["rejected_reward"] == pytest.approx(-0.05, rel=1e-5)
    assert m["chosen_logp"] == -2.0 and m["rejected_logp"] == -3.0


def test_length_normalised_dpo_by_hand() -> None:
    # Per-token means: chosen −6/3 = −2 (ref −9/3 = −3), rejected −8/2 = −4 (ref −6/2 = −3).
    # beta 5: rewards 5·1 = 5 and 5·(−1) = −5; h = 10; loss = log(1 + e^−10) = 4.5398899e-05.
    n_c, n_r = torch.tensor([3]), torch.tensor([2])
    pc = dpo.policy_logps(torch.tensor([-6.0]), n_c, "dpo_norm")
    pr = dpo.policy_logps(torch.tensor([-8.0]), n_r, "dpo_norm")
    rc = dpo.policy_logps(torch.tensor([-9.0]), n_c, "dpo_norm")
    rr = dpo.policy_logps(torch.tensor([-6.0]), n_r, "dpo_norm")
    out = dpo.dpo_loss(pc, pr, rc, rr, dpo.DEFAULT_BETA["dpo_norm"])
    assert out.loss.item() == pytest.approx(4.5398899e-05, rel=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(5.0)
    assert out.rejected_rewards.item() == pytest.approx(-5.0)


def test_dpo_accuracy_counts_pairs() -> None:
    out = dpo.dpo_loss(
        torch.tensor([-1.0, -5.0]), torch.tensor([-2.0, -1.0]), torch.zeros(2), torch.zeros(2), 0.1
    )
    assert out.metrics(torch.zeros(2), torch.zeros(2))["reward_accuracy"] == 0.5


# ------------------------------------------------------------------ GRPO


def test_group_advantages_by_hand() -> None:
    # Group [1, 0, 0, 1]: mean 0.5, sample std sqrt(4·0.25/3) = 0.57735 -> ±0.866025; a flat group -> 0.
    adv = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    expected = 0.5 / math.sqrt(1 / 3)
    assert adv[:4].tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-5)
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        rl.group_advantages(torch.zeros(6), group_size=4)


def test_signal_groups_keep_only_groups_with_unequal_rewards() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.25])
    assert rl.signal_groups(rewards, group_size=4) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert rl.signal_groups(torch.ones(8), group_size=4) == [0, 1, 2, 3]  # none: one flat group, A = 0


def test_paired_change_mean_and_standard_error_by_hand() -> None:
    # Diffs [1, 0, 0, -1, 0.5]: mean 0.1; sample variance (0.81 + 0.01 + 0.01 + 1.21 + 0.16) / 4 = 0.55.
    out = rl.paired_change("gain", [1.0, 0.0, 0.0, -1.0, 0.5])
    assert out["gain"] == pytest.approx(0.1)
    assert out["gain_se"] == pytest.approx(math.sqrt(0.55 / 5))
    assert rl.paired_change("gain", []) == {}


def test_grpo_clipped_token_level_loss_by_hand() -> None:
    # Row 0 (A = +1): ratios 1.5 (clipped to 1.2 -> term −1.2) and 0.5 (term −0.5, the clip does not bind).
    # Row 1 (A = −1): ratio 1.5 -> max(1.5, 1.2) = 1.5; its second token is padding.
    # Token-level mean over the 3 real tokens: (−1.2 − 0.5 + 1.5) / 3.
    old = torch.zeros(2, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)], [math.log(1.5), 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    out = rl.grpo_loss(logp, old, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2)
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.5) / 3, rel=1e-6)
    assert out.clip_fraction == pytest.approx(1 / 3)
    assert out.kl == 0.0
    out.loss.backward()
    assert logp.grad is not None
    # Clipped tokens get no gradient; the others get −A·ratio/3 (d ratio / d logp = ratio).
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 3, 1.5 / 3, 0.0], abs=1e-6)


def test_grpo_can_spare_the_end_of_turn_token_a_negative_advantage() -> None:
    # Token 9 is the end of turn. Row 0 (A = +1) keeps its advantage on it; row 1 (A = −1) is pushed away
    # from its answer token 5 but not from ending: its end-of-turn token gets A = 0, so no gradient;
    # the KL term still reaches it. Padding (IGNORE) never matches the id.
    labels = torch.tensor([[5, 9], [5, 9], [9, IGNORE]])
    adv = torch.tensor([1.0, -1.0, -2.0])
    spared = rl.token_advantages(adv, labels, spare=9)
    assert spared.tolist() == [[1.0, 1.0], [-1.0, 0.0], [0.0, -2.0]]
    assert rl.token_advantages(adv, labels).tolist() == [[1.0, 1.0], [-1.0, -1.0], [-2.0, -2.0]]
    logp = torch.zeros(3, 2, requires_grad=True)
    ref = torch.full((3, 2), math.log(2))
    mask = labels != IGNORE
    out = rl.grpo_loss(logp, logp.detach(), spared, mask, kl_coef=0.5, ref_logp=ref)
    out.loss.backward()
    assert logp.grad is not None
    # d/dlogp: −A (ratio 1) + 0.5·(1 − e^q) with q = ln 2 -> −A − 0.5, over the 5 real tokens.
    expected = [[-1.5, -1.5], [0.5, -0.5], [-0.5, 0.0]]
    assert (logp.grad * 5).tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


@pytest.mark.parametrize(
    ("aggregation", "loss", "grads"),
    [
        # Ratio 1, no clip: ℓ_t = −A. Row 0 (A = +1) has two tokens, row 1 (A = −1) one and padding.
        ("token", (-1 - 1 + 1) / 3, [-1 / 3, -1 / 3, 1 / 3]),  # / 3 tokens
        ("sequence", ((-1 - 1) / 2 + 1 / 1) / 2, [-1 / 4, -1 / 4, 1 / 2]),  # per row, then / 2 rows
        ("constant", (-1 - 1 + 1) / (2 * 4), [-1 / 8, -1 / 8, 1 / 8]),  # / (2 rows × max_new_tokens 4)
    ],
)
def test_grpo_loss_aggregations_by_hand(aggregation: str, loss: float, grads: list[float]) -> None:
    logp = torch.zeros(2, 2, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    out = rl.grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask, aggregation=aggregation,
                       max_new_tokens=4)  # fmt: skip
    assert out.loss.item() == pytest.approx(loss, abs=1e-6)
    out.loss.backward()
    assert logp.grad is not None
    assert [logp.grad[0, 0].item(), logp.grad[0, 1].item(), logp.grad[1, 0].item()] == pytest.approx(grads)
    assert logp.grad[1, 1].item() == 0.0  # padding
    # The reported KL is a mean per token, or of per-completion means: (k3 / 2 + 0) / 2 rows.
    ref = torch.tensor([[math.log(2), 0.0], [0.0, 0.0]])  # k3 = 2 − ln 2 − 1 on one token of row 0
    out = rl.grpo_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), mask, kl_coef=1.0, ref_logp=ref,
                       aggregation=aggregation, max_new_tokens=4)  # fmt: skip
    k3 = 2 - math.log(2) - 1
    assert out.kl == pytest.approx(k3 / 3 if aggregation == "token" else k3 / 4)
    with pytest.raises(ValueError, match="choose from"):
        rl.token_weights(mask, "tokens", 4)


def test_group_advantages_without_the_standard_deviation() -> None:
    # Dr. GRPO's r − mean: [1, 0, 0, 1] -> ±0.5, whatever the spread.
    adv = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4, scale=False)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5]


def test_grpo_kl_term_k3_by_hand() -> None:
    # log π_ref − log π = ln 2 on the one token: k3 = 2 − ln 2 − 1 = 0.306853; A = 0 leaves only the KL.
    logp = torch.zeros(1, 1)
    ref = torch.full((1, 1), math.log(2))
    out = rl.grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), kl_coef=0.5, ref_logp=ref)
    assert out.kl == pytest.approx(2 - math.log(2) - 1, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * (2 - math.log(2) - 1), rel=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        rl.grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), kl_coef=0.5)
