"""One full training step (forward, backward, grad clipping, fused AdamW) on random tokens.

Prints tokens/s, TFLOP/s, MFU and peak memory for glasslm's OLMo-2, and, with ``--peer hf``
(the default), the same step for Hugging Face transformers' Olmo2ForCausalLM built from the same
config in the same process, with the ratio between them.

    python benchmarks/train_step.py                       # olmo2-1b, seq 4096, micro-batch 4, bf16 (GPU)
    python benchmarks/train_step.py --compile
    python benchmarks/train_step.py --preset tiny --seq-len 256 --batch 4   # runs on a CPU

glasslm's side is the trainer's loss path: the model returns its final hidden states and
``model.loss.head_objective`` runs the LM head + cross-entropy a chunk of ``trainer.loss_chunk_tokens``
tokens at a time, and on CPU in fp32 its linear layers' matmuls go through oneDNN (model/onednn.py);
transformers' side computes its logits and the same ``lm_loss`` (mean, no z-loss).

Figures to beat on one H100 (issue #3): OLMo-core 3.0 56,686 tokens/s (48.6% MFU); transformers'
Olmo2 with torch.compile 46,417 tokens/s. MFU uses glasslm's one formula (model/olmo2.py:
flops_per_token = 6·N_matmul + 6·L·d·s) for both models.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import cast

import torch

from glasslm.model.hf import hf_config
from glasslm.model.loss import head_objective, lm_loss
from glasslm.model.olmo2 import ModelConfig, OLMo2, flops_per_token
from glasslm.model.onednn import use_onednn_linears
from glasslm.model.presets import preset
from glasslm.train.config import TrainerConfig
from glasslm.train.distributed import HiddenStates

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def hf_model(config: ModelConfig) -> torch.nn.Module:
    """transformers' Olmo2ForCausalLM with the config our converter writes (SDPA attention)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    hf_cfg = Olmo2Config.from_dict(hf_config(config, torch.float32, {}), attn_implementation="sdpa")
    return Olmo2ForCausalLM(hf_cfg)


def measure(
    name: str,
    model: torch.nn.Module,
    loss_of: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, bool], torch.Tensor],
    args: argparse.Namespace,
    config: ModelConfig,
    device: torch.device,
) -> float:
    model.to(device).train()
    fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=fused
    )
    step_model = cast(torch.nn.Module, torch.compile(model)) if args.compile else model
    use_bf16 = args.dtype == "bfloat16"
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        loss = loss_of(step_model, x, y, use_bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tok_s = args.batch * args.seq_len * args.steps / elapsed
    tflops = tok_s * flops_per_token(config, args.seq_len) / 1e12
    peak = args.peak_tflops or device_peak(device)
    mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a (no peak FLOP/s for this device)"
    mem = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"
    print(f"{name:>8}: {tok_s:,.0f} tokens/s  {tflops:.2f} TFLOP/s  MFU {mfu}  peak memory {mem}")
    model.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tok_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="olmo2-1b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4, help="micro-batch size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on GPU, fp32 on CPU"
    )
    p.add_argument("--peer", choices=["hf", "none"], default="hf")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)"
    )
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    config = preset(args.preset)
    config.max_seq_len = max(config.max_seq_len, args.seq_len)
    print(
        f"preset {args.preset}, seq {args.seq_len}, micro-batch {args.batch}, {args.dtype}, "
        f"compile={args.compile}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
    )
    torch.manual_seed(0)
    model = OLMo2(config)
    chunk = TrainerConfig().loss_chunk_tokens
    # The trainer's CPU fp32 path: linear layers (and the head's matmuls) through oneDNN.
    fast = device.type == "cpu" and args.dtype == "float32" and use_onednn_linears(model) > 0

    def glasslm_loss(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = m(x)  # m: HiddenStates(model), compiled with --compile
        dtype = torch.bfloat16 if bf16 else None
        objective, _ = head_objective(hidden, model.lm_head.weight, y, 0.0, chunk, dtype, fast)
        return objective / y.numel()

    def hf_loss(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = m(input_ids=x).logits
        return lm_loss(logits, y)[0]

    ours = measure("glasslm", HiddenStates(model), glasslm_loss, args, config, device)
    if args.peer == "hf":
        torch.manual_seed(0)
        theirs = measure("hf", hf_model(config), hf_loss, args, config, device)
        print(f"ratio glasslm / transformers: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
