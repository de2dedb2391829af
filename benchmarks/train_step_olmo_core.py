"""OLMo-core's training step on the same shape as benchmarks/train_step.py (a GPU check peer).

    python benchmarks/train_step_olmo_core.py --preset olmo2-1b --compile     # needs `import olmo_core`

Builds OLMo-core's own OLMo-2 model (``TransformerConfig.olmo2_1B`` / ``olmo2_190M``), runs the same
step as train_step.py (bf16 autocast forward, fp32 cross-entropy, backward, clip, fused AdamW) on random
tokens and prints the line train_step.py prints, so gpu_check.py reads both alike; MFU uses glasslm's
formula for the same shape. OLMo-core is not a glasslm dependency: on a machine without network,
bring it with benchmarks/gpu_wheels.sh --with-olmo-core. Its API moves between releases; an error here
names the call that failed.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from glasslm.model.olmo2 import flops_per_token
from glasslm.model.presets import OLMO2_VOCAB, preset

BUILDERS = {"olmo2-1b": "olmo2_1B", "olmo2-190m": "olmo2_190M"}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense, as train_step.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(BUILDERS), default="olmo2-1b")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dtype", choices=["bfloat16"], default="bfloat16")
    args = p.parse_args()
    from olmo_core.nn.transformer import TransformerConfig

    device = torch.device("cuda")
    config = getattr(TransformerConfig, BUILDERS[args.preset])(vocab_size=OLMO2_VOCAB)
    model = config.build(init_device=str(device))
    if hasattr(model, "init_weights"):
        try:
            model.init_weights(device=device)
        except TypeError:  # older releases take no device
            model.init_weights()
    model.to(device).train()
    if args.compile:
        model.apply_compile()  # OLMo-core compiles block by block
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True
    )
    tokens = torch.randint(0, OLMO2_VOCAB, (args.batch, args.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        logits = getattr(out, "logits", out)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    tok_s = args.batch * args.seq_len * args.steps / (time.perf_counter() - start)
    ours = preset(args.preset)
    tflops = tok_s * flops_per_token(ours, args.seq_len) / 1e12
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
    mem = torch.cuda.max_memory_allocated() / 2**30
    print(f"olmo-core: {tok_s:,.0f} tokens/s  {tflops:.2f} TFLOP/s  MFU {mfu}  peak memory {mem:.1f} GiB")


if __name__ == "__main__":
    main()
