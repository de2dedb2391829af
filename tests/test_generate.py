"""The generation engine: HF parity for greedy decoding, batching, sampling controls, streaming text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from glasslm.cli import main
from glasslm.model.checkpoint import load_model, save_checkpoint
from glasslm.model.generate import Engine, IncrementalDetokenizer, SamplingParams
from glasslm.model.hf import export_hf
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.model.presets import pad_vocab
from glasslm.tokenizer import SPECIAL_TOKENS, Tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the ones before it.",
    "Open data, open code, open weights: every artifact has a manifest.",
    "Héllo wörld, ça va? Naïve café déjà vu.",
    "Tokens, tokens everywhere; caches make decoding fast.",
]


def build_tiny_model(root: Path, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences and a random 2-layer OLMo-2 checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    tok_file = root / "tokenizer.json"
    tok.save(str(tok_file))
    config = ModelConfig(
        vocab_size=pad_vocab(tok.get_vocab_size()),
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=128,
        max_seq_len=1024,
    )
    torch.manual_seed(seed)
    model = OLMo2(config)
    with torch.no_grad():  # bigger logits than the 0.02 init, so greedy paths are not near-ties
        model.lm_head.weight.mul_(20)
    save_checkpoint(model, root / "ckpt", tokenizer=tok_file, stage="init")
    return root / "ckpt"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def engine(tiny_ckpt: Path) -> Engine:
    loaded = load_model(tiny_ckpt)
    return Engine(loaded.model, Tokenizer.from_file(tiny_ckpt), max_batch=4, max_len=128)


PROMPTS = ["The quick brown", "Open data", "A language model predicts the next token", "Héllo"]


def test_greedy_matches_hf_generate_batched(tiny_ckpt: Path, tmp_path: Path, engine: Engine) -> None:
    transformers = pytest.importorskip("transformers")
    export_hf(tiny_ckpt, tmp_path / "hf")  # what `glasslm convert to-hf` runs
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = Tokenizer.from_file(tiny_ckpt)
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ours = engine.generate(PROMPTS, params)  # prompts of different lengths in one batch
    for prompt, completion in zip(PROMPTS, ours, strict=True):
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            expected = hf.generate(
                ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_id
            )[0, ids.shape[1] :].tolist()
        assert completion.token_ids == expected, prompt
        assert completion.finish_reason == "length" and completion.completion_tokens == 12
        assert completion.text == tok.decode(expected)


def test_joining_mid_batch_does_not_change_tokens(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    alone = [c.token_ids for c in (engine.generate([p], params)[0] for p in PROMPTS)]
    # Continuous batching: requests join while others are half way through their decoding.
    ids: list[str] = []
    events: dict[str, list[int | None]] = {}
    for prompt in PROMPTS:
        ids.append(engine.add(prompt, params))
        for _ in range(3):
            for e in engine.step():
                events.setdefault(e.request_id, []).append(e.token_id)
    while engine.has_work():
        for e in engine.step():
            events.setdefault(e.request_id, []).append(e.token_id)
    for rid in ids:
        engine.forget(rid)
    assert [events[i] for i in ids] == alone


def test_sampling_is_seeded_per_request_and_respects_top_k(engine: Engine) -> None:
    p = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, seed=7, ignore_eos=True)
    a = engine.generate(["Open data"], p)[0].token_ids
    # Same seed in a different batch position and company gives the same sample.
    b = engine.generate(["The quick brown", "Open data"], [SamplingParams(max_new_tokens=3), p])[1].token_ids
    assert a == b
    c = engine.generate(
        ["Open data"], SamplingParams(max_new_tokens=8, temperature=1.0, seed=8, ignore_eos=True)
    )
    assert c[0].token_ids != a  # a different seed samples differently (vocabulary ~400)

    # top_k=1 is greedy whatever the temperature.
    greedy = engine.generate(["Open data"], SamplingParams(max_new_tokens=8, ignore_eos=True))[0].token_ids
    k1 = engine.generate(
        ["Open data"], SamplingParams(max_new_tokens=8, temperature=5.0, top_k=1, seed=1, ignore_eos=True)
    )[0].token_ids
    assert k1 == greedy


def test_repetition_penalty_matches_hf_processor(engine: Engine) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    from glasslm.model.generate import sample

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0)) * 3
    seen_ids = torch.tensor([[1, 2, 3], [4, 4, 5]])
    seen = torch.zeros(2, 50, dtype=torch.bool)
    seen[0, [1, 2, 3]] = True
    seen[1, [4, 5]] = True
    expected = RepetitionPenaltyLogitsProcessor(1.7)(seen_ids, logits.clone()).argmax(-1).tolist()
    got, _ = sample(logits, [SamplingParams(repetition_penalty=1.7)] * 2, [None, None], seen)
    assert got == expected


def test_stop_strings_and_eos(engine: Engine, tiny_ckpt: Path) -> None:
    full = engine.generate(["The quick brown"], SamplingParams(max_new_tokens=20, ignore_eos=True))[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = engine.generate(
        ["The quick brown"], SamplingParams(max_new_tokens=20, stop=[stop], ignore_eos=True)
    )[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    # A token id as the stop: generation ends before it.
    first = full.token_ids[2]
    by_id = engine.generate(
        ["The quick brown"], SamplingParams(max_new_tokens=20, stop_token_ids=[first], ignore_eos=True)
    )[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == full.token_ids[: full.token_ids.index(first)]


def test_streaming_deltas_add_up_and_hold_back_stops(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=25, temperature=1.0, seed=3, ignore_eos=True)
    events = list(engine.stream("Héllo", params))
    assert events[-1].finished and sum(e.finished for e in events) == 1
    final = engine.generate(["Héllo"], params)[0]
    assert "".join(e.text for e in events) == final.text
    assert [e.token_id for e in events] == final.token_ids
    assert not engine.has_work() and not engine.finished


def test_detokenizer_never_splits_a_character(tiny_ckpt: Path) -> None:
    tok = Tokenizer.from_file(tiny_ckpt)
    ids = tok.encode("ok 🙂 日本")
    assert len(ids) > 4  # unseen characters are several byte tokens each
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == "ok 🙂 日本"
    assert all("\ufffd" not in d for d in deltas)
    # Stop strings are held back while they might still match, and never shown.
    detok = IncrementalDetokenizer(tok, stop=["日本"])
    shown = "".join(detok.push(i) for i in ids) + detok.flush()
    assert shown == "ok 🙂 " and detok.stopped_at is not None


def test_abort_frees_the_slot(engine: Engine) -> None:
    rid = engine.add("Open data", SamplingParams(max_new_tokens=50, ignore_eos=True))
    engine.step()
    engine.abort(rid)
    events = engine.step()
    assert [(e.request_id, e.finish_reason) for e in events if e.finished] == [(rid, "abort")]
    engine.forget(rid)
    assert not engine.has_work()


def test_limits_are_reported(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at most 127"):
        engine.add(list(range(1, 200)))
    with pytest.raises(ValueError, match="top_p"):
        engine.add("x", SamplingParams(top_p=0))
    # Running out of cache ends with "length" rather than an error.
    out = engine.generate([list(range(5, 120))], SamplingParams(max_new_tokens=100, ignore_eos=True))[0]
    assert out.finish_reason == "length" and out.prompt_tokens + out.completion_tokens == 128


def test_generate_cli(tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "generate",
                str(tiny_ckpt),
                "--prompt",
                "The quick brown",
                "--prompt",
                "Open data",
                "--max-new-tokens",
                "6",
                "--ignore-eos",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in out["results"]] == ["The quick brown", "Open data"]
    assert all(r["completion_tokens"] == 6 and r["finish_reason"] == "length" for r in out["results"])
    # a device this machine lacks, or no device at all, is one line (torch raises tracebacks for both)
    for device, says in (("tpu", "is not a device"), ("cuda:64", "cuda:64")):
        assert main(["generate", str(tiny_ckpt), "--prompt", "x", "--device", device]) == 2
        assert says in capsys.readouterr().err


def test_logprobs_match_a_full_forward(engine: Engine) -> None:
    prompt = engine.tokenizer.encode("Open data")
    out = engine.generate(
        [prompt], SamplingParams(max_new_tokens=6, temperature=1.0, seed=0, ignore_eos=True, logprobs=True)
    )[0]
    seq = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logp = engine.model(seq).log_softmax(-1)[0]
    expected = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


def test_throughput_benchmark_runs_and_agrees_with_hf() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "generate_throughput.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--d-model",
            "64",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--mlp",
            "128",
            "--vocab",
            "512",
            "--new-tokens",
            "6",
            "--batches",
            "1",
            "3",
            "--repeats",
            "1",
            "--no-compile",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # the JSON document, without the one-line BENCH-RESULT figures run_all.sh collects
    rows = json.loads(
        "\n".join(line for line in out.stdout.splitlines() if not line.startswith("BENCH-RESULT "))
    )["rows"]
    assert [r["batch"] for r in rows] == [1, 3]
    # Token agreement is exact; speeds are only checked to be measured (decode may be None under load).
    assert all(
        r["glasslm_vs_hf_same_tokens"] and r["glasslm_e2e_tok_s"] > 0 and r["hf_e2e_tok_s"] > 0 for r in rows
    ), rows
    assert all("compiled_decode_tok_s" not in r for r in rows)


def _hf_greedy(tiny_ckpt: Path, out: Path, prompts: list[str], n: int, **kwargs: float) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    if not out.exists():
        export_hf(tiny_ckpt, out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = Tokenizer.from_file(tiny_ckpt)
    expected = []
    for prompt in prompts:
        ids = torch.tensor([tok.encode(prompt)])
        with torch.no_grad():
            expected.append(
                hf.generate(
                    ids,
                    max_new_tokens=n,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=tok.pad_id,
                    **kwargs,
                )[0, ids.shape[1] :].tolist()
            )
    return expected


def test_repetition_penalty_in_a_mixed_batch_matches_hf(
    engine: Engine, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """Seen tokens are tracked only for penalised requests: one beside an unpenalised one in a batch."""
    penalised = SamplingParams(max_new_tokens=12, repetition_penalty=1.8, ignore_eos=True)
    plain = SamplingParams(max_new_tokens=12, ignore_eos=True)
    got = engine.generate([PROMPTS[0], PROMPTS[1]], [penalised, plain])
    with_penalty = _hf_greedy(tiny_ckpt, tmp_path / "hf", PROMPTS[:1], 12, repetition_penalty=1.8)[0]
    assert got[0].token_ids == with_penalty
    assert with_penalty != _hf_greedy(tiny_ckpt, tmp_path / "hf", PROMPTS[:1], 12)[0]  # the penalty matters
    assert got[1].token_ids == _hf_greedy(tiny_ckpt, tmp_path / "hf", PROMPTS[1:2], 12)[0]


def test_fixed_shape_decode_path_matches_hf_and_drops_stale_weights(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled engine's fixed-shape step (every slot a row, every cache position a key) with an
    identity "compiler", so the path runs in seconds; the real compiler is the slow test below."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    model = load_model(tiny_ckpt).model
    fixed = Engine(model, Tokenizer.from_file(tiny_ckpt), max_batch=4, max_len=64, compile=True)
    assert fixed.compiled and fixed.compile_seconds is not None
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    # Three prompts in four slots: one free row rides along and must not disturb the others.
    got = [c.token_ids for c in fixed.generate(PROMPTS[:3], params)]
    assert got == _hf_greedy(tiny_ckpt, tmp_path / "hf", PROMPTS[:3], 12)
    # Weights frozen into a compiled graph go stale when training updates them in place: fall back.
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)
    with pytest.warns(RuntimeWarning, match="weights changed"):
        after = fixed.generate(PROMPTS[:1], params)[0].token_ids
    assert not fixed.compiled
    eager = Engine(model, Tokenizer.from_file(tiny_ckpt), max_batch=4, max_len=64)
    assert after == eager.generate(PROMPTS[:1], params)[0].token_ids


def test_compile_failure_falls_back_to_eager(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, **kwargs: object) -> object:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    loaded = load_model(tiny_ckpt)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        fallback = Engine(loaded.model, Tokenizer.from_file(tiny_ckpt), max_batch=2, max_len=64, compile=True)
    assert not fallback.compiled and fallback.compile_seconds is None
    out = fallback.generate(["Open data"], SamplingParams(max_new_tokens=5, ignore_eos=True))[0]
    assert out.completion_tokens == 5


@pytest.mark.slow
def test_compiled_engine_matches_hf_generate(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The real torch.compile (Inductor, frozen weights): greedy tokens identical to HF's in fp32."""
    loaded = load_model(tiny_ckpt)
    compiled = Engine(loaded.model, Tokenizer.from_file(tiny_ckpt), max_batch=4, max_len=64, compile=True)
    assert compiled.compiled, "torch.compile failed on this machine (see the warning)"
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    got = [c.token_ids for c in compiled.generate(PROMPTS, params)]
    assert got == _hf_greedy(tiny_ckpt, tmp_path / "hf", PROMPTS, 12)
    # A second batch reuses the graph: requests joining mid-way through others' decoding.
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    first = compiled.add(PROMPTS[0], params)
    compiled.step(), compiled.step()
    second = compiled.add(PROMPTS[1], params)
    while compiled.has_work():
        compiled.step()
    assert compiled.completion(first).token_ids == got[0][:10]
    assert compiled.completion(second).token_ids == got[1][:10]


def test_generate_cli_compile_flag_reaches_the_engine(
    tiny_ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[object] = []

    def record(fn: object, **kwargs: object) -> object:  # identity "compiler" that notes it was asked
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    assert (
        main(
            [
                "generate",
                str(tiny_ckpt),
                "--prompt",
                "Open data",
                "--max-new-tokens",
                "4",
                "--ignore-eos",
                "--compile",
                "--json",
            ]
        )
        == 0
    )
    assert len(compiled) == 1
    assert json.loads(capsys.readouterr().out)["results"][0]["completion_tokens"] == 4
