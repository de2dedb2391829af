"""Decode throughput of glasslm's generation engine vs Hugging Face ``generate`` on the same weights.

Both run greedy decoding of the same random prompts on the same model (ours converted with
``glasslm convert to-hf``), in this process, alternating, best of ``--repeats``. Decode tokens/s is
measured as (batch × (N − 1)) / (t(N new tokens) − t(1 new token)), so the prompt's prefill cancels
out; end-to-end tokens/s is reported too. The tokens must be identical (checked).

Four contestants per batch size, interleaved (each repeat runs all four in turn, the order reversed
every other repeat): glasslm's engine eager, glasslm's engine with the compiled decode step
(``Engine(compile=True)``), HF ``generate`` eager, and HF's own fastest supported path — a static KV
cache plus ``torch.compile`` of the model's forward, as HF's docs recommend ("Static kv-cache and
torch.compile", docs/source/en/llm_optims.md: ``cache_implementation="static"`` and
``model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)``; the static
cache keeps the shapes fixed so the compiled graph is reused, and ``_prepare_static_cache`` keeps the
largest cache length across calls so alternating lengths do not recompile). The compiled ratios are
the headline (compiled vs compiled); both sides' compile (start-up) time is reported beside the
steady state: ours is the engine constructor's, HF's is its first call minus a steady call.
``--dtype`` casts *both* models, so every ratio compares the same dtype (bf16 vs bf16 or fp32 vs fp32).

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
from _bench import fmt_spread, report, spread

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
    ap.add_argument(
        "--no-compile", action="store_true", help="skip both compiled contestants (eager vs HF only)"
    )
    ap.add_argument(
        "--hf-compile-mode",
        default="reduce-overhead",
        help="torch.compile mode for HF's forward (HF's docs: reduce-overhead)",
    )
    ap.add_argument("--label", default=None, help="a name for this model in the machine-readable results")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    config = ModelConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        mlp_hidden=args.mlp,
        max_seq_len=1024,
    )
    torch.manual_seed(0)
    model = OLMo2(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "ckpt")
        export_hf(Path(tmp) / "ckpt", Path(tmp) / "hf")
        dtype = getattr(torch, args.dtype)
        ours = load_model(Path(tmp) / "ckpt", dtype=dtype).model
        hf = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf").to(dtype).eval()
        hf_c = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf").to(dtype).eval()
    # HF's compiled path (docs: llm_optims.md, "Static kv-cache and torch.compile"): its own instance, so
    # the eager contestant stays eager.
    hf_c.forward = torch.compile(hf_c.forward, mode=args.hf_compile_mode, fullgraph=True)
    rows = []
    for batch in args.batches:
        prompts = torch.randint(
            0, args.vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch)
        )
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

        def run_hf(
            n: int, prompts: torch.Tensor = prompts, model: object = hf, static: bool = False
        ) -> list[list[int]]:
            extra = {"cache_implementation": "static"} if static else {}
            with torch.inference_mode():
                out = model.generate(
                    prompts,
                    attention_mask=torch.ones_like(prompts),
                    max_new_tokens=n,  # type: ignore[attr-defined]
                    min_new_tokens=n,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                    **extra,
                )
            return out[:, args.prompt_len :].tolist()

        runners = {name: (lambda n, e=e: run_engine(n, e)) for name, e in engines.items()} | {"hf": run_hf}
        if not args.no_compile:
            runners["hf_compiled"] = lambda n: run_hf(n, model=hf_c, static=True)
            t0 = time.perf_counter()
            runners["hf_compiled"](
                args.new_tokens
            )  # compiles (prefill and decode graphs), at the full length
            first = time.perf_counter() - t0
        for fn in runners.values():
            fn(4)  # warm-up (allocators, lazy init)
        tokens: dict[str, object] = {}
        decode: dict[str, list[float]] = {name: [] for name in runners}
        e2e: dict[str, list[float]] = {name: [] for name in runners}
        # Interleaved repeats (ABAB…, reversed every other repeat): the shared box's load drifts, and
        # interleaving exposes all implementations to the same drift; each repeat gives each a figure.
        names = list(runners)
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else reversed(names):
                fn = runners[name]
                t1, _ = timed(lambda fn=fn: fn(1), 1)
                tn, tokens[name] = timed(lambda fn=fn: fn(args.new_tokens), 1)
                # Decode time = time for n tokens minus time for 1 (the prefill). On a loaded machine with
                # few new tokens the difference can vanish into noise: then that repeat has no decode figure.
                decode[name].append(batch * (args.new_tokens - 1) / (tn - t1) if tn > t1 else float("nan"))
                e2e[name].append(batch * args.new_tokens / tn)
        if "hf_compiled" in runners:
            steady = min(batch * args.new_tokens / v for v in e2e["hf_compiled"])
            result["hf_compile_s"] = round(first - steady, 1)
        for name in runners:
            result[f"{name}_decode_tok_s"] = round(spread(decode[name])["median"], 1)
            result[f"{name}_e2e_tok_s"] = round(spread(e2e[name])["median"], 1)
        pairs = [("glasslm", "hf"), ("compiled", "hf_compiled"), ("compiled", "hf")]
        for ours_name, peer in pairs:
            if ours_name not in runners or peer not in runners:
                continue
            per = [a / b for a, b in zip(decode[ours_name], decode[peer], strict=True) if a == a and b == b]
            key = f"{ours_name}_vs_{peer}"
            result[f"{key}_decode"] = [round(x, 3) for x in per]
            result[f"{key}_same_tokens"] = tokens[ours_name] == tokens[peer]
        rows.append(result)
        label = args.label or f"{param_counts(config)['total'] / 1e6:.0f}M"
        if "compiled_vs_hf_compiled_decode" in result and result["compiled_vs_hf_compiled_decode"]:
            report(
                "generate_throughput.py",
                f"decode tok/s, {label} {args.dtype}, batch {batch}, compiled vs compiled",
                f"transformers {transformers.__version__} `generate`, static cache + torch.compile",
                result["compiled_vs_hf_compiled_decode"],
                goal=2.0,  # type: ignore[arg-type]
                compile_s_ours=result.get("compile_s"),
                compile_s_peer=result.get("hf_compile_s"),
                vs_hf_eager=spread(result["compiled_vs_hf_decode"])["median"],  # type: ignore[arg-type]
                same_tokens=result["compiled_vs_hf_compiled_same_tokens"],
            )
        elif result.get("glasslm_vs_hf_decode"):
            report(
                "generate_throughput.py",
                f"decode tok/s, {label} {args.dtype}, batch {batch}, eager vs eager",
                f"transformers {transformers.__version__} `generate`",
                result["glasslm_vs_hf_decode"],  # type: ignore[arg-type]
                same_tokens=result["glasslm_vs_hf_same_tokens"],
            )
    meta = {
        "model": {**config.__dict__, **param_counts(config)},
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(
        f"model: d={config.d_model} L={config.n_layers} heads={config.n_heads}/{config.kv_heads} "
        f"mlp={config.mlp_hidden} vocab={config.vocab_size}, {param_counts(config)['total'] / 1e6:.1f}M params; "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, {args.dtype} on both sides, "
        f"{torch.get_num_threads()} threads"
    )
    for r in rows:
        print(
            f"batch {r['batch']}: decode tok/s (median of {args.repeats} interleaved repeats): "
            + ", ".join(
                f"{n} {r[f'{n}_decode_tok_s']}"
                for n in ("glasslm", "compiled", "hf", "hf_compiled")
                if f"{n}_decode_tok_s" in r
            )
            + f"; compile time: glasslm {r.get('compile_s')} s, HF {r.get('hf_compile_s')} s"
        )
        for key in ("glasslm_vs_hf", "compiled_vs_hf_compiled", "compiled_vs_hf"):
            if f"{key}_decode" in r and r[f"{key}_decode"]:
                print(
                    f"  {key.replace('_vs_', ' / '):26s} decode {fmt_spread(r[f'{key}_decode'])};  "
                    f"identical tokens: {r[f'{key}_same_tokens']}"
                )


if __name__ == "__main__":
    main()
