"""The chat suite: held-out conversations never trained on, its figures on known inputs, the regression check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_adapt_support import tiny_tokenizer, tiny_tokenizer_file  # noqa: F401  (fixtures)

from glasslm.adapt import builders
from glasslm.adapt.sft import IGNORE, tokenize_conversation
from glasslm.cli import main
from glasslm.config import ConfigError
from glasslm.eval import chat_suite as cs
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.tokenizer import Tokenizer

SMALL = builders.AdaptDataConfig(rl_train=200, rl_heldout=210, sft_verifiable=100, dpo_verifiable=40)

# ------------------------------------------------------------------ held-out conversations


def test_held_out_conversations_are_natural_and_never_trained_on() -> None:
    data = builders.build(SMALL)
    assert data.counts["chat_heldout"] == len(data.chat_heldout) > 40
    subjects = {k for k, _ in data.chat_heldout}
    assert len(data.chat_heldout) == 4 * len(subjects)  # four phrasings per held-out subject
    questions = [m[0]["content"] for _, m in data.chat_heldout]
    assert len(set(questions)) == len(questions)
    assert all(q.endswith(("?", ".")) and "docstring" not in q and "help topic" not in q for q in questions)
    # Disjoint from every training set: subject, question and answer text.
    trained_text = json.dumps(
        [data.sft, [p.to_json() for p in data.dpo], [t.to_json() for t in data.rl_train]]
    )
    for key, (question, reference) in data.chat_heldout:
        assert question["content"] not in trained_text
        assert json.dumps(reference["content"])[1:-1] not in trained_text, key
        name = key.split(":", 1)[1]  # the training instructions name their subject like this:
        assert all(
            s not in trained_text for s in (f"function {name}.", f"class {name}.", f"topic '{name}'")
        ), key
    assert builders.build(SMALL).chat_heldout == data.chat_heldout  # seeded


def test_a_leak_into_training_is_refused() -> None:
    data = builders.build(SMALL)
    key, conversation = data.chat_heldout[0]
    data.sft.append(conversation)
    with pytest.raises(builders.HeldOutLeak, match="question"):
        builders.check_disjoint(data, set())
    data.sft.pop()
    with pytest.raises(builders.HeldOutLeak, match="subject"):
        builders.check_disjoint(data, {key})
    builders.check_disjoint(data, set())


def test_adapt_data_artifact_carries_the_conversations(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert main(["adapt", "data", "--out", str(out), "--adapt_data.rl_train=100", "--adapt_data.rl_heldout=50",
                 "--adapt_data.sft_verifiable=50", "--adapt_data.dpo_verifiable=20"]) == 0  # fmt: skip
    conversations = cs.load_conversations(out / builders.CHAT_HELDOUT)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(conversations) == manifest["metrics"]["chat_heldout"] > 0
    assert all(c[-1]["role"] == "assistant" for c in conversations)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ConfigError, match="unusable"):
        cs.load_conversations(bad)


# ------------------------------------------------------------------ figures on known inputs


def test_chrf_is_sacrebleus_own() -> None:
    # sacreBLEU's own test values (test/test_chrf.py, effective-order cases; β does not matter when P = R).
    assert cs.chrf(["aa"], ["ab"]) == pytest.approx(25.0, abs=1e-4)
    assert cs.chrf(["a b c"], ["abc"]) == pytest.approx(100.0)
    assert cs.chrf(["abcdefg"], ["hijklmnop"]) == 0.0
    import sacrebleu

    hyp = ["Die Beziehung zwischen Obama und Netanjahu ist nicht gerade freundlich."]
    ref = ["Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich."]
    assert cs.chrf(hyp, ref) == pytest.approx(sacrebleu.corpus_chrf(hyp, [ref]).score)


def test_length_figures() -> None:
    figures = cs.length_figures([1, 2, 10, 30], [10, 10, 10, 10])
    assert figures["length_ratio_median"] == pytest.approx((0.2 + 1.0) / 2)
    assert figures["short_reply_share"] == 0.5
    assert cs.length_figures([3], [0])["short_reply_share"] == 0.0


def programmed_model(tok: Tokenizer, next_of: dict[int, int], default: int, scale: float = 30.0) -> OLMo2:
    """A model whose next token depends only on the current one: blocks contribute nothing (zero output
    projections), the embedding is one-hot (d_model = vocab), so ``lm_head`` column t is the logits
    after token t. ``next_of[t]`` (else ``default``) gets ``scale``, every other token 0."""
    V = tok.vocab_size
    model = OLMo2(
        ModelConfig(
            vocab_size=V, d_model=V, n_layers=1, n_heads=4, mlp_hidden=8, max_seq_len=512, norm_eps=1e-12
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight.copy_(torch.eye(V))
        for norm in (model.norm, *(m for b in model.blocks for m in (b.attn_norm, b.mlp_norm))):
            norm.weight.fill_(1.0)
        # RMSNorm of a one-hot row is sqrt(V) times it: divide so a logit is exactly ``scale``.
        for t in range(V):
            model.lm_head.weight[next_of.get(t, default), t] = scale / math.sqrt(V)
    return model.eval()


def _single_token(tok: Tokenizer, text: str) -> int:
    (token,) = tok.encode(text)
    return token


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_replies_end_of_turn_and_lengths_on_a_programmed_model(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    tok = tiny_tokenizer
    a, b = _single_token(tok, "Return"), _single_token(tok, " list")
    conversations = [
        _chat("What is a list?", "A list is a mutable sequence of items."),
        _chat("Hi?", "Hello"),
    ]
    # After any token: "Return"; after "Return": " list"; after " list": end-of-turn.
    ends = programmed_model(tok, {a: b, b: tok.eos_id}, default=a)
    got = cs.replies(ends, tok, conversations, max_new_tokens=16)
    assert [r.reply for r in got] == ["Return list", "Return list"]
    assert [(r.reply_tokens, r.ended) for r in got] == [(2, True), (2, True)]
    assert got[0].reference_tokens == len(tok.encode("A list is a mutable sequence of items."))
    # " list" loops on itself: no reply ends; every one runs to the cap.
    loops = programmed_model(tok, {a: b, b: b}, default=a)
    result = cs.run_chat_suite(loops, tok, conversations, cs.ChatSuiteConfig(max_new_tokens=8),
                               stage_metrics=lambda: {"pass_at_1": 0.25})  # fmt: skip
    assert result.metrics["end_of_turn_rate"] == 0.0
    assert [r.reply_tokens for r in result.replies] == [8, 8]
    assert result.metrics["short_reply_share"] == 0.0
    assert result.stage_metrics == {"pass_at_1": 0.25}
    mute = programmed_model(tok, {}, default=tok.eos_id)  # ends at once: says nothing
    result = cs.run_chat_suite(mute, tok, conversations, cs.ChatSuiteConfig(max_new_tokens=8))
    assert result.metrics["end_of_turn_rate"] == 0.0  # an empty reply has not ended a turn
    assert result.metrics["short_reply_share"] == 1.0
    assert result.metrics["length_ratio_median"] == 0.0 and result.metrics["chrf"] == 0.0


def test_assistant_loss_matches_the_programmed_distribution(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    tok = tiny_tokenizer
    a = _single_token(tok, "Return")
    scale = 5.0
    model = programmed_model(tok, {}, default=a, scale=scale)  # always predicts "Return" with logit 5
    conversations = [_chat("What is a list?", "Return list Return."), _chat("Hi?", "Hello there")]
    got = cs.assistant_loss(model, tok, conversations)
    # By hand: p("Return") = e^5 / (e^5 + V - 1), any other token 1 / (e^5 + V - 1), on the answer's
    # tokens and the end-of-turn after it, nothing else (the question is not scored).
    log_z = math.log(math.exp(scale) + tok.vocab_size - 1)
    nats, n, n_bytes = 0.0, 0, 0
    for conv in conversations:
        ex = tokenize_conversation(tok, conv, 512, first_trained=1)
        assert ex is not None
        targets = [t for t in ex.labels if t != IGNORE]
        assert targets[-1] == tok.eos_id and len(targets) == len(tok.encode(conv[1]["content"])) + 1
        nats += sum(log_z - (scale if t == a else 0.0) for t in targets)
        n += len(targets)
        n_bytes += len(conv[1]["content"].encode())
    assert got["assistant_loss"] == pytest.approx(nats / n, rel=1e-5)
    assert got["assistant_bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


# ------------------------------------------------------------------ regressions


def test_a_regressing_stage_fails_with_the_named_metric() -> None:
    sft = {"assistant_loss": 2.00, "end_of_turn_rate": 0.80, "short_reply_share": 0.02}
    fine = {"assistant_loss": 2.04, "end_of_turn_rate": 0.76, "short_reply_share": 0.06}
    assert cs.check_regressions(sft, fine, cs.Tolerances()) == []
    collapsed = {"assistant_loss": 2.30, "end_of_turn_rate": 0.81, "short_reply_share": 0.95}
    found = cs.check_regressions(sft, collapsed, cs.Tolerances())
    assert [r.metric for r in found] == ["assistant_loss", "short_reply_share"]
    with pytest.raises(cs.ChatRegressionError) as err:
        cs.enforce("dpo", found)
    message = str(err.value)
    assert "dpo" in message and "short_reply_share went from 0.0200 to 0.9500" in message
    assert "tolerance 0.05" in message and "assistant_loss went from 2.0000 to 2.3000" in message
    # Accepted in the config: no error, and the record says so.
    tolerances = cs.Tolerances(accept=["short_reply_share", "assistant_loss"])
    found = cs.check_regressions(sft, collapsed, tolerances)
    cs.enforce("dpo", found)
    after = cs.ChatResult(metrics=collapsed, replies=[])
    record = cs.stage_record(cs.ChatResult(metrics=sft, replies=[]), after, found, tolerances, 64)
    assert (
        record["passed"]
        and record["checked"]
        and record["accepted"] == ["short_reply_share", "assistant_loss"]
    )
    assert {r["metric"]: r["accepted"] for r in record["regressions"]} == {"short_reply_share": True,
                                                                          "assistant_loss": True}  # fmt: skip
    assert cs.stage_record(None, after, None, tolerances, 64)["checked"] is False
    with pytest.raises(ConfigError, match="chrff"):
        cs.Tolerances(accept=["chrff"]).validate()


def test_replies_leaving_the_length_band_fail_and_only_the_stage_that_moved_them() -> None:
    sft = {
        "assistant_loss": 2.0,
        "end_of_turn_rate": 0.9,
        "short_reply_share": 0.0,
        "length_ratio_median": 0.7,
    }
    # Inside [0.5, 2]: any move is fine.
    assert cs.check_regressions(sft, {**sft, "length_ratio_median": 1.9}, cs.Tolerances()) == []
    # RL halved the replies: out of the band, named with both values and the band.
    short = {**sft, "length_ratio_median": 0.43}
    (found,) = cs.check_regressions(sft, short, cs.Tolerances())
    assert found.metric == "length_ratio_median" and found.band == [0.5, 2.0]
    with pytest.raises(cs.ChatRegressionError, match=r"length_ratio_median went from 0.7000 to 0.4300 .*"
                       r"outside the band \[0.5, 2\]"):  # fmt: skip
        cs.enforce("rl", [found])
    # Already outside before: blamed only for moving further out (log scale: 0.3 -> 3.0 is further).
    before = {**sft, "length_ratio_median": 0.3}
    assert cs.check_regressions(before, {**sft, "length_ratio_median": 0.45}, cs.Tolerances()) == []
    assert cs.check_regressions(before, {**sft, "length_ratio_median": 2.2}, cs.Tolerances()) == []
    assert [
        r.metric for r in cs.check_regressions(before, {**sft, "length_ratio_median": 7.0}, cs.Tolerances())
    ] == ["length_ratio_median"]
    # The record round-trips through the manifest: failure_of rebuilds the same message.
    tolerances = cs.Tolerances()
    record = cs.stage_record(cs.ChatResult(sft, []), cs.ChatResult(short, []), [found], tolerances, 64)
    assert record["tolerances"]["length_ratio_band"] == [0.5, 2.0] and not record["passed"]
    error = cs.failure_of("rl", record)
    assert error is not None and "outside the band [0.5, 2]" in str(error)
    accepted = cs.check_regressions(sft, short, cs.Tolerances(accept=["length_ratio_median"]))
    cs.enforce("rl", accepted)
    with pytest.raises(ConfigError, match="length_ratio_band"):
        cs.Tolerances(length_ratio_band=[1.2, 2.0]).validate()


# ------------------------------------------------------------------ recipe data


def test_verifiable_answers_are_sentences_the_checkers_still_read() -> None:
    from glasslm.adapt import rewards

    train, held = builders.verifiable_tasks(SMALL)
    for s in train + held:
        assert s.answer.endswith(f"The answer is {s.task.ground_truth}.") and len(s.answer.split()) >= 6, s
        assert s.wrong != s.answer and s.wrong.startswith(s.answer.split()[0])
        check = rewards.reward_for(s.task.dataset)
        assert check(s.answer, s.task.ground_truth) == 1.0 and check(s.wrong, s.task.ground_truth) == 0.0, s
    passage = next(s for s in train if s.family == "passage")
    assert (
        passage.answer.startswith("The passage says: ")
        and passage.answer.count(passage.task.ground_truth) == 2
    )
    bare, _ = builders.verifiable_tasks(
        builders.AdaptDataConfig(**{**SMALL.__dict__, "answer_style": "bare"})
    )
    assert [b.answer for b in bare] == [s.task.ground_truth for s in train]
    # One sentence: the same restatement, ", so the answer is X." — still what the checkers extract.
    clause, _ = builders.verifiable_tasks(
        builders.AdaptDataConfig(**{**SMALL.__dict__, "answer_style": "clause"})
    )
    for c, s in zip(clause, train, strict=True):
        truth = s.task.ground_truth
        assert c.answer == s.answer.replace(f". The answer is {truth}.", f", so the answer is {truth}.")
        check = rewards.reward_for(c.task.dataset)
        assert check(c.answer, truth) == 1.0 and check(c.wrong, truth) == 0.0, c
