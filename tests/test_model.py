"""The OLMo-2 model: invariants that hold exactly (parameter counts, masking, loss, init)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from glasslm.cli import main
from glasslm.model.checkpoint import load_model
from glasslm.model.loss import lm_loss
from glasslm.model.olmo2 import (
    ModelConfig,
    OLMo2,
    document_mask,
    flops_per_token,
    matmul_params,
    param_counts,
    positions_from_doc_ids,
)
from glasslm.model.presets import PRESETS, pad_vocab

CFG = ModelConfig(
    vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, max_seq_len=64
)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("architecture", ["olmo2", "llama"])
def test_param_counts_match_modules(tie: bool, architecture: str) -> None:
    config = ModelConfig(**{**CFG.__dict__, "tie_embeddings": tie, "architecture": architecture})
    model = OLMo2(config)
    actual = sum(p.numel() for p in model.parameters())  # shared tensors are counted once
    assert param_counts(config)["total"] == actual
    assert param_counts(config)["non_embedding"] == actual - model.embed.weight.numel()


def test_flops_formula() -> None:
    c = CFG
    hd = c.d_model // c.n_heads
    n = c.n_layers * (c.d_model * hd * (2 * c.n_heads + 2 * c.kv_heads) + 3 * c.d_model * c.mlp_hidden)
    n += c.d_model * c.vocab_size
    assert matmul_params(c) == n
    assert flops_per_token(c, 64) == 6 * n + 6 * c.n_layers * c.d_model * 64


def test_presets_are_valid_and_sized() -> None:
    for config in PRESETS.values():
        config.validate()
    one_b = param_counts(PRESETS["olmo2-1b"])["total"]
    seven_b = param_counts(PRESETS["olmo2-7b"])["total"]
    assert 1.1e9 < one_b < 1.6e9 and 7.0e9 < seven_b < 7.5e9  # OLMo-2 1B ≈ 1.48B, 7B ≈ 7.30B
    assert PRESETS["olmo2-32b"].kv_heads == 8 and pad_vocab(100_278) == 100_352


def test_document_mask_equals_separate_documents() -> None:
    torch.manual_seed(0)
    model = OLMo2(CFG).eval()
    a, b = torch.randint(0, 128, (1, 7)), torch.randint(0, 128, (1, 5))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    assert positions_from_doc_ids(doc_ids).tolist() == [list(range(7)) + list(range(5))]
    with torch.no_grad():
        together = model(packed, doc_ids=doc_ids)
        separate = torch.cat([model(a), model(b)], dim=1)
        leaky = model(packed)
    assert torch.allclose(together, separate, atol=1e-5)
    assert not torch.allclose(leaky[:, 7:], separate[:, 7:], atol=1e-3)
    mask = document_mask(doc_ids)[0, 0]
    assert mask[8, 6].item() is False and mask[8, 7].item() is True and mask[6, 7].item() is False


def test_loss_ignore_index_and_z_loss() -> None:
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = -100
    ce, z = lm_loss(logits, labels, z_loss=1e-4)
    valid = labels != -100
    ref_ce = torch.nn.functional.cross_entropy(logits[valid], labels[valid])
    ref_z = 1e-4 * torch.logsumexp(logits[valid], -1).pow(2).mean()
    assert torch.allclose(ce, ref_ce) and torch.allclose(z, ref_z)
    ce_sum, _ = lm_loss(logits, labels, reduction="sum")
    assert torch.allclose(ce_sum, ref_ce * valid.sum())
    assert lm_loss(logits.bfloat16(), labels)[0].dtype == torch.float32


def test_init_is_truncated_normal() -> None:
    torch.manual_seed(0)
    model = OLMo2(ModelConfig(vocab_size=512, d_model=64, n_layers=1, n_heads=4, mlp_hidden=256))
    w = model.blocks[0].mlp.up_proj.weight
    assert w.abs().max().item() <= 3 * 0.02 + 1e-7
    assert math.isclose(w.std().item(), 0.02, rel_tol=0.15)  # truncation at 3σ shrinks std by ~1.3%
    assert torch.all(model.blocks[0].attn.q_norm.weight == 1)


def test_init_cli_builds_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    assert (
        main(["model", "init", "--preset", "tiny", "--out", str(out), "--model.n_layers=2", "--seed=5"]) == 0
    )
    loaded = load_model(out)
    assert loaded.config.n_layers == 2 and loaded.config.kv_heads == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["n_layers"] == 2 and manifest["config"]["seed"] == 5
    assert manifest["stage"] == "init" and set(manifest["files"]) == {"model.safetensors", "config.yaml"}
    capsys.readouterr()
    assert main(["model", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == sum(p.numel() for p in loaded.model.parameters())
    # the same seed gives the same weights
    assert (
        main(
            [
                "model",
                "init",
                "--preset",
                "tiny",
                "--out",
                str(tmp_path / "m2"),
                "--model.n_layers=2",
                "--seed=5",
            ]
        )
        == 0
    )
    a, b = load_model(out).model.state_dict(), load_model(tmp_path / "m2").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_model_errors_name_the_path(tmp_path: Path) -> None:
    from glasslm.artifacts import ArtifactError

    with pytest.raises(ArtifactError, match="no such model"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a model"):
        load_model(tmp_path / "empty")
