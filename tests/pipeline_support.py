"""A micro run config (configs/tiny.yaml shrunk to seconds) and a pipeline run made with it."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from glasslm.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Same stages, same verbs as the tiny run, on very little data and compute. EVAL is the eval section.
MICRO = """
corpus: {max_bytes_code: CODE_BYTES, max_bytes_docs: CODE_BYTES, max_bytes_web: WEB_BYTES}
tag: {taggers: [langid, gopher, c4, stats, pii, code, toxicity]}
decon: {tasks: [TASKS]}
mix: {recipe: RECIPE}
tokenizer: {vocab_size: 512}
train:
  model: {preset: tiny, n_layers: 1}
  data: {loader: {seq_len: 64, global_batch_size: 4}}
  optim: {lr: 3.0e-3}
  schedule: {kind: cosine, warmup: 2}
  trainer: {max_steps: 6, checkpoint_every: CHECKPOINT_EVERY, log_every: LOG_EVERY}
eval: EVAL
adapt_data: {rl_train: 40, rl_heldout: 200, sft_verifiable: 20, dpo_verifiable: 10, modules: [json, textwrap]}
sft:
  data: {eval_limit: 4, loader: {seq_len: 64, global_batch_size: 4}}
  trainer: {max_steps: 3, checkpoint_every: 3}
dpo:
  data: {eval_limit: 4, loader: {seq_len: 64, global_batch_size: 2}}
  trainer: {max_steps: 2, checkpoint_every: 2, skip_step: {enabled: false}}
rl:
  data: {eval_limit: 4, loader: {seq_len: 64, global_batch_size: 4}}
  rl: {group_size: 2, max_new_tokens: 4, eval_max_new_tokens: 4, eval_samples: 1}
  trainer: {max_steps: 1, checkpoint_every: 1, skip_step: {enabled: false}}
"""


def micro_pipeline(
    base: Path, eval_section: str, code_bytes: int, web_bytes: int, checkpoint_every: int, log_every: int
) -> tuple[Path, Path]:
    """Write the micro config (and an evaluation set to decontaminate against, since the bundled one
    is slow), run `glasslm pipeline` with it; returns (config file, run directory)."""
    tasks = base / "eval_set.jsonl"
    tasks.write_text(
        json.dumps(
            {
                "question": "What does the json module do? It encodes and decodes JSON "
                "documents from Python objects and back again, with options."
            }
        )
        + "\n"
    )
    shutil.copyfile(ROOT / "configs/recipes/default.yaml", base / "recipe.yaml")
    config = base / "micro.yaml"
    text = MICRO
    # Paths relative to the config file, and the pipeline run from another directory: as a user would.
    for key, value in {
        "RECIPE": "recipe.yaml",
        "TASKS": "eval_set.jsonl",
        "EVAL": eval_section,
        "CODE_BYTES": code_bytes,
        "WEB_BYTES": web_bytes,
        "CHECKPOINT_EVERY": checkpoint_every,
        "LOG_EVERY": log_every,
    }.items():
        text = text.replace(key, str(value))
    config.write_text(text)
    out = base / "run"
    elsewhere = base / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    with contextlib.chdir(elsewhere):
        assert main(["pipeline", "--config", str(config), "--out", str(out)]) == 0
    return config, out
