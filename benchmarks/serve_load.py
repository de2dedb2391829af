"""Load test for ``glasslm serve``: N concurrent streaming clients on 127.0.0.1 for a bounded time.

Starts the real server (``python -m glasslm serve``) in a subprocess, then runs N clients, each
sending streaming ``/v1/completions`` requests back to back (``stream_options.include_usage`` for
exact token counts) until the time is up. Reports requests/s, output tokens/s, latency p50/p99,
time to first token p50/p99 and errors. The peer figure, measured in the same run on the same
model, is the same server with ``--max-batch 1`` (requests served one at a time), i.e. what
continuous batching buys. No external server (vLLM, TGI) runs here: both need their own torch
builds, which this CPU box's environments must not take.

    python benchmarks/serve_load.py                       # builds a tiny random model, 8 clients, 20 s
    python benchmarks/serve_load.py --model runs/demo --clients 16 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the ones before it.",
    "Open data, open code, open weights: every artifact has a manifest.",
]
PROMPTS = ["Once upon a time", "The model", "Open data and open code", "Tokens", "A quick question:"]


def build_model(root: Path, d_model: int, layers: int) -> Path:
    """A byte-level BPE tokenizer and a random OLMo-2 checkpoint (content does not matter for load)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from glasslm.model.checkpoint import save_checkpoint
    from glasslm.model.olmo2 import ModelConfig, OLMo2
    from glasslm.model.presets import pad_vocab
    from glasslm.tokenizer import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SENTENCES * 4,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.save(str(root / "tokenizer.json"))
    heads = max(1, d_model // 32)
    config = ModelConfig(
        vocab_size=pad_vocab(tok.get_vocab_size()),
        d_model=d_model,
        n_layers=layers,
        n_heads=heads,
        mlp_hidden=3 * d_model,
        max_seq_len=1024,
    )
    torch.manual_seed(0)
    save_checkpoint(OLMo2(config), root / "ckpt", tokenizer=root / "tokenizer.json", stage="init")
    return root / "ckpt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = dict(os.environ)
    env.pop("GLASSLM_API_KEY", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "glasslm",
            "serve",
            str(model),
            "--port",
            str(port),
            "--model-name",
            "bench",
            "--max-batch",
            str(max_batch),
            "--max-queue",
            "256",
            "--log-level",
            "warning",
        ],
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


async def client_loop(
    url: str, idx: int, stop_at: float, max_tokens: int, records: list[dict[str, Any]]
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        n = 0
        while time.monotonic() < stop_at:
            body = {
                "model": "bench",
                "prompt": PROMPTS[(idx + n) % len(PROMPTS)],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": idx * 1000 + n,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
            n += 1
            t0, first, tokens, error = time.monotonic(), None, 0, None
            try:
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        error = f"HTTP {r.status_code}"
                        await r.aread()
                    else:
                        done = False
                        async for line in r.aiter_lines():
                            if not line.startswith("data: "):
                                continue
                            if line == "data: [DONE]":
                                done = True
                                break
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                error = chunk["error"]["message"]
                            elif chunk.get("usage"):
                                tokens = chunk["usage"]["completion_tokens"]
                            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                                first = time.monotonic()
                        if not done and error is None:
                            error = "stream ended without [DONE]"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            records.append(
                {"start": t0, "end": time.monotonic(), "first": first, "tokens": tokens, "error": error}
            )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_load(url: str, clients: int, duration: float, max_tokens: int) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()

    async def all_clients() -> None:
        await asyncio.gather(
            *(client_loop(url, i, t0 + duration, max_tokens, records) for i in range(clients))
        )

    asyncio.run(all_clients())
    elapsed = time.monotonic() - t0  # includes finishing the requests in flight at the deadline
    ok = [r for r in records if r["error"] is None]
    latencies = [r["end"] - r["start"] for r in ok]
    ttft = [r["first"] - r["start"] for r in ok if r["first"] is not None]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_examples": sorted({r["error"] for r in records if r["error"]})[:3],
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "output_tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1),
        "latency_p50_s": round(pct(latencies, 50), 3),
        "latency_p99_s": round(pct(latencies, 99), 3),
        "ttft_p50_s": round(pct(ttft, 50), 3),
        "ttft_p99_s": round(pct(ttft, 99), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model to serve (default: build a random one)")
    ap.add_argument("--d-model", type=int, default=256, help="for the built model")
    ap.add_argument("--layers", type=int, default=4, help="for the built model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per configuration")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=None, help="server batch (default: --clients)")
    ap.add_argument("--threads", type=int, default=None, help="OMP threads for the server")
    ap.add_argument("--no-peer", action="store_true", help="skip the --max-batch 1 comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp), args.d_model, args.layers)
        configs = [("continuous batching", args.max_batch or args.clients)]
        if not args.no_peer:
            configs.append(("one at a time (--max-batch 1)", 1))
        results = {}
        for name, batch in configs:
            proc, url = start_server(model, batch, args.threads)
            try:
                results[name] = {
                    "max_batch": batch,
                    **run_load(url, args.clients, args.duration, args.max_tokens),
                }
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(
        json.dumps(
            {
                "clients": args.clients,
                "duration_s": args.duration,
                "max_tokens": args.max_tokens,
                "model": str(args.model or f"random d_model={args.d_model} layers={args.layers}"),
                "results": results,
            },
            indent=2,
        )
    )
    if len(results) == 2:
        a, b = results.values()
        print(
            f"output tokens/s: batched {a['output_tokens_per_s']} vs one-at-a-time {b['output_tokens_per_s']} → "
            f"{a['output_tokens_per_s'] / max(b['output_tokens_per_s'], 1e-9):.2f}×; errors {a['errors']} / {b['errors']}"
        )


if __name__ == "__main__":
    main()
