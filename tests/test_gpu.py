"""Correctness of the CUDA paths (``pytest -m gpu``): each test skips without a CUDA device.

benchmarks/gpu_check.py runs these first on a lent GPU; its ``--cpu-dry-run`` runs the same tests on
CPU at tiny shapes (``GLASSLM_GPU_CHECK_DEVICE=cpu``; torch.compile then uses the ``aot_eager``
backend, FSDP2 gloo) so they cannot rot. Each test records its measured error and its limit in
``GLASSLM_GPU_CHECK_RECORD`` (JSON lines) when that is set, for the check's table.

Tolerances (relative L2 error ‖a − b‖ / ‖b‖ of logits, or relative difference of losses):
- fp32: 1e-5 (no TF32: torch's default for CUDA matmuls); the only differences are kernel choices.
- bf16: 3e-2 between two bf16 implementations, or between bf16 and an fp32 reference (8 mantissa bits:
  each is ~1e-2 from fp32 after a few layers, measured 1.3e-2 at the dry run's shape), and our bf16
  error against fp32 at most 1.5× transformers' own (the sharp test: we round no worse than they do).
- compiled vs eager training step: 1e-4 in fp32, 1e-2 under bf16 autocast (Inductor fuses pointwise
  ops in fp32 and so rounds differently), over 3 AdamW steps.
- FSDP2 on one rank vs DDP vs plain: 1e-5 in fp32 over 3 steps.
- exact resume: bitwise equal losses; where the GPU's kernels are not deterministic (two identical
  uninterrupted runs differ), within twice that run-to-run spread.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from glasslm.model.hf import hf_config, to_hf_state
from glasslm.model.loss import head_objective, lm_loss
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train.distributed import HiddenStates

pytestmark = pytest.mark.gpu

# Big enough on a GPU that the fused kernels (flash / memory-efficient attention, cuBLAS bf16) run;
# tiny on CPU so the dry run takes seconds.
GPU_SHAPE = dict(
    vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, mlp_hidden=1536, max_seq_len=1024
)
CPU_SHAPE = dict(
    vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128, max_seq_len=128
)


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("GLASSLM_GPU_CHECK_DEVICE") == "cpu":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (GLASSLM_GPU_CHECK_DEVICE=cpu runs the dry run's tiny shapes on CPU)")


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., bool]:
    """record(metric, value, limit) -> value <= limit, written to the check's JSON lines."""

    def _record(metric: str, value: float, limit: float, note: str = "") -> bool:
        ok = bool(value <= limit)
        path = os.environ.get("GLASSLM_GPU_CHECK_RECORD")
        if path:
            with open(path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "test": request.node.name,
                            "metric": metric,
                            "value": float(value),
                            "limit": limit,
                            "passed": ok,
                            "note": note,
                        }
                    )
                    + "\n"
                )
        return ok

    return _record


def shape(device: torch.device, **overrides: int) -> ModelConfig:
    return ModelConfig(**{**(GPU_SHAPE if device.type == "cuda" else CPU_SHAPE), **overrides})  # type: ignore[arg-type]


