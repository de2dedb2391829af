"""Conversion between glasslm checkpoints and Hugging Face ``Olmo2ForCausalLM`` folders
(and ``LlamaForCausalLM`` ones, read as ``architecture: llama``).

Only names change: tensors are copied bit for bit, so a round trip is exact. The folder we write needs
no glasslm to load: ``transformers.AutoModelForCausalLM.from_pretrained(folder)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from glasslm import artifacts
from glasslm.config import ConfigError
from glasslm.model import checkpoint as ckpt
from glasslm.model.hf_format import (
    HF_TYPES,
    from_hf_state,
    hf_config,
    model_config_from_hf,
    read_hf_folder,
    to_hf_state,
)
from glasslm.model.olmo2 import ModelConfig
from glasslm.tokenizer import CHAT_TEMPLATE

# The format itself (names, config.json, reading a folder) lives in model/hf_format.py.
__all__ = [
    "HF_TYPES",
    "export_hf",
    "from_hf_state",
    "hf_config",
    "import_hf",
    "model_config_from_hf",
    "read_hf_folder",
    "to_hf_state",
]


def _special_ids(tokenizer_json: Path | None) -> dict[str, int | None]:
    ids: dict[str, int | None] = {"eos": None, "pad": None, "bos": None}
    if tokenizer_json is None:
        return ids
    added = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text()).get("added_tokens", [])}
    ids["eos"] = added.get("<|endoftext|>")
    ids["pad"] = added.get("<|pad|>", ids["eos"])
    return ids


def _write_tokenizer_files(out: Path, tokenizer_json: Path, config: ModelConfig) -> None:
    (out / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    ids = _special_ids(tokenizer_json)
    added = {t["id"]: t["content"] for t in json.loads(tokenizer_json.read_text()).get("added_tokens", [])}
    eos = added.get(ids["eos"]) if ids["eos"] is not None else None
    pad = added.get(ids["pad"]) if ids["pad"] is not None else None
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_seq_len,
        "eos_token": eos,
        "pad_token": pad,
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
    }
    # Every glasslm tokenizer formats chats with the OLMo-2 template unless it ships another one
    # (Tokenizer.from_file falls back the same way), so the export always carries a template.
    chat = tokenizer_json.parent / "chat_template.jinja"
    template = chat.read_text() if chat.is_file() else CHAT_TEMPLATE
    tok_cfg["chat_template"] = template
    (out / "chat_template.jinja").write_text(template)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in {"eos_token": eos, "pad_token": pad}.items() if v}, indent=2) + "\n"
    )


def export_hf(model_path: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face folder (an artifact too: it carries a manifest naming its source)."""
    source = ckpt.resolve_model_dir(model_path)
    if ckpt.is_hf_folder(source) and not (source / ckpt.CONFIG).is_file():
        raise ConfigError(f"{source} is already a Hugging Face folder")
    config = ckpt.read_model_config(source)
    state = load_file(str(source / ckpt.WEIGHTS))
    tokenizer = source / ckpt.TOKENIZER
    tokenizer_json = tokenizer if tokenizer.is_file() else None
    dtype = next(iter(state.values())).dtype
    with artifacts.create_artifact(out, "hf_model", config={"model": config}, inputs=[source]) as art:
        save_file(
            to_hf_state(state, config.architecture),
            str(art.path / "model.safetensors"),
            metadata={"format": "pt"},
        )
        cfg = hf_config(config, dtype, _special_ids(tokenizer_json))
        (art.path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
        (art.path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer_json is not None:
            _write_tokenizer_files(art.path, tokenizer_json, config)
    return Path(out)


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Make a glasslm checkpoint from a Hugging Face Olmo2 or Llama folder (weights copied bit for bit)."""
    hf_dir = Path(hf_dir)
    if not ckpt.is_hf_folder(hf_dir):
        raise artifacts.ArtifactError(
            f"{hf_dir}: not a Hugging Face Olmo2 or Llama folder (config.json with model_type 'olmo2' or 'llama')"
        )
    config, state = read_hf_folder(hf_dir)
    tokenizer = hf_dir / "tokenizer.json"
    source_ref = (
        artifacts.input_ref(hf_dir)
        if (hf_dir / artifacts.MANIFEST).is_file()
        else {
            "path": str(hf_dir.resolve()),
            "kind": "hf_model",
            "sha256": artifacts.sha256_file(hf_dir / "config.json"),
        }
    )
    with artifacts.create_artifact(
        out, ckpt.CHECKPOINT, config={"model": config}, inputs=[source_ref]
    ) as art:
        ckpt.write_checkpoint_files(art.path, state, config, tokenizer if tokenizer.is_file() else None)
        chat = hf_dir / "chat_template.jinja"
        if chat.is_file():
            (art.path / "chat_template.jinja").write_text(chat.read_text())
        art.extra["stage"] = "imported"
    return Path(out)
