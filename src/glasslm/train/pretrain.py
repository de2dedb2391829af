"""Pretraining: the LM objective over a tokens artifact's loader, in one process or many (torchrun).

``pretraining`` composes the Trainer (train/trainer.py) from the config: the token loader as batch
source, ``LMObjective`` (cross-entropy + z-loss, through the chunked head when
``trainer.loss_chunk_tokens`` > 0), and the standard callbacks (train/setup.py).
"""

from __future__ import annotations

from pathlib import Path

from glasslm import artifacts
from glasslm.config import from_dict, to_dict
from glasslm.data.loader import TokenLoader
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.olmo2 import ModelConfig
from glasslm.train import distributed
from glasslm.train.batches import TokenBatches
from glasslm.train.config import TrainConfig
from glasslm.train.objective import LMObjective
from glasslm.train.setup import batching, build_parts, start_run
from glasslm.train.trainer import RunResult, Trainer


def train(config: TrainConfig, out: Path, resume: str = "never") -> RunResult:
    """Train (or resume) the run at ``out``. ``resume``: "never", "auto", or a checkpoint path."""
    world = distributed.init(config.distributed, config.trainer.device)
    try:
        return pretraining(config, Path(out), world, resume).run()
    finally:
        distributed.shutdown(world)


def tokenizer_of_tokens(tokens_dir: Path) -> Path | None:
    """The tokenizer.json the tokens were made with, if the tokens manifest names it."""
    tokenizer = artifacts.input_of_kind(tokens_dir, "tokenizer")
    if tokenizer is not None and (tokenizer / model_ckpt.TOKENIZER).is_file():
        return tokenizer / model_ckpt.TOKENIZER
    return None


def pretraining(config: TrainConfig, out: Path, world: distributed.World, resume: str) -> Trainer:
    tc, lc = config.trainer, config.data.loader
    tokens_dir = artifacts.find_artifact(config.data.tokens, "tokens")
    loader = TokenLoader(tokens_dir, lc, rank=world.rank, world_size=world.world_size)
    batch = batching(lc, tc, world)
    start = start_run(
        config, out, world, resume, loader.vocab_size, f"the tokens in {tokens_dir}", lc.seq_len
    )
    config = _resolve(config, start.model_config, tokens_dir)
    parts = build_parts(
        config, start, out, world, batch=batch, seq_len=lc.seq_len,
        hidden_states=tc.loss_chunk_tokens > 0, data_inputs=[artifacts.input_ref(tokens_dir)],
        tokenizer=start.init_tokenizer or tokenizer_of_tokens(tokens_dir), heldout_tokens=tokens_dir,
        stage="pretrain",
    )  # fmt: skip
    batches = TokenBatches(loader, batch.local_batch, batch.micro_batch, world.device)
    objective = LMObjective(config.trainer.z_loss, config.trainer.loss_chunk_tokens)
    return Trainer(
        parts.model,
        parts.optimizer,
        parts.schedule,
        objective,
        batches,
        parts.callbacks,
        parts.run,
        parts.state,
    )


def _resolve(config: TrainConfig, built: ModelConfig, tokens_dir: Path) -> TrainConfig:
    """The config as run: model fields filled in from the model actually built, the tokens path made absolute."""
    data = to_dict(config)
    if config.model.init_from is None:
        # Fill in what the preset and the tokens decided; keys the user set stay as set, so a
        # resume with a different architecture is caught by setup's resumability check.
        data["model"].update({k: v for k, v in to_dict(built).items() if data["model"].get(k) is None})
    data["data"]["tokens"] = str(tokens_dir.resolve())
    return from_dict(TrainConfig, data)
