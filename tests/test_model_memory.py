"""The training-memory estimate (model/memory.py) against what torch actually allocates on CPU.

Parameters, gradients and optimizer state are checked exactly (bytes of the real tensors after a step).
Activations are checked against the bytes autograd saves for backward (saved-tensor hooks, each storage
counted once): per block exactly, in fp32 and under bf16 autocast, and for the whole training forward
within 2% (the RoPE tables and the token ids' small extras are not modelled). The GPU peak is compared
by benchmarks/gpu_check.py, where ``torch.cuda.max_memory_allocated`` exists.
"""

from __future__ import annotations

import json

import pytest
import torch

from glasslm.model.loss import head_objective
from glasslm.model.memory import MemoryPlan, estimate_memory, layer_bytes_per_token
from glasslm.model.olmo2 import ModelConfig, OLMo2, param_counts
from glasslm.model.presets import preset
from glasslm.train.distributed import apply_ac

CONFIG = ModelConfig(
    vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=192, max_seq_len=64
)
B, T = 2, 32


def saved_bytes(config: ModelConfig, bf16: bool, checkpointing: bool = False) -> tuple[int, int]:
    """(bytes autograd saves in the trainer's forward + chunked loss, excluding parameters; of which
    bf16 weight casts). Each storage is counted once."""
    torch.manual_seed(0)
    model = OLMo2(config).train()
    if checkpointing:
        apply_ac(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    casts: dict[int, int] = {}
    weight_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
            if bf16 and t.dtype == torch.bfloat16 and tuple(t.shape) in weight_shapes and t.shape[0] != B * T:
                casts[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = model.hidden(ids)
        head_objective(hidden, model.lm_head.weight, ids, 0.0, 256, torch.bfloat16 if bf16 else None)
    return sum(seen.values()), sum(casts.values())


@pytest.mark.parametrize("bf16", [False, True])
def test_block_activations_are_counted_exactly(bf16: bool) -> None:
    one = ModelConfig(**{**CONFIG.__dict__, "n_layers": 1})
    per_block = saved_bytes(CONFIG, bf16)[0] - saved_bytes(one, bf16)[0]
    weight_casts = (
        (CONFIG.n_layers - 1)
        * 2
        * (  # one block's matmul weights in bf16 (autocast copies)
            param_counts(CONFIG)["non_embedding"]
            - param_counts(one)["non_embedding"]
            - 2 * CONFIG.d_model
            - (CONFIG.n_heads + CONFIG.kv_heads) * CONFIG.head_dim
        )
        if bf16
        else 0
    )
    assert per_block - weight_casts == layer_bytes_per_token(CONFIG, bf16) * B * T


@pytest.mark.parametrize("bf16", [False, True])
def test_forward_activations_and_kept_head_within_two_percent(bf16: bool) -> None:
    measured, _ = saved_bytes(CONFIG, bf16)
    est = estimate_memory(CONFIG, MemoryPlan(micro_batch=B, seq_len=T, bf16=bf16))
    # What stays saved after the forward: activations, weight copies, the head's kept gradients
    # (hidden-state gradients in the compute dtype and the fp32 head gradient); the chunk transients
    # are freed by then.
    a = 2 if bf16 else 4
    kept_head = B * T * CONFIG.d_model * a + CONFIG.vocab_size * CONFIG.d_model * 4
    expected = est["activations"] + est["autocast_weight_copies"] + kept_head
    assert abs(measured - expected) / measured < 0.02, (measured, expected)


def test_activation_checkpointing_keeps_block_inputs() -> None:
    measured, _ = saved_bytes(CONFIG, bf16=False, checkpointing=True)
    plain = estimate_memory(CONFIG, MemoryPlan(micro_batch=B, seq_len=T, bf16=False))
    ac = estimate_memory(
        CONFIG, MemoryPlan(micro_batch=B, seq_len=T, bf16=False, activation_checkpointing=True)
    )
    recompute = layer_bytes_per_token(CONFIG, False) * B * T  # one block, alive only during backward
    kept_head = B * T * CONFIG.d_model * 4 + CONFIG.vocab_size * CONFIG.d_model * 4
    assert ac["activations"] < plain["activations"]
    assert abs(measured - (ac["activations"] - recompute + kept_head)) / measured < 0.05


def test_parameters_gradients_optimizer_exact() -> None:
    torch.manual_seed(0)
    model = OLMo2(ModelConfig(**CONFIG.__dict__))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, CONFIG.vocab_size, (B, T))
    model(ids).float().logsumexp(-1).mean().backward()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    est = estimate_memory(CONFIG, MemoryPlan(micro_batch=B, seq_len=T))
    assert est["parameters"] == nbytes(model.parameters())
    assert est["gradients"] == nbytes(p.grad for p in model.parameters() if p.grad is not None)
    moments = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert est["optimizer"] == nbytes(moments)


def test_fsdp_shards_and_checkpointing_shrinks() -> None:
    config = preset("olmo2-7b")
    one = estimate_memory(config, MemoryPlan(micro_batch=2, seq_len=4096))
    eight = estimate_memory(config, MemoryPlan(micro_batch=2, seq_len=4096, world_size=8, fsdp=True))
    ac = estimate_memory(
        config,
        MemoryPlan(micro_batch=2, seq_len=4096, world_size=8, fsdp=True, activation_checkpointing=True),
    )
    total = param_counts(config)["total"]
    assert one["parameters"] == total * 4 and one["optimizer"] == total * 8
    assert eight["parameters"] == -(-total // 8) * 4 and eight["fsdp_buffers"] > 0
    assert eight["autocast_weight_copies"] == 0  # FSDP2 gathers bf16 weights: no autocast copies
    assert ac["activations"] < eight["activations"] / 5 and ac["peak"] < eight["peak"]
    for est in (one, eight, ac):
        assert est["peak"] >= est["parameters"] + est["optimizer"] + est["activations"]


def test_model_info_memory_cli(run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("model", "info", "--preset", "olmo2-1b", "--memory", "--seq-len", "4096", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory_plan"]["micro_batch"] == 4 and data["memory_plan"]["chunked_head"] is True
    # 1.48B parameters: 4 + 4 + 8 bytes each for weights, gradients, AdamW moments.
    assert data["memory_bytes"]["optimizer"] == 8 * data["params_total"]
    assert (
        40 * 2**30 < data["memory_bytes"]["peak"] < 80 * 2**30
    )  # fits one 80 GB H100 (measured: RESULTS.md)
    assert run_cli("model", "info", "--preset", "tiny", "--memory", "--fsdp", "--world-size", "2") == 0
    out = capsys.readouterr().out
    assert "fsdp True" in out and "fsdp_buffers" in out
