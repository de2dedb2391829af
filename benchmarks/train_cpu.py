"""Training throughput on CPU: glasslm's full training step against transformers' Olmo2ForCausalLM.

One step = forward, loss, backward, gradient clipping (1.0), AdamW update, zero_grad, on one
micro-batch of random tokens. Both sides get the same shape, micro-batch, sequence length, fp32, and
the same AdamW (β 0.9/0.95, ε 1e-8, weight decay 0.1, fused where torch has it):

- glasslm: ``OLMo2`` + the trainer's own pieces — ``train.optim.build_optimizer`` (OLMo-2's decay
  groups, fused AdamW), the trainer's loss: ``model.loss.head_objective`` (the model returns its
  final hidden states; LM head + cross-entropy + z-loss 1e-5 a chunk of ``trainer.loss_chunk_tokens``
  tokens at a time, never materialising the whole batch's logits), summed and divided by the token
  count as ``Trainer.train_step`` does, foreach clipping, and on CPU in fp32 the linear layers' and the
  head's matmuls through oneDNN (``trainer.onednn_linear``, model/onednn.py; ``--no-onednn``: aten::mm).
  z-loss is extra work the peer does not do.
  ``--loss-chunk-tokens 0`` times the trainer's plain path instead (logits, then ``lm_loss``).
- transformers: ``Olmo2ForCausalLM`` (SDPA attention) built from the config our converter writes,
  its own loss (``labels=`` / ``shift_labels=``: plain cross-entropy), ``torch.optim.AdamW``.
- transformers + ``torch.compile`` (``--peer-compile``, on in run_all.sh): the same, with the model
  compiled — its fastest supported CPU training mode (HF's docs, "torch.compile": wrap the model;
  Trainer's ``torch_compile=True`` does the same). Its compile time (first step minus a steady step,
  wall clock) is printed beside the steady state. With it comes glasslm + ``torch.compile`` (the
  trainer's ``trainer.compile`` path: the model compiled, no oneDNN swap), for compiled vs compiled.

Timed blocks of steps alternate between the two models (interleaved repeats) so a load change on
a shared machine hits both. Three figures: the ratio of the best blocks (best-of-N: load only ever
slows a block down, so the fastest block is the least disturbed), the median of the per-repeat ratios
(the two blocks of a repeat ran back to back), and the ratio of the median blocks.

``--clock cpu`` times blocks by the process's CPU time instead of wall time: with ``--threads 1`` that
is the time the step kept one core busy, which other jobs on a shared machine barely change (they
take turns on the core rather than lengthening our compute), so both sides are measured as if each
had a core to itself. Wall time is the default.

    python benchmarks/train_cpu.py                       # tiny and wide (~25M) shapes
    python benchmarks/train_cpu.py --shapes tiny --repeats 3 --steps 5
    python benchmarks/train_cpu.py --threads 1 --clock cpu --repeats 7 --steps 3   # the RESULTS.md figures
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from _bench import fmt_spread, report

from glasslm.model import onednn
from glasslm.model.hf import hf_config
from glasslm.model.loss import head_objective, lm_loss
from glasslm.model.olmo2 import ModelConfig, OLMo2, param_counts
from glasslm.model.presets import preset
from glasslm.train.config import OptimConfig, TrainerConfig
from glasslm.train.distributed import HiddenStates
from glasslm.train.optim import build_optimizer

SHAPES: dict[str, ModelConfig] = {
    "tiny": preset("tiny"),
    # Wide enough (~25M parameters) that the matmuls, not the Python overhead, dominate a step.
    "wide": dataclasses.replace(
        preset("tiny"), vocab_size=8192, d_model=512, n_layers=6, n_heads=8, n_kv_heads=4, mlp_hidden=1536
    ),
}
OPTIM = OptimConfig(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
Z_LOSS = 1e-5
CLIP = 1.0

Step = Callable[[], float]


def glasslm_step(
    config: ModelConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    compile_model: bool,
    chunk: int,
    mode: bool | str,
) -> tuple[Step, onednn.LinearChoice]:
    model = OLMo2(config).train()
    # As Trainer.__init__ does on CPU in fp32 (trainer.onednn_linear; no swap under compile).
    choice = onednn.LinearChoice("mkl", "n/a")
    if not compile_model:
        choice = onednn.choose_backend(model, x.numel(), mode)  # type: ignore[arg-type]
    use_onednn = onednn.apply_choice(model, choice)
    opt = build_optimizer(model, OPTIM, torch.device("cpu"))
    # The trainer's forward: the hidden states with the chunked head (HiddenStates), else the logits.
    forward = HiddenStates(model) if chunk > 0 else model
    fwd = torch.compile(forward) if compile_model else forward

    def step() -> float:
        # Trainer's step: summed objective scaled by 1 / (label tokens of the global batch).
        n_tokens = torch.tensor(float((y != -100).sum()))
        if chunk > 0:  # LMObjective.loss with the chunked head (the default)
            hidden = fwd(x)
            objective, terms = head_objective(
                hidden, model.lm_head.weight, y, Z_LOSS, chunk, None, use_onednn
            )
            ce = terms["ce"]
        else:  # Trainer._loss on the logits
            ce, z = lm_loss(fwd(x), y, z_loss=Z_LOSS, reduction="sum")
            objective = ce + z
        (objective / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(ce.detach()) / float(n_tokens)

    return step, choice


def hf_step(config: ModelConfig, x: torch.Tensor, y: torch.Tensor, compile_model: bool) -> Step:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    hf_cfg = Olmo2Config.from_dict(hf_config(config, torch.float32, {}), attn_implementation="sdpa")
    model = Olmo2ForCausalLM(hf_cfg).train()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=OPTIM.lr,
        betas=OPTIM.betas,
        eps=OPTIM.eps,
        weight_decay=OPTIM.weight_decay,
        fused=True,
    )
    fwd = torch.compile(model) if compile_model else model

    def step() -> float:
        loss = fwd(input_ids=x, labels=y, shift_labels=y).loss  # y is already shifted
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def run_shape(name: str, config: ModelConfig, args: argparse.Namespace) -> float:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    torch.manual_seed(0)
    mode = {"auto": "auto", "on": True, "off": False}[args.onednn]
    ours, choice = glasslm_step(config, x, y, args.compile, args.loss_chunk_tokens, mode)
    steps = {"glasslm": ours, "transformers": hf_step(config, x, y, args.compile)}
    if args.peer_compile and not args.compile:  # compiled vs compiled too (our trainer.compile path)
        steps["transformers+compile"] = hf_step(config, x, y, True)
        steps["glasslm+compile"] = glasslm_step(config, x, y, True, args.loss_chunk_tokens, mode)[0]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    first, first_s = {}, {}
    for k, s in steps.items():  # also the warm-up; for a compiled model, the compile
        t0 = time.perf_counter()  # wall time: Inductor compiles C++ in worker processes
        first[k] = s()
        first_s[k] = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        for s in steps.values():
            s()
    tps: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # neither always runs first
        for k in order:
            start = clock()
            for _ in range(args.steps):
                steps[k]()
            tps[k].append(args.steps * x.numel() / (clock() - start))
    counts = param_counts(config)
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(
        f"\n[{name}] d {config.d_model}, {config.n_layers} layers, heads {config.n_heads}/{config.kv_heads}, "
        f"mlp {config.mlp_hidden}, vocab {config.vocab_size}: {counts['total'] / 1e6:.1f}M params; "
        f"micro-batch {args.batch} x seq {args.seq_len}, {torch.get_num_threads()} threads"
        + (", torch.compile" if args.compile else "")
        + f"; glasslm loss_chunk_tokens {args.loss_chunk_tokens}; {args.clock} clock"
    )
    if choice.how in ("measured", "cached"):
        assert choice.mkl_ms and choice.onednn_ms
        when = (
            "trainer start-up measurement"
            if choice.how == "measured"
            else f"kept from {onednn.choices_file()}"
        )
        print(
            f"  linear library ({when}, this model's shapes at {choice.rows} rows): "
            f"MKL {choice.mkl_ms:.1f} ms, oneDNN {choice.onednn_ms:.1f} ms a pass → {choice.backend} "
            f"(oneDNN / MKL speed {choice.mkl_ms / choice.onednn_ms:.2f}x)"
        )
    else:
        print(f"  linear library: {choice.backend} ({choice.how})")
    print("  initial loss: " + "  ".join(f"{k} {v:.4f}" for k, v in first.items()))
    print(
        "  first step, wall time (compile included where compiled): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in first_s.items())
    )
    for k in steps:
        blocks = " ".join(f"{v:,.0f}" for v in tps[k])
        print(
            f"  {k}: {med[k]:,.0f} tokens/s (median of {args.repeats} blocks of {args.steps} steps: {blocks})"
        )
    ratio = 0.0
    pairs = [
        ("glasslm", "transformers"),
        ("glasslm", "transformers+compile"),
        ("glasslm+compile", "transformers+compile"),
    ]
    for ours, peer in [(a, b) for a, b in pairs if a in steps and b in steps]:
        # Each repeat's blocks ran back to back, so their ratio is the least disturbed by load drift.
        paired = [a / b for a, b in zip(tps[ours], tps[peer], strict=True)]
        best = max(tps[ours]) / max(tps[peer])
        print(
            f"  ratio {ours} / {peer}: per repeat {fmt_spread(paired)}; best blocks {best:.2f}x; "
            f"of the medians {med[ours] / med[peer]:.2f}x"
        )
        ratio = ratio or statistics.median(paired)
        steady = {k: args.batch * args.seq_len / med[k] for k in (ours, peer)}  # clock-time of a steady step
        compiled = "compile" in ours
        report(
            "train_cpu.py",
            f"training step, {name} ({counts['total'] / 1e6:.1f}M), {torch.get_num_threads()} "
            f"thread(s), {args.clock} clock, "
            + (
                "glasslm trainer.compile" if compiled else f"glasslm linears: {choice.backend} ({choice.how})"
            ),
            f"transformers Olmo2ForCausalLM{' + torch.compile' if 'compile' in peer else ''}",
            paired,
            goal=1.0,
            onednn_over_mkl=round(choice.mkl_ms / choice.onednn_ms, 3)
            if choice.mkl_ms and choice.onednn_ms
            else None,
            compile_s_ours=round(first_s[ours] - steady[ours], 1) if compiled else None,
            compile_s_peer=round(first_s[peer] - steady[peer], 1) if "compile" in peer else None,
        )
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    p.add_argument("--batch", type=int, default=8, help="micro-batch (instances)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per model, interleaved")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument(
        "--onednn",
        choices=["auto", "on", "off"],
        default="auto",
        help="glasslm's trainer.onednn_linear: auto (measure, the default), on (oneDNN), off (aten::mm/MKL)",
    )
    p.add_argument("--no-onednn", dest="onednn", action="store_const", const="off", help="= --onednn off")
    p.add_argument(
        "--peer-compile",
        action="store_true",
        help="also time transformers with torch.compile (its fastest CPU training mode)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time blocks by wall time or by this process's CPU time (use with --threads 1)",
    )
    p.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=TrainerConfig().loss_chunk_tokens,
        help="glasslm's trainer.loss_chunk_tokens (default: the trainer's; 0 = logits, then lm_loss)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.shapes:
        run_shape(name, SHAPES[name], args)


if __name__ == "__main__":
    main()
