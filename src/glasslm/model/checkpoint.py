"""Model checkpoints: ``model.safetensors`` + ``config.yaml`` (+ ``tokenizer.json``) + ``manifest.json``.

Wherever a model is expected, a user may name a checkpoint, a training run (its ``latest``
checkpoint), a run directory (its most adapted model), or a Hugging Face ``Olmo2ForCausalLM`` folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from glasslm import artifacts
from glasslm.config import from_dict, to_dict
from glasslm.model.hf_format import read_hf_folder
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.tokenizer import CHAT_TEMPLATE_FILE

CHECKPOINT = "checkpoint"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
LATEST = "latest"
# Where to look for "the model" inside a run directory, most adapted first.
RUN_MODEL_DIRS = ("adapt/rl", "adapt/dpo", "adapt/sft", "train")


def state_dict_for_saving(model: OLMo2) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; a tied head is stored once (as the embedding)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def write_checkpoint_files(
    directory: Path,
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: str | Path | None = None,
) -> None:
    """Write weights, config and (optionally) the tokenizer into an existing directory."""
    # One metadata key only: safetensors writes the metadata map in a per-process random (Rust HashMap)
    # order, so two keys made identical weights hash differently (found by `glasslm reproduce`).
    save_file(dict(state), str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(yaml.safe_dump({"model": to_dict(config)}, sort_keys=False))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, directory / TOKENIZER)
        # The chat template travels with its tokenizer (Tokenizer.from_file reads it from beside it).
        template = Path(tokenizer).parent / CHAT_TEMPLATE_FILE
        if template.is_file() and template.resolve() != (directory / CHAT_TEMPLATE_FILE).resolve():
            shutil.copyfile(template, directory / CHAT_TEMPLATE_FILE)


def save_checkpoint(
    model: OLMo2,
    out: str | Path,
    *,
    config: Any = None,
    inputs: Sequence[str | Path | Mapping[str, Any]] = (),
    tokenizer: str | Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    stage: str = "pretrain",
) -> Path:
    """Write a complete checkpoint artifact at ``out`` (atomically)."""
    out = Path(out)
    with artifacts.create_artifact(
        out, CHECKPOINT, config=config or {"model": model.config}, inputs=inputs
    ) as art:
        write_checkpoint_files(art.path, state_dict_for_saving(model), model.config, tokenizer)
        art.metrics.update(metrics or {})
        art.extra["stage"] = stage
    return out


def is_hf_folder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in ("olmo2", "llama")
    except json.JSONDecodeError:
        return False


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding the weights that ``path`` names (see module docstring). A glasslm artifact
    must hold regular files only (a planted tokenizer.json symlink is refused); a plain Hugging Face
    folder may use links, as the hub cache does."""
    found = _model_dir(Path(path))
    if (found / artifacts.MANIFEST).is_file():
        artifacts.check_regular(found)
    return found


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise artifacts.ArtifactError(
            f"{path}: no such model (expected a checkpoint, training run, run or HF folder)"
        )
    if (path / LATEST).is_file():
        target = path / (path / LATEST).read_text().strip()
        if not (target / artifacts.MANIFEST).is_file():
            raise artifacts.ArtifactError(f"{path}/{LATEST} points at {target}, which is not a checkpoint")
        return target
    if (path / artifacts.MANIFEST).is_file():
        kind = artifacts.read_manifest(path).get("kind")
        if kind == CHECKPOINT:
            return path
    if is_hf_folder(path):
        return path
    for sub in RUN_MODEL_DIRS:
        if (path / sub).exists():
            try:
                return _model_dir(path / sub)
            except artifacts.ArtifactError:
                continue
    raise artifacts.ArtifactError(
        f"{path}: not a model (expected a checkpoint with {artifacts.MANIFEST} and {WEIGHTS}, a training run "
        f"with a '{LATEST}' file, a run directory, or a Hugging Face Olmo2 folder with config.json)"
    )


def read_model_config(directory: Path) -> ModelConfig:
    data = yaml.safe_load((directory / CONFIG).read_text()) or {}
    return from_dict(ModelConfig, data.get("model", data))


@dataclass
class LoadedModel:
    model: OLMo2
    config: ModelConfig
    path: Path  # the directory the weights came from
    tokenizer_path: Path | None

    @property
    def ref(self) -> dict[str, Any] | Path:
        """How a manifest should name this model as an input."""
        if (self.path / artifacts.MANIFEST).is_file():
            return artifacts.input_ref(self.path)
        return {"path": str(self.path.resolve()), "kind": "hf_model", "sha256": None}


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    directory = resolve_model_dir(path)
    if is_hf_folder(directory) and not (directory / CONFIG).is_file():
        config, state = read_hf_folder(directory)
    else:
        config = read_model_config(directory)
        state = load_file(str(directory / WEIGHTS))
    with torch.device("meta"):
        model = OLMo2(config)
    missing = set(model.state_dict()) - set(state) - ({"lm_head.weight"} if config.tie_embeddings else set())
    if missing:
        raise artifacts.ArtifactError(f"{directory}: weights missing for {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    # The RoPE tables were made on the meta device: make them again for real.
    model.rope = type(model.rope)(config.head_dim, config.max_seq_len, config.rope_theta)
    model.to(device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    model.eval()
    tok = directory / TOKENIZER
    return LoadedModel(
        model=model, config=config, path=directory, tokenizer_path=tok if tok.is_file() else None
    )