def seq_batch(device: torch.device) -> tuple[int, int]:
    return (512, 4) if device.type == "cuda" else (32, 2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def model_pair(config: ModelConfig, device: torch.device, std: float = 0.02) -> tuple[OLMo2, torch.nn.Module]:
    """Our model and transformers' Olmo2ForCausalLM with the same weights (norms non-trivial)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    ours = OLMo2(config)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif std != 0.02:
                p.normal_(0.0, std)
    hf = Olmo2ForCausalLM(
        Olmo2Config.from_dict(hf_config(config, torch.float32, {}), attn_implementation="sdpa")
    )
    hf.load_state_dict(to_hf_state(ours.state_dict()), strict=False)
    return ours.to(device).eval(), hf.to(device).eval()


def tokens(config: ModelConfig, device: torch.device, batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed)
    ).to(device)


# ---------------------------------------------------------------- parity with transformers


def test_hf_parity_fp32_and_bf16(device: torch.device, record: Callable[..., bool]) -> None:
    config = shape(device)
    seq, batch = seq_batch(device)
    ours, hf = model_pair(config, device)
    ids = tokens(config, device, batch, seq)
    with torch.no_grad():
        ref_ours, ref_hf = ours(ids).float(), hf(input_ids=ids).logits.float()
        ok = record("fp32 logits rel err vs transformers", rel(ref_ours, ref_hf), 1e-5)
        ours_bf, hf_bf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
        lo, lh = ours_bf(ids).float(), hf_bf(input_ids=ids).logits.float()
    ok &= record("bf16 logits rel err vs transformers bf16", rel(lo, lh), 3e-2)
    ours_err, hf_err = rel(lo, ref_hf), rel(lh, ref_hf)
    ok &= record(
        "bf16 rel err vs fp32, ours / transformers'",
        ours_err / hf_err,
        1.5,
        note=f"ours {ours_err:.2e}, transformers {hf_err:.2e}",
    )
    assert ok


def test_greedy_decode_equals_transformers_fp32(device: torch.device, record: Callable[..., bool]) -> None:
    from glasslm.model.generate import Engine, SamplingParams

    config = shape(device)
    # A wider init than 0.02 spreads the logits, so greedy ties are not decided by rounding.
    ours, hf = model_pair(config, device, std=0.1)
    prompts = tokens(config, device, 4, 16)
    new = 32 if device.type == "cuda" else 8
    engine = Engine(ours, max_batch=4, max_len=16 + new + 1)
    got = [
        c.token_ids
        for c in engine.generate(prompts.tolist(), SamplingParams(max_new_tokens=new, ignore_eos=True))
    ]
    with torch.no_grad():
        out = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    want = out[:, 16:].tolist()
    differing = sum(a != b for ga, wa in zip(got, want, strict=True) for a, b in zip(ga, wa, strict=True))
    assert record("greedy tokens differing from transformers (fp32)", differing, 0)


# ---------------------------------------------------------------- training step


def _train_losses(
    model: torch.nn.Module,
    config: ModelConfig,
    device: torch.device,
    steps: int,
    bf16: bool,
    chunked: bool = True,
    params: torch.nn.Module | None = None,
) -> list[float]:
    """``steps`` AdamW steps on fixed random batches through the trainer's loss path."""
    owner = params or model
    opt = torch.optim.AdamW(owner.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    seq, batch = seq_batch(device)
    losses = []
    for step in range(steps):
        ids = tokens(config, device, batch, seq + 1, seed=10 + step)
        x, y = ids[:, :-1], ids[:, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)  # hidden states when chunked (a HiddenStates), else logits
        if chunked:
            head = owner.lm_head.weight  # type: ignore[union-attr]
            loss = head_objective(out, head, y, 0.0, 256, torch.bfloat16 if bf16 else None)[0] / y.numel()
        else:
            loss = lm_loss(out, y)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(owner.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_compiled_step_equals_eager(device: torch.device, record: Callable[..., bool], bf16: bool) -> None:
    config = shape(device)
    backend = "inductor" if device.type == "cuda" else "aot_eager"  # the dry run skips C++ codegen
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = OLMo2(config).to(device).train()
        hidden = HiddenStates(model)  # the trainer's chunked path: the forward stops before the head
        step_model = torch.compile(hidden, backend=backend) if compiled else hidden
        runs.append(_train_losses(step_model, config, device, 3, bf16, params=model))  # type: ignore[arg-type]
    worst = max(abs(a - b) / abs(b) for a, b in zip(runs[1], runs[0], strict=True))
    assert record(
        f"compiled vs eager loss rel diff ({'bf16' if bf16 else 'fp32'}, {backend})",
        worst,
        1e-2 if bf16 else 1e-4,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def process_group(device: torch.device) -> Iterator[None]:
    """A one-rank process group (NCCL on GPU, gloo on CPU), as torchrun would make with one process."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        device_id=device if device.type == "cuda" else None,
    )
    yield
    dist.destroy_process_group()


def test_fsdp2_one_rank_equals_ddp_and_plain(
    device: torch.device, record: Callable[..., bool], process_group: None
) -> None:
    from glasslm.train import distributed
    from glasslm.train.config import DistributedConfig

    config = shape(device)
    curves = {}
    for strategy in ("none", "ddp", "fsdp"):
        torch.manual_seed(0)
        model = OLMo2(config).to(device).train()
        world = distributed.World(0, 1, 0, device, strategy)
        wrapped = distributed.wrap(model, world, DistributedConfig(strategy=strategy), bf16=False)  # type: ignore[arg-type]
        # FSDP2 takes the plain loss path (logits, then lm_loss), so all three do here.
        curves[strategy] = _train_losses(wrapped, config, device, 3, bf16=False, chunked=False)
    ok = True
    for strategy in ("ddp", "fsdp"):
        worst = max(abs(a - b) / abs(b) for a, b in zip(curves[strategy], curves["none"], strict=True))
        ok &= record(f"{strategy} (1 rank) vs plain loss rel diff (fp32)", worst, 1e-5)
    assert ok


# ---------------------------------------------------------------- exact resume


def test_exact_resume(device: torch.device, record: Callable[..., bool], tmp_path: Path) -> None:
    from test_train_support import make_tokens, write_config

    from glasslm.cli import main
    from glasslm.train.metrics import read_metrics

    tok = make_tokens(tmp_path / "tokens")
    cfg = write_config(
        tmp_path / "c.yaml", tok, trainer={"max_steps": 8, "checkpoint_every": 4, "device": device.type}
    )

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]

    for name in ("a", "a2"):
        assert main(["train", str(cfg), "--out", str(tmp_path / name)]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # as a kill right after the step-4 checkpoint leaves it
    for ck in (tmp_path / "b" / "checkpoints").iterdir():
        if int(ck.name.removeprefix("step")) > 4:
            shutil.rmtree(ck)
    (tmp_path / "b" / "latest").write_text("checkpoints/step000004\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "b"), "--resume", "auto"]) == 0
    a, a2, b = losses(tmp_path / "a"), losses(tmp_path / "a2"), losses(tmp_path / "b")
    assert len(b) == len(a) == 8
    spread = max(abs(x - y) for x, y in zip(a, a2, strict=True))
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    note = (
        "bitwise" if diff == 0 else f"nondeterministic kernels: two uninterrupted runs differ by {spread:.2e}"
    )
    assert record("resumed vs uninterrupted max |loss diff|", diff, 2 * spread, note=note)


# ---------------------------------------------------------------- document masking


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_document_mask_equals_per_document(
    device: torch.device, record: Callable[..., bool], dtype: torch.dtype
) -> None:
    config = shape(device)
    torch.manual_seed(0)
    model = OLMo2(config).to(device).eval()
    seq, batch = seq_batch(device)
    lengths = [seq // 2, seq // 4, seq - seq // 2 - seq // 4]  # three documents packed in each row
    ids = tokens(config, device, batch, seq)
    doc_ids = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)]).expand(
        batch, seq
    )
    with torch.no_grad():
        reference = torch.cat(
            [model(part) for part in ids.split(lengths, dim=1)], dim=1
        ).float()  # fp32, alone
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            packed = model(ids, doc_ids=doc_ids).float()
    limit = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert record(
        f"packed with doc mask vs per-document ({'bf16' if dtype == torch.bfloat16 else 'fp32'})",
        rel(packed, reference),
        limit,
    )
