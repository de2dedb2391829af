"""Offline adaptation data, format loaders with quarantine, chat tokenisation, masking and packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_adapt_support import tiny_tokenizer, tiny_tokenizer_file  # noqa: F401  (fixtures)

from glasslm import artifacts
from glasslm.adapt import builders, formats, rewards, sft
from glasslm.cli import main
from glasslm.data.documents import Quarantine
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.tokenizer import Tokenizer

SMALL = builders.AdaptDataConfig(rl_train=200, rl_heldout=210, sft_verifiable=100, dpo_verifiable=40)

# ------------------------------------------------------------------ builders


def test_build_is_seeded_and_splits_are_disjoint() -> None:
    a, b = builders.build(SMALL), builders.build(SMALL)
    assert [t.to_json() for t in a.rl_heldout] == [t.to_json() for t in b.rl_heldout]
    assert a.sft == b.sft
    other = builders.build(builders.AdaptDataConfig(**{**SMALL.__dict__, "seed": 1}))
    assert [t.to_json() for t in other.rl_heldout] != [t.to_json() for t in a.rl_heldout]

    held = {t.messages[-1]["content"] for t in a.rl_heldout}
    assert len(held) == len(a.rl_heldout) == 210
    assert not held & {t.messages[-1]["content"] for t in a.rl_train}
    assert not held & {m[0]["content"] for m in a.sft}  # SFT never sees a held-out RL prompt
    sft_held_questions = {m[0]["content"] for m in a.sft_heldout}
    assert not sft_held_questions & {m[0]["content"] for m in a.sft}
    assert set(a.counts["rl_heldout_families"]) == set(builders.TASK_FAMILIES)


def test_held_out_files_alternate_documentation_and_verifiable_items() -> None:
    # Any prefix (a trainer's eval_limit) measures both kinds; one after the other, the first 64 of
    # the tiny config's files were all documentation answers.
    data = builders.build(SMALL)
    verifiable = {t.messages[-1]["content"] for t in data.rl_heldout}
    sft_kinds = [m[0]["content"] in verifiable for m in data.sft_heldout]
    dpo_kinds = [p.prompt[-1]["content"] in verifiable for p in data.dpo_heldout]
    for kinds in (sft_kinds, dpo_kinds):
        n = min(kinds.count(True), kinds.count(False))
        assert n >= 30 and kinds[: 2 * n] == [False, True] * n
    assert builders.alternate([1, 2, 3], ["a"]) == [1, "a", 2, 3]
    assert builders.alternate([], ["a", "b"]) == ["a", "b"]


def test_every_verifiable_task_checks_its_own_answer_and_rejects_the_wrong_one() -> None:
    train, held = builders.verifiable_tasks(SMALL)
    for s in train + held:
        check = rewards.reward_for(s.task.dataset)
        assert check(s.answer, s.task.ground_truth) == 1.0, s
        assert check(s.wrong, s.task.ground_truth) == 0.0, s


def test_family_of_recognises_every_builder_template_and_nothing_else() -> None:
    train, held = builders.verifiable_tasks(SMALL)
    for s in train + held:
        assert builders.family_of(s.task.messages[-1]["content"]) == s.family, s
    assert builders.family_of("What is the capital of France?") == "other"
    assert builders.family_of("What is 3 + 4? Explain.") == "other"


def test_instruction_pairs_come_from_help_topics_and_docstrings() -> None:
    from pydoc_data.topics import topics

    pairs = builders.help_topic_pairs(400)
    key, question, answer = next(p for p in pairs if p[0] == "topic:assert")
    assert "'assert'" in question
    assert answer.startswith("Assert statements are a convenient way to insert debugging assertions")
    flat = " ".join(topics["assert"].split())
    assert answer.split(": ")[0] + ":" in flat  # the first paragraph, verbatim up to whitespace
    docs = builders.docstring_pairs(["textwrap"], 400)
    assert any(k == "doc:textwrap.dedent" and "whitespace" in a for k, _, a in docs)
    assert all(len(a) <= 402 for _, _, a in pairs + docs)


def test_preferences_differ_and_unknown_task_family_is_a_config_error() -> None:
    data = builders.build(SMALL)
    assert all(p.chosen != p.rejected for p in data.dpo + data.dpo_heldout)
    from glasslm.config import ConfigError

    with pytest.raises(ConfigError, match="arithmetc"):
        builders.build(builders.AdaptDataConfig(tasks=["arithmetc"]))


# ------------------------------------------------------------------ loaders


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sft_loader_quarantines_bad_lines_with_file_line_and_reason(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    f = _write_lines(tmp_path / "sft.jsonl", [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"text": "dolma, not chat"}),
    ])  # fmt: skip
    q = Quarantine()
    loaded = formats.load_sft(f, q)
    assert loaded == [good["messages"]]
    where = [(r["line"], r["reason"].split(":")[0]) for r in q.records]
    assert where == [(2, "malformed JSON"), (3, "bad record"), (4, "bad record"), (5, "bad record")]
    assert all(r["file"] == str(f) for r in q.records)
    assert "robot" in q.records[2]["reason"]


def test_preference_loader_accepts_both_tulu_layouts(tmp_path: Path) -> None:
    user = {"role": "user", "content": "2+2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    f = _write_lines(tmp_path / "dpo.jsonl", [
        json.dumps({"prompt": [user], "chosen": [good], "rejected": [bad]}),
        json.dumps({"chosen": [user, good], "rejected": [user, bad]}),  # full conversations
        json.dumps({"prompt": "2+2?", "chosen": [user, good], "rejected": [user, bad]}),
        json.dumps({"chosen": [user, good], "rejected": [{"role": "user", "content": "other"}, bad]}),
        json.dumps({"prompt": [user], "chosen": [good], "rejected": [good]}),
    ])  # fmt: skip
    q = Quarantine()
    prefs = formats.load_preferences(f, q)
    assert [p.to_json() for p in prefs] == [{"prompt": [user], "chosen": [good], "rejected": [bad]}] * 3
    assert [r["line"] for r in q.records] == [4, 5]
    assert "shared prompt" in q.records[0]["reason"] and "identical" in q.records[1]["reason"]


def test_rl_loader_checks_the_reward_name(tmp_path: Path) -> None:
    user = [{"role": "user", "content": "1+1?"}]
    f = _write_lines(tmp_path / "rl.jsonl", [
        json.dumps({"messages": user, "ground_truth": "2", "dataset": "gsm8k"}),
        json.dumps({"messages": user, "ground_truth": 2, "dataset": "numeric"}),
        json.dumps({"messages": user, "ground_truth": "2", "dataset": "ifeval_unknown"}),
        json.dumps({"messages": user}),
    ])  # fmt: skip
    q = Quarantine()
    tasks = formats.load_rl(f, q)
    assert [(t.ground_truth, t.dataset) for t in tasks] == [("2", "gsm8k"), ("2", "numeric")]
    assert [r["line"] for r in q.records] == [3, 4]


# ------------------------------------------------------------------ the CLI verb


def test_adapt_data_cli_writes_an_artifact_the_loaders_accept(tmp_path: Path) -> None:
    out = tmp_path / "adapt" / "data"
    rc = main(["adapt", "data", "--out", str(out), "--adapt_data.rl_train=100", "--adapt_data.rl_heldout=200",
               "--adapt_data.sft_verifiable=50", "--adapt_data.dpo_verifiable=20"])  # fmt: skip
    assert rc == 0
    manifest = artifacts.read_manifest(out)
    assert manifest["kind"] == "adapt_data"
    assert manifest["config"]["adapt_data"]["rl_heldout"] == 200
    q = Quarantine()
    counts = {
        "sft": len(formats.load_sft(out / "sft.jsonl", q)),
        "sft_heldout": len(formats.load_sft(out / "sft_heldout.jsonl", q)),
        "dpo": len(formats.load_preferences(out / "dpo.jsonl", q)),
        "dpo_heldout": len(formats.load_preferences(out / "dpo_heldout.jsonl", q)),
        "rl_train": len(formats.load_rl(out / "rl_train.jsonl", q)),
        "rl_heldout": len(formats.load_rl(out / "rl_heldout.jsonl", q)),
    }
    assert q.total == 0
    assert counts == {k: manifest["metrics"][k] for k in counts}
    assert counts["rl_heldout"] == 200
    assert main(["adapt", "data", "--out", str(tmp_path / "x"), "--adapt_data.rl_heldot=3"]) == 2


# ------------------------------------------------------------------ chat tokenisation and masking


MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Reverse the word 'class'."},
    {"role": "assistant", "content": "ssalc"},
]


def test_tokenisation_matches_encode_chat_and_labels_only_assistant_turns(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    ex = sft.tokenize_conversation(tiny_tokenizer, MULTI, max_len=512)
    assert ex is not None
    full = tiny_tokenizer.encode_chat(MULTI)
    assert ex.input_ids == full[:-1]
    targets = [lab for lab in ex.labels if lab != sft.IGNORE]
    # Trained: each assistant turn's text, its closing end-of-text, and the newline between turns.
    assert tiny_tokenizer.decode(targets) == "5<|endoftext|>\nssalc<|endoftext|>"
    # Everything before the first answer (system, user, the <|assistant|> header) is masked.
    first = next(i for i, lab in enumerate(ex.labels) if lab != sft.IGNORE)
    assert tiny_tokenizer.decode(full[: first + 1]).endswith("<|assistant|>\n")


def test_dpo_side_trains_only_the_response(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    from glasslm.adapt.dpo import tokenize_pair

    pref = formats.Preference(
        prompt=MULTI[:4], chosen=[MULTI[4]], rejected=[{"role": "assistant", "content": "x"}]
    )
    pair = tokenize_pair(tiny_tokenizer, pref, 512)
    assert pair is not None
    assert tiny_tokenizer.decode([t for t in pair.chosen.labels if t != sft.IGNORE]) == "ssalc<|endoftext|>"
    assert tiny_tokenizer.decode([t for t in pair.rejected.labels if t != sft.IGNORE]) == "x<|endoftext|>"


def test_truncation_drops_conversations_with_nothing_to_learn(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    assert sft.tokenize_conversation(tiny_tokenizer, long_prompt, max_len=16) is None
    whole = sft.tokenize_conversation(tiny_tokenizer, MULTI, max_len=512)
    assert whole is not None
    cut = len(whole.input_ids) - 3
    ex = sft.tokenize_conversation(tiny_tokenizer, MULTI, max_len=cut)
    assert ex is not None and ex.input_ids == whole.input_ids[:cut] and ex.labels == whole.labels[:cut]


def test_tokenize_whole_leaves_out_what_it_would_cut(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    whole = sft.tokenize_conversation(tiny_tokenizer, MULTI, max_len=512)
    assert whole is not None
    n = len(whole.input_ids)
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    # At exactly its length the conversation is kept, identical to the uncut tokenisation; one less leaves it out.
    kept, left_out = sft.tokenize_whole(tiny_tokenizer, [MULTI, short], max_len=n)
    assert left_out == 0 and kept[0] == whole
    kept, left_out = sft.tokenize_whole(tiny_tokenizer, [MULTI, short], max_len=n - 1)
    assert (
        left_out == 1 and len(kept) == 1 and kept[0] == sft.tokenize_conversation(tiny_tokenizer, short, 512)
    )


def test_packed_rows_give_the_same_loss_as_conversations_alone(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    convs = [
        MULTI,
        MULTI[1:3],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    ]
    examples, dropped = sft.tokenize_all(tiny_tokenizer, convs, max_len=64)
    assert dropped == 0
    seq_len = sum(len(e.input_ids) for e in examples) + 5  # all three fit in one row, plus padding
    rows = sft.pack(examples, seq_len)
    assert rows == [[0, 1, 2]]
    batch = sft.collate(examples, rows, seq_len, tiny_tokenizer.pad_id)
    assert batch.n_targets == sum(e.n_targets for e in examples)
    assert batch.position_ids[0, len(examples[0].input_ids)].item() == 0  # restarts per conversation

    torch.manual_seed(0)
    model = OLMo2(
        ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=256)
    )
    model.eval()
    with torch.no_grad():
        packed = sft.sft_loss(model(batch.input_ids, batch.position_ids, batch.doc_ids), batch.labels, "sum")
        alone = sum(
            sft.sft_loss(model(torch.tensor([e.input_ids])), torch.tensor([e.labels]), "sum")
            for e in examples
        )
    assert packed.item() == pytest.approx(float(alone), rel=1e-4)


def test_pack_splits_rows_greedily(tiny_tokenizer: Tokenizer) -> None:  # noqa: F811
    examples = [sft.Example(input_ids=[1] * n, labels=[1] * n) for n in (5, 4, 3, 6)]
    assert sft.pack(examples, 9) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="seq_len"):
        sft.pack(examples, 5)
