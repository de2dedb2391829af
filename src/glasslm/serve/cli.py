"""``glasslm generate``, ``glasslm chat`` and ``glasslm serve``: top-level verbs over one engine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from glasslm.clitools import add_json_flag, emit, local_path
from glasslm.config import ConfigError
from glasslm.model.checkpoint import load_model
from glasslm.model.generate import Engine, SamplingParams
from glasslm.serve.limits import ServeLimits
from glasslm.tokenizer import Tokenizer
from glasslm.train.distributed import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="complete prompts with a model (KV-cache, batched)",
        description="Complete one or more prompts. One prompt streams to the terminal; "
        "several are generated as one batch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.epilog = (
        'example:\n  glasslm generate runs/demo --prompt "Once upon a time" --max-new-tokens 64 '
        "--temperature 0.8 --top-p 0.95 --seed 0"
    )
    _model_args(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--prompt-file", type=local_path, default=None, help="more prompts, one per line")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    _sampling_args(p, default_max=64, default_temperature=0.0)
    add_json_flag(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal (/reset, /trace, /exit)",
        description="Interactive chat: history, OLMo-2 chat template, streamed replies. "
        "Type /reset to start over, /trace to see which parts of the last reply occur verbatim in the "
        "training data (needs a trace index), and /exit (or Ctrl-D) to leave.",
    )
    _model_args(p)
    p.add_argument("--system", default=None, help="system message at the start of the conversation")
    _sampling_args(p, default_max=256, default_temperature=0.7)
    _trace_args(p, "/trace shows the last reply's spans found verbatim in the training data")
    p.set_defaults(func=_chat)

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with continuous batching",
        description="Serve /v1/completions, /v1/chat/completions (streaming too), /v1/models, "
        "/health and /metrics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.epilog = (
        "example:\n  glasslm serve runs/demo --port 8000 --api-key secret\n"
        "  curl -H 'Authorization: Bearer secret' localhost:8000/v1/models"
    )
    _model_args(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every path but /health, "
        "/docs and /openapi.json included (or set $GLASSLM_API_KEY)",
    )
    p.add_argument(
        "--model-name", default=None, help="the model id clients send (default: the model folder's name)"
    )
    limits = ServeLimits()  # the one source of the server's defaults
    p.add_argument(
        "--max-batch", type=int, default=limits.max_batch, help="requests decoded together (cache slots)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=limits.max_queue,
        help="waiting requests beyond the batch; more get 429",
    )
    p.add_argument(
        "--max-prompt-tokens", type=int, default=limits.max_prompt_tokens, help="longer prompts get 413"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=limits.max_new_tokens, help="a larger max_tokens gets 400"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help=f"larger request bodies get 413 before they are read (default {limits.max_body_bytes >> 20} MiB)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _trace_args(
        p, 'requests with "trace": true get the spans of their output found verbatim in the training data'
    )
    p.set_defaults(func=_serve)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=local_path, help="checkpoint, training run, run directory or HF folder")
    p.add_argument(
        "--tokenizer", type=local_path, default=None, help="tokenizer.json if the model does not carry one"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU"
    )
    p.add_argument(
        "--max-len", type=int, default=None, help="cache length per request (default: model's max)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step (compiles at start-up; eager if compiling fails)",
    )


def _trace_args(p: argparse.ArgumentParser, what: str) -> None:
    from glasslm.serve.tracing import DEFAULT_MIN_LEN

    p.add_argument(
        "--trace",
        type=local_path,
        default=None,
        metavar="INDEX_OR_RUN",
        help=f"trace index (or a run directory holding trace_index/): {what}; default: the "
        "trace_index beside MODEL when MODEL is a run directory",
    )
    p.add_argument(
        "--trace-min-len", type=int, default=DEFAULT_MIN_LEN, help="shortest span traced, in tokens"
    )


def _tracer(args: argparse.Namespace) -> Any:
    from glasslm.serve.tracing import open_tracer

    if args.trace_min_len < 1:
        raise ConfigError(f"--trace-min-len must be at least 1, got {args.trace_min_len}")
    tracer = open_tracer(args.trace, args.model)
    if tracer is not None:
        print(f"tracing against {tracer.path} ({tracer.index.n_tokens:,} training tokens)", file=sys.stderr)
    return tracer


def _sampling_args(p: argparse.ArgumentParser, default_max: int, default_temperature: float) -> None:
    p.add_argument("--max-new-tokens", type=int, default=default_max)
    p.add_argument("--temperature", type=float, default=default_temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true", help="keep generating after end-of-text")


def _params(args: argparse.Namespace) -> SamplingParams:
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=list(args.stop),
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    try:
        params.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return params


def build_engine(args: argparse.Namespace, max_batch: int = 8) -> tuple[Engine, Path]:
    device = str(resolve_device(args.device))
    dtype_name = (
        args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    )
    loaded = load_model(args.model, device=device, dtype=DTYPES[dtype_name])
    tok_path = args.tokenizer or loaded.tokenizer_path
    if tok_path is None:
        raise ConfigError(f"{loaded.path}: the model carries no tokenizer.json; pass --tokenizer PATH")
    try:
        tokenizer = Tokenizer.from_file(tok_path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    positions = loaded.model.config.max_seq_len
    if args.max_len is not None and not 1 <= args.max_len <= positions:
        raise ConfigError(f"--max-len must be in 1..{positions} (the model's positions), got {args.max_len}")
    engine = Engine(loaded.model, tokenizer, max_batch=max_batch, max_len=args.max_len, compile=args.compile)
    return engine, loaded.path


def _generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            raise ConfigError(f"--prompt-file {args.prompt_file}: no such file")
        prompts += [line for line in args.prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompt-file FILE")
    params = _params(args)
    engine, model_dir = build_engine(args, max_batch=min(len(prompts), 32))
    tok = engine.tokenizer
    inputs = [
        tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True)
        if args.chat
        else tok.encode(p)
        for p in prompts
    ]
    try:
        if len(prompts) == 1 and not args.json:
            sys.stdout.write(prompts[0] if not args.chat else "")
            for event in engine.stream(inputs[0], params):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        results = engine.generate(inputs, params)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    data = {
        "model": str(model_dir),
        "params": {k: v for k, v in params.__dict__.items() if k != "stop_token_ids"},
        "results": [
            {
                "prompt": p,
                "text": r.text,
                "finish_reason": r.finish_reason,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "token_ids": r.token_ids,
            }
            for p, r in zip(prompts, results, strict=True)
        ],
    }

    def render(d: dict[str, Any]) -> str:
        blocks = [
            f"=== {i}: {r['finish_reason']}, {r['completion_tokens']} tokens ===\n{r['prompt']}{r['text']}"
            for i, r in enumerate(d["results"])
        ]
        return "\n".join(blocks)

    emit(args, data, render)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from glasslm.serve.chat import ChatSession, run_chat

    tracer = _tracer(args)
    engine, _ = build_engine(args, max_batch=1)
    session = ChatSession(
        engine, _params(args), system=args.system, tracer=tracer, trace_min_len=args.trace_min_len
    )
    try:
        return run_chat(session)
    finally:
        if tracer is not None:
            tracer.close()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from glasslm.serve.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for flag, value, least in (
        ("--max-body-bytes", args.max_body_bytes, 1),
        ("--max-batch", args.max_batch, 1),  # 0 cache slots would take requests and never run one
        ("--max-queue", args.max_queue, 0),
        ("--max-prompt-tokens", args.max_prompt_tokens, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
    ):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    tracer = _tracer(args)
    engine, model_dir = build_engine(args, max_batch=args.max_batch)
    name = args.model_name or Path(args.model).resolve().name
    limits = ServeLimits(
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
    )
    app = create_app(
        engine, name, api_key=args.api_key, limits=limits, tracer=tracer, trace_min_len=args.trace_min_len
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    sock = config.bind_socket()  # bound here, so --port 0 is logged as the port the OS chose
    port = sock.getsockname()[1]
    logging.getLogger("glasslm.serve").info(
        "serving %s (from %s) on http://%s:%d/v1", name, model_dir, args.host, port
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
