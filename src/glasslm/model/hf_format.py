"""The Hugging Face ``Olmo2ForCausalLM`` / ``LlamaForCausalLM`` format: parameter names, config.json,
and reading such a folder into a ``ModelConfig`` and a state dict with our names.

Pure format knowledge, no artifacts: ``model/checkpoint.py`` reads Hugging Face folders through it
and ``model/hf.py`` (export / import as artifacts) writes them, so neither imports the other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from glasslm import artifacts
from glasslm.config import ConfigError
from glasslm.model.olmo2 import ModelConfig

# (our name, Hugging Face name), with {i} for the layer index; the norms differ per architecture.
_SHARED_NAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("blocks.{i}.attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("blocks.{i}.attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("blocks.{i}.attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("blocks.{i}.attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blocks.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("blocks.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("blocks.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
]
_NAMES = {
    "olmo2": _SHARED_NAMES
    + [
        ("blocks.{i}.attn.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
        ("blocks.{i}.attn.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
        ("blocks.{i}.attn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight"),
    ],
    # Llama's "post_attention_layernorm" is the norm *before* the MLP, despite its name.
    "llama": _SHARED_NAMES
    + [
        ("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ],
}
# Hugging Face model_type and class of each architecture.
HF_TYPES = {"olmo2": ("olmo2", "Olmo2ForCausalLM"), "llama": ("llama", "LlamaForCausalLM")}


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_TO_HF = {arch: [(_pattern(ours), theirs) for ours, theirs in names] for arch, names in _NAMES.items()}
_FROM_HF = {arch: [(_pattern(theirs), ours) for ours, theirs in names] for arch, names in _NAMES.items()}


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.replace("{i}", m.group(1)) if m.groups() else target
    raise ConfigError(f"tensor '{name}' has no counterpart in the other format")


def to_hf_state(state: dict[str, torch.Tensor], architecture: str = "olmo2") -> dict[str, torch.Tensor]:
    return {_rename(k, _TO_HF[architecture]): v for k, v in state.items()}


def from_hf_state(state: dict[str, torch.Tensor], architecture: str = "olmo2") -> dict[str, torch.Tensor]:
    # transformers never stores rotary tables, but older exports may carry inv_freq buffers.
    return {
        _rename(k, _FROM_HF[architecture]): v
        for k, v in state.items()
        if not k.endswith("rotary_emb.inv_freq")
    }


def hf_config(config: ModelConfig, dtype: torch.dtype, special: dict[str, int | None]) -> dict[str, Any]:
    """An Olmo2Config (or LlamaConfig) as config.json; both the 4.x (rope_theta) and 5.x (rope_parameters)
    spellings."""
    model_type, architecture = HF_TYPES[config.architecture]
    extra: dict[str, Any] = (
        {"mlp_bias": False, "head_dim": config.head_dim} if config.architecture == "llama" else {}
    )
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "use_cache": True,
        "pad_token_id": special.get("pad"),
        "bos_token_id": special.get("bos"),
        "eos_token_id": special.get("eos"),
        "tie_word_embeddings": config.tie_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "dtype": str(dtype).removeprefix("torch."),
        **extra,
    }


def model_config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    architecture = {model_type: arch for arch, (model_type, _) in HF_TYPES.items()}.get(
        cfg.get("model_type", "")
    )
    if architecture is None:
        raise ConfigError(
            f"expected a Hugging Face config with model_type 'olmo2' or 'llama', "
            f"got {cfg.get('model_type')!r}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ConfigError(f"configs with {flag}=true are not supported (glasslm's models have no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"RoPE scaling '{rope_type}' is not supported")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim != cfg["hidden_size"] // cfg["num_attention_heads"]:
        raise ConfigError(
            "configs with a head_dim other than hidden_size/num_attention_heads are not supported"
        )
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        d_model=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        mlp_hidden=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 4096),
        # Each family's own default when the file leaves it out (LlamaConfig: 10,000).
        rope_theta=float(
            rope.get("rope_theta", cfg.get("rope_theta", 500_000.0 if architecture == "olmo2" else 10_000.0))
        ),
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        init_std=cfg.get("initializer_range", 0.02),
        architecture=architecture,
    )


def read_hf_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    cfg = json.loads((folder / "config.json").read_text())
    config = model_config_from_hf(cfg)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise artifacts.ArtifactError(f"{folder}: no *.safetensors weights (PyTorch .bin files are not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    state = from_hf_state(state, config.architecture)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return config, state
