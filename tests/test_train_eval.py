"""In-loop held-out evaluation (`trainer.eval_every`): bits per byte per domain in metrics.jsonl,
equal to what `glasslm eval` measures on the same checkpoint, and without any effect on training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_train_support import make_tokens as make_counting_tokens
from test_train_support import write_config
from tokens_support import make_tokens

from glasslm.cli import main
from glasslm.eval.harness import EvalConfig, evaluate_model
from glasslm.model.checkpoint import load_model
from glasslm.tokenizer import Tokenizer
from glasslm.train.metrics import read_metrics

TRAINER = {"max_steps": 8, "checkpoint_every": 8, "log_every": 3}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tokens, tokenizer dir): real text with held-out web and code domains, built by the real verbs."""
    _, tok, toks = make_tokens(tmp_path_factory.mktemp("data"))
    return toks, tok


def _train(tokens: Path, root: Path, **trainer: object) -> Path:
    root.mkdir(parents=True)
    cfg = write_config(root / "c.yaml", tokens, trainer={**TRAINER, **trainer}, optim={"lr": 1e-2})
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


def test_eval_rows_match_glasslm_eval_and_do_not_change_training(
    tokens: tuple[Path, Path], tmp_path: Path
) -> None:
    toks, tok = tokens
    with_eval = _train(toks, tmp_path / "a", eval_every=4, eval_max_docs=6)
    rows = read_metrics(with_eval / "metrics.jsonl")
    # Logged steps: every 3rd, the last, and every evaluation step.
    assert [r["step"] for r in rows] == [3, 4, 6, 8]
    evaluated = {r["step"]: r for r in rows if "eval/bpb_macro" in r}
    assert sorted(evaluated) == [4, 8]
    for row in evaluated.values():
        domains = {k.removeprefix("eval/bpb/"): v for k, v in row.items() if k.startswith("eval/bpb/")}
        assert sorted(domains) == ["code", "web"]
        assert all(math.isfinite(v) and v > 0 for v in domains.values())
        assert row["eval/bpb_macro"] == pytest.approx(sum(domains.values()) / len(domains))
        assert row["eval_s"] > 0 and row["mem_gb"] > 0
    assert evaluated[8]["eval/bpb_macro"] < evaluated[4]["eval/bpb_macro"]  # it is learning the text

    # The last row is the final model's held-out bits per byte, as `glasslm eval` computes it.
    loaded = load_model(with_eval)
    config = EvalConfig(suite=["perplexity"], tokens=str(toks), ppl_max_docs=6)
    results, _ = evaluate_model(loaded.model, Tokenizer.from_file(tok / "tokenizer.json"), config)
    assert evaluated[8]["eval/bpb_macro"] == pytest.approx(
        results["perplexity"]["macro"]["bits_per_byte"], rel=1e-6
    )

    # Evaluation draws no random numbers and moves no data: the losses are bitwise those of a run without it.
    without = read_metrics(_train(toks, tmp_path / "b", eval_every=0) / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in without] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in rows if r["step"] != 4
    ]
    assert not any(k.startswith("eval/") for r in without for k in r)


def test_eval_needs_heldout_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counting = make_counting_tokens(tmp_path / "tokens")  # no tokenizer named, no heldout/
    cfg = write_config(tmp_path / "c.yaml", counting, trainer={**TRAINER, "eval_every": 2})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "trainer.eval_every" in capsys.readouterr().err


def test_tensorboard_writes_events_or_says_why_not(
    tokens: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glasslm.train.metrics import TensorBoardLog

    capsys.readouterr()
    run = _train(tokens[0], tmp_path / "tb", max_steps=2, tensorboard=True)
    missing = TensorBoardLog.available()
    if missing is None:
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    else:  # the run still trains and says why there is no tensorboard/
        assert "trainer.tensorboard: not writing RUN/tensorboard/" in capsys.readouterr().err
        assert not (run / "tensorboard").exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [2]
