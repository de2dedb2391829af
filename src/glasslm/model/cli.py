"""``glasslm model init|info`` and ``glasslm convert to-hf|from-hf``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    add_verb,
    emit,
    format_table,
    local_path,
    resolve_config,
    stage_verbs,
)
from glasslm.config import ConfigError
from glasslm.model import checkpoint, hf
from glasslm.model.memory import MemoryPlan, estimate_memory
from glasslm.model.olmo2 import ModelConfig, OLMo2, describe
from glasslm.model.presets import PRESETS, preset


@dataclass
class InitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    dtype: str = "float32"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "model", "build and inspect OLMo-2 models")
    p = add_verb(
        verbs, "init", _init, "write a randomly initialised checkpoint from a preset", checkpoint.CHECKPOINT
    )
    p.add_argument("--preset", default="tiny", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument(
        "--tokenizer",
        type=local_path,
        default=None,
        help="tokenizer.json (or tokenizer artifact) to ship with it",
    )
    add_out(p)
    add_config_options(p)
    p = add_verb(verbs, "info", _info, "parameter counts and training FLOPs per token of a model or preset")
    p.add_argument("model", nargs="?", type=local_path, help="checkpoint, training run, or HF folder")
    p.add_argument("--preset", default=None, help=f"instead of a model, one of: {', '.join(PRESETS)}")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for the attention FLOPs term")
    p.add_argument(
        "--memory", action="store_true", help="also estimate training memory per GPU (docs/training.md)"
    )
    p.add_argument("--micro-batch", type=int, default=4, help="with --memory: sequences per forward pass")
    p.add_argument("--world-size", type=int, default=1, help="with --memory: ranks (sharding under --fsdp)")
    p.add_argument(
        "--fsdp", action="store_true", help="with --memory: FSDP2 (parameters, gradients, optimizer sharded)"
    )
    p.add_argument("--activation-checkpointing", action="store_true", help="with --memory: recompute blocks")
    p.add_argument(
        "--fp32", action="store_true", help="with --memory: fp32 training instead of bf16 autocast"
    )
    add_json_flag(p)

    verbs = stage_verbs(sub, "convert", "convert checkpoints to and from Hugging Face Olmo2ForCausalLM")
    p = add_verb(
        verbs, "to-hf", _to_hf, "write a folder that transformers loads as Olmo2ForCausalLM", "hf_model"
    )
    p.add_argument("model", type=local_path, help="checkpoint, training run or run directory")
    p.add_argument("out_pos", nargs="?", type=local_path, metavar="OUT", help="output folder (or --out)")
    add_out(p, required=False)
    p = add_verb(
        verbs,
        "from-hf",
        _from_hf,
        "make a glasslm checkpoint from a Hugging Face Olmo2 folder",
        checkpoint.CHECKPOINT,
    )
    p.add_argument("hf_dir", type=local_path, help="folder with config.json and *.safetensors")
    p.add_argument("out_pos", nargs="?", type=local_path, metavar="OUT", help="output folder (or --out)")
    add_out(p, required=False)


def _out(args: argparse.Namespace) -> Path:
    if args.out is not None and args.out_pos is not None and args.out != args.out_pos:
        raise ConfigError(f"two output folders: OUT {args.out_pos} and --out {args.out}; give one")
    out = args.out or args.out_pos
    if out is None:
        raise ConfigError("no output folder: give OUT or --out DIR")
    return out


def _tokenizer_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    tok = path / "tokenizer.json" if path.is_dir() else path
    if not tok.is_file():
        raise ConfigError(f"{path}: no tokenizer.json there")
    return tok


def _init(args: argparse.Namespace) -> int:
    config = resolve_config(InitConfig, args, base=InitConfig(model=preset(args.preset)))
    config.model.validate()
    if config.dtype not in DTYPES:
        raise ConfigError(f"config key 'dtype': expected one of {list(DTYPES)}, got {config.dtype!r}")
    torch.manual_seed(config.seed)
    model = OLMo2(config.model).to(DTYPES[config.dtype])
    tokenizer = _tokenizer_file(args.tokenizer)
    inputs = (
        [args.tokenizer]
        if args.tokenizer is not None and (args.tokenizer / "manifest.json").is_file()
        else []
    )
    checkpoint.save_checkpoint(
        model,
        args.out,
        config=config,
        tokenizer=tokenizer,
        inputs=inputs,
        stage="init",
        metrics=describe(config.model),
    )
    info = describe(config.model)
    print(f"wrote {args.out}: preset {args.preset}, {info['params_total']:,} parameters")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.preset is not None and args.model is not None:
        raise ConfigError(f"give a model ({args.model}) or --preset ({args.preset}), not both")
    for flag, value in (("--seq-len", args.seq_len), ("--micro-batch", args.micro_batch)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.world_size < 1:
        raise ConfigError(f"--world-size must be >= 1, got {args.world_size}")
    if args.preset is not None:
        config, source = preset(args.preset), f"preset {args.preset}"
    elif args.model is not None:
        directory = checkpoint.resolve_model_dir(args.model)
        if checkpoint.is_hf_folder(directory) and not (directory / checkpoint.CONFIG).is_file():
            import json

            config = hf.model_config_from_hf(json.loads((directory / "config.json").read_text()))
        else:
            config = checkpoint.read_model_config(directory)
        source = str(directory)
    else:
        raise ConfigError("give a MODEL path or --preset NAME")
    data: dict[str, Any] = {"source": source, "config": config.__dict__, **describe(config, args.seq_len)}
    if args.memory:
        plan = MemoryPlan(
            micro_batch=args.micro_batch,
            seq_len=args.seq_len or config.max_seq_len,
            world_size=args.world_size,
            fsdp=args.fsdp,
            activation_checkpointing=args.activation_checkpointing,
            bf16=not args.fp32,
        )
        data["memory_plan"] = {**plan.__dict__, "chunked_head": plan.uses_chunked_head}
        data["memory_bytes"] = estimate_memory(config, plan)

    def render(d: dict[str, Any]) -> str:
        skip = ("config", "source", "memory_plan", "memory_bytes")
        rows = [{"quantity": k, "value": v} for k, v in d.items() if k not in skip]
        text = f"{d['source']}\n" + format_table(rows)
        if "memory_bytes" in d:
            p = d["memory_plan"]
            text += (
                f"\n\nmemory per GPU (estimate; docs/training.md): micro-batch {p['micro_batch']}, seq {p['seq_len']}, "
                f"world {p['world_size']}, fsdp {p['fsdp']}, activation checkpointing "
                f"{p['activation_checkpointing']}, {'bf16 autocast' if p['bf16'] else 'fp32'}\n"
            )
            text += format_table(
                [{"part": k, "GiB": f"{v / 2**30:.2f}"} for k, v in d["memory_bytes"].items()]
            )
        return text

    emit(args, data, render)
    return 0


def _to_hf(args: argparse.Namespace) -> int:
    out = hf.export_hf(args.model, _out(args))
    print(f"wrote Hugging Face folder {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _from_hf(args: argparse.Namespace) -> int:
    out = hf.import_hf(args.hf_dir, _out(args))
    print(f"wrote glasslm checkpoint {out}")
    return 0
