"""The trainer's chunked LM head + loss (``linear_lm_loss``) against the plain path (logits, then
``lm_loss``): same loss, same gradients, with z-loss and ignored labels, in one step and in a run.

Tolerances: fp64 to 1e-12 (the two paths do the same arithmetic in a different order); fp32 to
rtol 1e-5 / atol 1e-5 on gradients of magnitude up to ~10 (matmul blocking and summation order over
chunks move the last bits).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_support import make_tokens, write_config

from glasslm.cli import main
from glasslm.model.loss import linear_lm_loss, lm_loss
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train.metrics import read_metrics

Z = 1e-2  # large enough that a wrong z-loss gradient shows


def _case(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, 16, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(37, 16, generator=gen, dtype=dtype).requires_grad_()
    labels = torch.randint(0, 37, (3, 11), generator=gen)
    labels[0, :4] = -100  # a masked prompt
    labels[2, -1] = -100
    return hidden, weight, labels


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-5))]
)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_loss_and_grads_equal_plain(
    dtype: torch.dtype, tol: dict[str, float], reduction: str, chunk: int
) -> None:
    hidden, weight, labels = _case(dtype)
    ce, z = lm_loss(hidden @ weight.T, labels, z_loss=Z, reduction=reduction)
    ref = _grads(ce + z, hidden, weight)
    objective, ce_c, z_c = linear_lm_loss(
        hidden, weight, labels, z_loss=Z, reduction=reduction, chunk_tokens=chunk
    )
    got = _grads(objective, hidden, weight)
    torch.testing.assert_close(ce_c, ce.detach(), **tol)
    torch.testing.assert_close(z_c, z.detach(), **tol)
    torch.testing.assert_close(objective.detach(), (ce + z).detach(), **tol)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert torch.all(got[0][0, :4] == 0)  # ignored rows get no gradient


def test_chunked_loss_scales_with_upstream_grad_and_without_z() -> None:
    # The gradients are made in forward; backward must still apply the incoming gradient (the
    # trainer multiplies by 1 / tokens of the global batch).
    hidden, weight, labels = _case(torch.float64, seed=1)
    ce, z = lm_loss(hidden @ weight.T, labels, reduction="sum")
    ref = _grads(0.37 * (ce + z), hidden, weight)
    objective, _, z_c = linear_lm_loss(hidden, weight, labels, reduction="sum", chunk_tokens=5)
    assert float(z_c) == 0.0
    for a, b in zip(_grads(0.37 * objective, hidden, weight), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_loss_edge_cases() -> None:
    hidden, weight, labels = _case(torch.float64)
    none = torch.full_like(labels, -100)
    objective, ce, _ = linear_lm_loss(hidden, weight, none, z_loss=Z, reduction="mean")
    gh, gw = _grads(objective, hidden, weight)
    assert float(ce) == 0.0 and not gh.any() and not gw.any()
    with torch.no_grad():  # evaluation: no gradient work, same value
        objective_ng, _, _ = linear_lm_loss(hidden, weight, labels, z_loss=Z)
    ce_ref, z_ref = lm_loss(hidden @ weight.T, labels, z_loss=Z, reduction="sum")
    torch.testing.assert_close(objective_ng, (ce_ref + z_ref).detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chunk_tokens"):
        linear_lm_loss(hidden, weight, labels, chunk_tokens=0)


def test_chunked_loss_bf16_head_matches_bf16_logits() -> None:
    # compute_dtype=bf16 is what the trainer passes under autocast: the head's matmul in bf16,
    # softmax and sums in fp32, as lm_loss on autocast's bf16 logits.
    hidden, weight, labels = _case(torch.float32, seed=2)
    ce, z = lm_loss(hidden.bfloat16() @ weight.bfloat16().T, labels, z_loss=Z)
    ref = _grads(ce + z, hidden, weight)
    objective, ce_c, _ = linear_lm_loss(
        hidden, weight, labels, z_loss=Z, reduction="mean", chunk_tokens=7, compute_dtype=torch.bfloat16
    )
    got = _grads(objective, hidden, weight)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    torch.testing.assert_close(ce_c, ce.detach(), rtol=1e-5, atol=1e-5)  # same bf16 logits, fp32 sums
    for a, b in zip(got, ref, strict=True):  # gradients rounded to bf16 once more on one side
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_model_hidden_path_gives_the_same_parameter_grads() -> None:
    torch.manual_seed(0)
    model = OLMo2(
        ModelConfig(
            vocab_size=97,
            d_model=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            mlp_hidden=64,
            tie_embeddings=False,
        )
    ).double()
    x = torch.randint(0, 97, (2, 9))
    y = torch.randint(0, 97, (2, 9))
    y[1, :3] = -100
    ce, z = lm_loss(model(x), y, z_loss=Z, reduction="sum")
    (ce + z).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    hidden = model.hidden(x)
    assert hidden.shape == (2, 9, 32)
    objective, _, _ = linear_lm_loss(hidden, model.lm_head.weight, y, z_loss=Z, chunk_tokens=4)
    objective.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)


def test_training_run_same_with_and_without_chunking(tmp_path: Path) -> None:
    """The trainer's plain path (logits, lm_loss, aten::mm) and its fast one (chunks of 5 tokens,
    oneDNN linears) train to the same losses."""
    tokens = make_tokens(tmp_path / "tokens", n_docs=120)
    runs = {}
    for chunk in (0, 5):
        cfg = write_config(
            tmp_path / f"c{chunk}.yaml",
            tokens,
            trainer={
                "max_steps": 4,
                "checkpoint_every": 4,
                "loss_chunk_tokens": chunk,
                "onednn_linear": chunk > 0,
                "micro_batch_size": 4,
                "z_loss": Z,
            },
            optim={"lr": 1e-2},
        )
        assert main(["train", str(cfg), "--out", str(tmp_path / f"run{chunk}")]) == 0
        runs[chunk] = read_metrics(tmp_path / f"run{chunk}" / "metrics.jsonl")
    assert len(runs[0]) == 4
    for plain, chunked in zip(runs[0], runs[5], strict=True):
        for key in ("loss", "ce", "z_loss", "grad_norm"):
            assert chunked[key] == pytest.approx(plain[key], rel=1e-4), key
