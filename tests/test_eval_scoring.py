"""The scorer's per-example log-likelihoods equal a plain, one-sequence-at-a-time computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from eval_support import build_model, build_tokenizer

from glasslm.eval.scoring import Scored, Scorer, bits_per_byte, encode_pair, encode_pairs
from glasslm.model.checkpoint import load_model
from glasslm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("scoring")
    tok = build_tokenizer(d / "tok" / "tokenizer.json")
    loaded = load_model(build_model(d / "ckpt", tok, max_seq_len=64))
    return loaded.model, Tokenizer.from_file(tok)


def reference_logprob(model, ctx: list[int], cont: list[int]) -> float:
    """The straightforward computation: the whole sequence alone, causal, no padding, no sharing."""
    seq = torch.tensor([ctx + cont[:-1]])  # the last token predicts nothing
    with torch.no_grad():
        logp = F.log_softmax(model(seq)[0].double(), dim=-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_packed_scores_equal_plain_forward(tiny):
    model, tok = tiny
    eos = tok.eos_id
    groups = [
        # ranked classification: one context, several continuations (one a prefix of another)
        [
            encode_pair(tok, "Question: Where did the cat sit?\nAnswer:", c, eos)
            for c in (" on a mat", " on a mat while dogs ran", " in green trees", " far")
        ],
        # partial scoring: different contexts, one continuation
        [encode_pair(tok, f"The {w} sat", " on the mat.", eos) for w in ("cat", "dog", "bird")],
        # single request, empty context (conditioned on EOS), duplicate choices
        [encode_pair(tok, "", " rain fell", eos)],
        [
            encode_pair(tok, "Goal: play\nAnswer:", " ball", eos),
            encode_pair(tok, "Goal: play\nAnswer:", " ball", eos),
        ],
    ]
    scorer = Scorer(model, batch_tokens=64)  # small batches: several forward passes with padding
    scored = scorer.score_groups(groups)
    for group, results in zip(groups, scored, strict=True):
        for (ctx, cont), s in zip(group, results, strict=True):
            assert s.n_tokens == len(cont)
            assert s.logprob == pytest.approx(reference_logprob(model, ctx, cont), abs=1e-4)
    naive = sum(len(c) + len(t) - 1 for g in groups for c, t in g)
    assert scorer.forward_tokens < naive  # shared prefixes were computed once


def test_long_context_is_left_truncated_like_lm_eval(tiny):
    model, tok = tiny
    ctx = tok.encode(" ".join(["the cat sat on a mat"] * 30))
    cont = tok.encode(" while dogs ran")
    assert len(ctx) + len(cont) > 65
    [[s]] = Scorer(model).score_groups([[(ctx, cont)]])
    keep = 64 + 1 - len(cont)  # lm-eval keeps the last max_length + 1 tokens
    assert s.logprob == pytest.approx(reference_logprob(model, ctx[-keep:], cont), abs=1e-4)


def test_task_prefix_is_computed_once_and_scores_stay_exact(tiny):
    """k-shot prompts: every example starts with the same shots. The shared prefix runs once (its KV
    cache broadcast over the batches) and each score still equals the one-sequence computation, for
    ranked classification, partial scoring, a plain single-choice row and a left-truncated row."""
    model, tok = tiny
    eos = tok.eos_id
    shots = "Question: Where did the cat sit?\nAnswer: on a mat\n\nQuestion: Who sang?\nAnswer: birds\n\n"
    assert len(tok.encode(shots)) >= Scorer.MIN_SHARED_PREFIX
    questions = ["Where did dogs run?", "What fell all day?", "Who played games?"]
    groups = [
        [
            encode_pair(tok, f"{shots}Question: {q}\nAnswer:", c, eos)
            for c in (" far away", " rain", " children")
        ]
        for q in questions
    ]
    groups.append([encode_pair(tok, f"{shots}The {w} sat", " on the mat.", eos) for w in ("cat", "dog")])
    groups.append([encode_pair(tok, f"{shots}Question: Why?\nAnswer:", " because", eos)])
    # Longer than the model (64 tokens): left-truncated, so it cannot start with the shots.
    groups.append(
        [encode_pair(tok, shots * 2 + "Question: Why?\nAnswer:", c, eos) for c in (" rain", " heat")]
    )
    scorer = Scorer(model, batch_tokens=64)
    scored = scorer.score_groups(groups)
    unshared = Scorer(model, batch_tokens=64, share_prefix=False)
    plain = unshared.score_groups(groups)
    for group, results, results_plain in zip(groups, scored, plain, strict=True):
        for (ctx, cont), s, sp in zip(group, results, results_plain, strict=True):
            keep = 64 + 1 - len(cont)
            assert s.logprob == pytest.approx(reference_logprob(model, ctx[-keep:], cont), abs=1e-4)
            assert s.logprob == pytest.approx(sp.logprob, abs=1e-5)
            assert (s.n_tokens, s.greedy) == (sp.n_tokens, sp.greedy)
    # The shots were run once instead of once per row.
    assert scorer.forward_tokens <= unshared.forward_tokens - 4 * len(tok.encode(shots))


def test_encode_pairs_equals_encode_pair(tiny):
    _, tok = tiny
    pairs = [
        ("Answer: ", "cat"),
        ("Answer:", " cat sat"),
        ("", " rain fell"),
        ("The dog sat", " on the mat."),
        ("Answer:", " cat"),
    ]
    assert encode_pairs(tok, pairs, tok.eos_id) == [encode_pair(tok, c, t, tok.eos_id) for c, t in pairs]


def test_encode_pair_moves_trailing_space_like_lm_eval(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "Answer: ", "cat", tok.eos_id)
    assert ctx == tok.encode("Answer:")
    assert tok.decode(cont) == " cat"
    assert encode_pair(tok, "", " cat", tok.eos_id)[0] == [tok.eos_id]


def test_bits_per_byte_identity():
    assert bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)


def test_identical_choices_tie_to_the_first():
    """Two choices with the same text: packed at different offsets their log-likelihoods differ by
    float rounding; they get the first one's score, so argmax takes the first choice (OLMES, lm-eval)."""
    from glasslm.eval.harness import example_record, tie_identical
    from glasslm.eval.tasks.base import Instance, MCDoc, Request

    requests = [Request("Q:", " same"), Request("Q:", " other"), Request("Q:", " same")]
    scored = [Scored(-2.0000001, 1, False), Scored(-5.0, 1, False), Scored(-2.0, 1, False)]
    tied = tie_identical(requests, scored)
    assert [s.logprob for s in tied] == [-2.0000001, -5.0, -2.0000001]
    inst = Instance("t", MCDoc("x", "Q:", ["same", "other", "same"], 2), requests, None, 2)
    assert set(example_record(inst, tied, None)["predictions"].values()) == {0}
