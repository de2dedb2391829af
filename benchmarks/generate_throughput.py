"""Decode throughput of glasslm's generation engine vs Hugging Face ``generate`` on the same weights.

Both run greedy decoding of the same random prompts on the same model (ours converted with
``glasslm convert to-hf``), in this process, alternating, best of ``--repeats``. Decode tokens/s is
measured as (batch × (N − 1)) / (t(N new tokens) − t(1 new token)), so the prompt's prefill cancels
out; end-to-end tokens/s is reported too. The tokens must be identical (checked).

Three contestants per batch size, interleaved: glasslm's engine eager, glasslm's engine with the
compiled decode step (``Engine(compile=True)``; its compile time is reported), and HF. ``--dtype``
casts *both* models, so every ratio compares the same dtype (bf16 vs bf16 or fp32 vs fp32).

Default model (~34M matmul parameters, 42M total): d_model 512, 8 layers, 8 heads (4 KV heads),
MLP 1536, vocabulary 16,384 — big enough that matmuls, not Python, dominate a CPU step.

    python benchmarks/generate_throughput.py                 # batch 1 and 8, 128 new tokens
    python benchmarks/generate_throughput.py --dtype bfloat16              # both sides in bf16
    python benchmarks/generate_throughput.py --batches 1 --new-tokens 32 --d-model 128 --layers 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from glasslm.model.checkpoint import load_model, save_checkpoint
from glasslm.model.generate import Engine, SamplingParams
from glasslm.model.hf import export_hf
from glasslm.model.olmo2 import ModelConfig, OLMo2, param_counts


def timed(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=16_384)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both models' dtype")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled engine (eager vs HF only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    config = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                         n_kv_heads=args.kv_heads, mlp_hidden=args.mlp, max_seq_len=1024)
    torch.manual_seed(0)
    model = OLMo2(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "ckpt")
        export_hf(Path(tmp) / "ckpt", Path(tmp) / "hf")
        dtype = getattr(torch, args.dtype)
        ours = load_model(Path(tmp) / "ckpt", dtype=dtype).model
        hf = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf").to(dtype).eval()
    rows = []
    for batch in args.batches:
        prompts = torch.randint(0, args.vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
        max_len = args.prompt_len + args.new_tokens + 1
        engines = {"glasslm": Engine(ours, max_batch=batch, max_len=max_len)}
        result: dict[str, object] = {"batch": batch}
        if not args.no_compile:
            compiled = Engine(ours, max_batch=batch, max_len=max_len, compile=True)
            result["compile_s"] = round(compiled.compile_seconds, 1) if compiled.compile_seconds else None
            if compiled.compiled:
                engines["compiled"] = compiled

        def run_engine(n: int, engine: Engine, prompts: torch.Tensor = prompts) -> list[list[int]]:
            params = SamplingParams(max_new_tokens=n, ignore_eos=True)
            return [c.token_ids for c in engine.generate(prompts.tolist(), params)]

        def run_hf(n: int, prompts: torch.Tensor = prompts) -> list[list[int]]:
            with torch.inference_mode():
                out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, args.prompt_len:].tolist()

        runners = {name: (lambda n, e=e: run_engine(n, e)) for name, e in engines.items()} | {"hf": run_hf}
        for fn in runners.values():
            fn(4)  # warm-up (allocators, lazy init)
        tokens: dict[str, object] = {}
        best = {name: [float("inf"), float("inf")] for name in runners}
        # Interleaved repeats, best of each: the shared box's load drifts, and interleaving exposes all
        # implementations to the same drift.
        for _ in range(args.repeats):
            for name, fn in runners.items():
                t1, _ = timed(lambda fn=fn: fn(1), 1)
                tn, tokens[name] = timed(lambda fn=fn: fn(args.new_tokens), 1)
                best[name] = [min(best[name][0], t1), min(best[name][1], tn)]
        for name, (t1, tn) in best.items():
            # Decode time = time for n tokens minus time for 1 (the prefill). On a loaded machine with
            # few new tokens the difference can vanish into noise: then there is no decode figure.
            decode = batch * (args.new_tokens - 1) / (tn - t1) if tn > t1 else None
            result[f"{name}_decode_tok_s"] = round(decode, 1) if decode is not None else None
            result[f"{name}_e2e_tok_s"] = round(batch * args.new_tokens / tn, 1)
        hf_dec = result["hf_decode_tok_s"]
        for name in engines:
            ours_dec = result[f"{name}_decode_tok_s"]
            result[f"{name}_ratio_decode"] = round(ours_dec / hf_dec, 2) if ours_dec and hf_dec else None  # type: ignore[operator]
            result[f"{name}_ratio_e2e"] = round(result[f"{name}_e2e_tok_s"] / result["hf_e2e_tok_s"], 2)  # type: ignore[operator]
            result[f"{name}_same_tokens"] = tokens[name] == tokens["hf"]
        rows.append(result)
    meta = {
        "model": {**config.__dict__, **param_counts(config)},
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(f"model: d={config.d_model} L={config.n_layers} heads={config.n_heads}/{config.kv_heads} "
          f"mlp={config.mlp_hidden} vocab={config.vocab_size}, {param_counts(config)['total'] / 1e6:.1f}M params; "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, {args.dtype} on both sides, "
          f"{torch.get_num_threads()} threads")
    for r in rows:
        print(f"batch {r['batch']}: HF decode {r['hf_decode_tok_s']} tok/s; compile {r.get('compile_s')} s")
        for name in ("glasslm", "compiled"):
            if f"{name}_decode_tok_s" in r:
                print(f"  {name:8s} decode {r[f'{name}_decode_tok_s']} tok/s → {r[f'{name}_ratio_decode']}× HF;  "
                      f"end-to-end {r[f'{name}_e2e_tok_s']} vs {r['hf_e2e_tok_s']} → {r[f'{name}_ratio_e2e']}×;  "
                      f"identical tokens: {r[f'{name}_same_tokens']}")


if __name__ == "__main__":
    main()
