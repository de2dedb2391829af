"""``glasslm adapt rl``: GRPO with verifiable rewards, sampling through the generation engine.

Each step takes ``global_batch_size / group_size`` training prompts (seeded order, as every adaptation
batch), samples ``group_size`` completions per prompt with ``model/generate.py``'s engine from the
current policy (temperature ``rl.temperature``; each completion has its own seed derived from
(seed, step, rank, index), so a resumed run samples exactly what an uninterrupted one would), scores
them with the prompt's verifiable reward (``adapt/rewards.py``), turns rewards into group-normalised
advantages (groups whose rewards are all equal leave the batch, ``rl.filter_flat_groups``) and takes
``rl.ppo_epochs`` optimizer steps (default 1) on the clipped, token-level GRPO
loss (``adapt/rl.py``): the batch source (``RolloutBatches``) samples and scores, the objective
(``GRPOObjective``) computes the loss, with the reference model when ``rl.kl_coef > 0``. π_old is the policy that sampled: its log-probs are one no-grad forward before
the first update, kept for the later epochs, where the ratio leaves 1 and the clip binds. With
``rl.kl_coef > 0`` a frozen copy of the initial model gives the reference log-probs. Every sampled
completion, with its reward and advantage, goes to ``RUN/rollouts.jsonl`` (``rl.save_rollouts``).

Before and after training, ``pass_at_1`` is measured on the held-out prompts (greedy decoding, one
completion each, reward 1 = solved), overall, per reward type and per builder task family, and
``reward_sampled``: the mean reward of ``rl.eval_samples`` completions per prompt sampled as in training.
Both are kept per prompt, so the run also reports the *paired* change (mean per-prompt difference and
its standard error), the figure that says whether a gain is beyond noise.

Generation on an FSDP-sharded model would need every rank to decode in lock step; RL runs on one
process or under DDP (``distributed.strategy`` none or ddp).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from glasslm.adapt.base import (
    AdaptConfig,
    AdaptData,
    Stage,
    StageContext,
    StageParts,
    StepItems,
    adapt_trainer,
    add_input,
    data_ref,
    split_micro,
    step_items,
)
from glasslm.adapt.builders import TASK_FAMILIES, family_of, find_data_file
from glasslm.adapt.dpo import token_logprobs
from glasslm.adapt.formats import RLTask, load_rl, load_sft
from glasslm.adapt.rewards import reward_for
from glasslm.adapt.rl import (
    AGGREGATIONS,
    figure_weights,
    group_advantages,
    grpo_token_terms,
    paired_change,
    signal_groups,
    step_count,
    token_advantages,
    token_weights,
)
from glasslm.adapt.sft import IGNORE, Example, sft_loss, tokenize_whole
from glasslm.config import ConfigError
from glasslm.data.documents import Quarantine
from glasslm.model import checkpoint as model_ckpt
from glasslm.model.generate import FINISH_STOP, generate_batch
from glasslm.model.olmo2 import OLMo2
from glasslm.tokenizer import Tokenizer
from glasslm.train import distributed
from glasslm.train.batches import StepBatch
from glasslm.train.callbacks import Callback, log
from glasslm.train.metrics import truncate_metrics
from glasslm.train.train_model import Micro, TrainModel
from glasslm.train.trainer import Trainer

if TYPE_CHECKING:
    from glasslm.model.generate import SamplingParams

STAGE = Stage("rl", "rl_train.jsonl", "rl_heldout.jsonl", headline=("pass_at_1", "reward_sampled"))


@dataclass
class RLOptions:
    group_size: int = 4  # completions per prompt (GRPO's G)
    temperature: float = 1.0  # sample from π itself, so π_old is the distribution that sampled
    top_p: float = 1.0
    max_new_tokens: int = 32
    clip_eps: float = 0.2
    # β of the k3 KL term to the initial model (the stage before's policy), open-instruct's GRPO default.
    # With 0 (no reference model at all) GRPO on short answers collapsed every reply to one token (#17);
    # the per-token KL is in every metrics row (``kl``).
    kl_coef: float = 0.05
    adv_eps: float = 1e-6
    eval_max_new_tokens: int = 32
    # Held-out completions sampled per prompt (at rl.temperature, fixed seeds) for ``reward_sampled``,
    # the expected reward GRPO maximises, measured on prompts it never trained on; 0: greedy only.
    eval_samples: int = 4
    engine_batch: int = 64  # sequences the engine decodes at once
    # Optimizer steps on each rollout batch (PPO's epochs). 1 is on-policy GRPO, where ρ = 1 and the
    # clip never binds; more reuse the costly samples, and the clip keeps the later steps near π_old.
    ppo_epochs: int = 1
    # Train only on prompts of these builder families (adapt/builders.py: arithmetic, reverse, …);
    # empty: all. Held-out pass@1 is still measured on every family, so transfer (or harm) shows.
    train_families: list[str] = field(default_factory=list)
    # Drop the completions of groups whose rewards are all equal (advantage 0 everywhere) before the
    # update, as DAPO's dynamic sampling does: they add no gradient but count in the token-level mean,
    # so keeping them shrinks the step whenever few groups carry signal (and costs their backward).
    filter_flat_groups: bool = True
    # Chat data mixed into every update (InstructGPT's PPO-ptx, Ouyang et al. 2022): ``sft_per_step``
    # conversations of the adapt_data artifact's sft.jsonl ride in each step's batch and add
    # ``sft_coef`` × their assistant-token cross-entropy (mean per token) to the GRPO loss, so rewards
    # on short verifiable answers do not unteach chat (#17). 0: off.
    sft_coef: float = 0.0
    sft_per_step: int = 16
    # Mixed-in conversations longer than this many tokens are left out, never cut: at the rollouts'
    # data.loader.seq_len (96 in tiny) a quarter of sft.jsonl was cut mid-reply, which taught the
    # policy that replies run on, and the chat suite's end-of-turn rate fell by up to 0.11 (#17).
    sft_max_len: int = 256
    # The reward of a rollout that hits ``max_new_tokens`` without ending its turn, in place of its
    # verifiable reward (open-instruct's non_stop_penalty with non_stop_penalty_value): each group then
    # prefers the completions that answer *and* stop. None: off, the verifier alone scores. On the tiny
    # recipe 0 did not keep the chat suite's end-of-turn rate up (#17, docs/adaptation.md), so it is off.
    non_stop_reward: float | None = None
    # False: the end-of-turn token of a completion with a negative advantage takes no policy-gradient
    # term (its KL term stays), so a wrong answer is pushed away from what it said but not from ending
    # its turn; positive advantages still teach ending. On tiny the rewarded completions are
    # "… The answer is X." and many wrong ones end after one doc-like sentence, so GRPO taught "do not
    # stop after one sentence", and greedy chat replies ran on (docs/adaptation.md). True: plain GRPO.
    penalise_end_of_turn: bool = True
    # RUN/rollouts.jsonl: every sampled completion with its prompt, reward, advantage and whether it
    # ended its turn and was trained on, one line each (open-instruct's --save_traces), so an auditor
    # can read what GRPO rewarded at any step. About 0.3 kB a completion.
    save_rollouts: bool = True
    # How the per-token loss is averaged: token (DAPO, open-instruct's default), sequence (the GRPO paper:
    # per completion, then over completions) or constant (Dr. GRPO: sum / (completions × max_new_tokens));
    # adapt/rl.py. TRL calls these loss_type dapo / grpo / dr_grpo.
    loss_aggregation: str = "token"
    # False: advantages are r − mean, without GRPO's division by the group's standard deviation (Dr. GRPO).
    scale_rewards: bool = True


@dataclass
class RLConfig(AdaptConfig):
    rl: RLOptions = field(default_factory=RLOptions)

    def validate(self) -> None:
        super().validate()
        if self.rl.group_size < 2:
            raise ConfigError(
                f"rl.group_size must be >= 2 (GRPO compares completions of one prompt), got {self.rl.group_size}"
            )
        if self.data.loader.global_batch_size % self.rl.group_size:
            raise ConfigError(
                f"data.loader.global_batch_size ({self.data.loader.global_batch_size}) counts completions "
                f"and must be a multiple of rl.group_size ({self.rl.group_size})"
            )
        if self.rl.eval_samples < 0:
            raise ConfigError(f"rl.eval_samples must be >= 0, got {self.rl.eval_samples}")
        if self.rl.sft_coef < 0 or self.rl.sft_per_step < 1 or self.rl.sft_max_len < 2:
            raise ConfigError("rl.sft_coef must be >= 0, rl.sft_per_step >= 1 and rl.sft_max_len >= 2")
        if self.rl.loss_aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"rl.loss_aggregation: {self.rl.loss_aggregation!r} is not one of {list(AGGREGATIONS)}"
            )
        if self.rl.ppo_epochs < 1:
            raise ConfigError(f"rl.ppo_epochs must be >= 1, got {self.rl.ppo_epochs}")
        unknown = sorted(set(self.rl.train_families) - {*TASK_FAMILIES, "other"})
        if unknown:
            raise ConfigError(
                f"rl.train_families: unknown families {unknown}; choose from {[*TASK_FAMILIES, 'other']}"
            )
        if self.distributed.strategy == "fsdp":
            raise ConfigError(
                "adapt rl samples on each rank independently: use distributed.strategy none or ddp"
            )


def _params(options: RLOptions, seed: int | None, greedy: bool = False) -> SamplingParams:
    from glasslm.model.generate import SamplingParams

    if greedy:
        return SamplingParams(max_new_tokens=options.eval_max_new_tokens, temperature=0.0)
    return SamplingParams(max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                          top_p=options.top_p, seed=seed)  # fmt: skip


def rl_trainer(
    config: RLConfig, out: Path, world: distributed.World, resume: str, callbacks: Sequence[Callback] = ()
) -> Trainer:
    """The GRPO run's Trainer; ``callbacks`` (e.g. more before/after evaluations) run after the stage's own."""
    return adapt_trainer(STAGE, config, out, world, resume, RLData, callbacks)


class RLData:
    """Training prompts (those that leave room for a completion, of ``rl.train_families``) and held-out ones."""

    def __init__(self, config: RLConfig, data: AdaptData, world: distributed.World):
        self.config, self.data, self.world = config, data, world
        self.quarantine = Quarantine()
        room = config.data.loader.seq_len - config.rl.max_new_tokens
        tasks = load_rl(data.train_path, self.quarantine)
        self.tasks = [t for t in tasks if len(prompt_ids(data.tok, t)) < room]
        if config.rl.train_families:
            self.tasks = [t for t in self.tasks if _family(t) in config.rl.train_families]
        if not tasks:
            first = self.quarantine.records[0] if self.quarantine.records else None
            raise ConfigError(
                f"{data.train_path}: no usable RL task"
                + (
                    f": all {self.quarantine.total} lines were quarantined (line {first['line']}: {first['reason']});"
                    " RL needs prompts with a 'ground_truth' and a 'dataset' (open-instruct's RLVR format)"
                    if first
                    else ""
                )
            )
        if not self.tasks:
            raise ConfigError(
                f"{data.train_path}: no usable prompt shorter than data.loader.seq_len - rl.max_new_tokens"
                + (f" in rl.train_families {config.rl.train_families}" if config.rl.train_families else "")
            )
        held = load_rl(data.heldout_path, self.quarantine) if data.heldout_path else []
        self.heldout = held[: config.data.eval_limit]
        self.chat: list[Example] = []
        if config.rl.sft_coef > 0:
            if Path(config.data.path).is_file():
                raise ConfigError("rl.sft_coef > 0 mixes in the adapt_data artifact's sft.jsonl: give data.path "
                                  "as an adapt_data artifact, not a JSONL file")  # fmt: skip
            chat_file = find_data_file(config.data.path, "sft.jsonl")
            self.chat, left_out = tokenize_whole(
                data.tok, load_sft(chat_file, self.quarantine), config.rl.sft_max_len
            )
            if not self.chat:
                raise ConfigError(
                    f"{chat_file}: no conversation fits rl.sft_max_len ({config.rl.sft_max_len} tokens)"
                )
            if world.is_main:
                print(f"rl: {len(self.chat)} conversations of {chat_file.name} mixed in "
                      f"({left_out} longer than rl.sft_max_len {config.rl.sft_max_len} left out)")  # fmt: skip
            add_input(self.data.inputs, data_ref(chat_file))
        loader = config.data.loader
        prompts_per_step = loader.global_batch_size // config.rl.group_size
        self.items = StepItems(len(self.tasks), prompts_per_step, loader, world, data.data_sha256)

    def parts(self, ctx: StageContext) -> StageParts:
        batches = RolloutBatches(
            ctx.model, self.data.tok, self.tasks, self.items, self.config.rl, ctx.micro_batch, self.chat
        )
        if self.config.rl.save_rollouts:
            batches.log = RolloutLog(ctx.out / ROLLOUTS, self.world)
        spare = None if self.config.rl.penalise_end_of_turn else self.data.tok.eos_id
        objective = GRPOObjective(self.config.rl, self.config.model.init_from or "", self.world.device, spare)
        return StageParts(objective, batches, RLEval(self.heldout, self.config.rl))


def prompt_ids(tok: Tokenizer, task: RLTask) -> list[int]:
    return tok.encode_chat(task.messages, add_generation_prompt=True)


# ------------------------------------------------------------ rollouts


ROLLOUTS = "rollouts.jsonl"


class RolloutLog:
    """``RUN/rollouts.jsonl``, written by rank 0 with every rank's completions, one step at a time.
    Its first write cuts the file back to the steps before (a resumed run samples them again, the
    same; a half-written line from a kill goes too), as ``metrics.jsonl`` is."""

    def __init__(self, path: Path, world: distributed.World):
        self.path, self.world = path, world
        self.started = False

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        gathered = distributed.gather_objects(rows, self.world)
        if gathered is None:
            return
        if not self.started:
            truncate_metrics(self.path, step - 1)
            self.started = True
        with open(self.path, "a", encoding="utf-8") as f:
            for rank, part in enumerate(gathered):
                for row in cast("list[dict[str, Any]]", part):
                    f.write(json.dumps({"step": step, "rank": rank, **row}) + "\n")


# Below this share of a step's rollouts ending their turn within rl.max_new_tokens, the run says so
# (once): tiny's rollouts ended 0.80-0.93 per step at 32 tokens, which drifted, and 0.94-1.0 at 48.
CUT_WARNING = 0.9


class RolloutBatches:
    """Each step: ``group_size`` completions per prompt sampled from the current policy, scored,
    turned into group advantages, with π_old's token log-probs; ``rl.ppo_epochs`` updates on them."""

    def __init__(
        self,
        model: TrainModel,
        tok: Tokenizer,
        tasks: list[RLTask],
        items: StepItems,
        rc: RLOptions,
        micro: int,
        chat: list[Example] | None = None,
    ):
        self.chat = chat or []
        self.warned_cut = False
        self.log: RolloutLog | None = None
        self.model, self.tok, self.tasks, self.items, self.rc, self.micro_batch = (
            model,
            tok,
            tasks,
            items,
            rc,
            micro,
        )

    def position(self, step: int) -> dict[str, Any]:
        return self.items.position(step)

    def _rollouts(
        self, step: int
    ) -> tuple[list[list[int]], list[int], torch.Tensor, dict[str, float], list[dict[str, Any]]]:
        rc, seed, rank = self.rc, self.items.loader.seed, self.model.world.rank
        tasks = [self.tasks[i] for i in self.items.local(step)]
        prompts, params = [], []
        for j, task in enumerate(tasks):
            ids = prompt_ids(self.tok, task)
            for g in range(rc.group_size):
                prompts.append(ids)
                # Distinct per (seed, step, rank, completion); large primes keep the streams apart.
                params.append(
                    _params(rc, seed * 1_000_003 + step * 7919 + rank * 104_729 + j * rc.group_size + g)
                )
        outs = generate_batch(self.model.module, self.tok, prompts, params, max_batch=rc.engine_batch)
        rewards, rows, prompt_lens, records = [], [], [], []
        ended_turns = [o.finish_reason == FINISH_STOP for o in outs]
        for k, (out, ended) in enumerate(zip(outs, ended_turns, strict=True)):
            task = tasks[k // rc.group_size]
            records.append({"prompt": task.messages[-1]["content"], "ground_truth": task.ground_truth,
                            "completion": out.text, "tokens": len(out.token_ids), "ended": ended})  # fmt: skip
            if not ended and rc.non_stop_reward is not None:
                rewards.append(rc.non_stop_reward)
            else:
                rewards.append(reward_for(task.dataset)(out.text, task.ground_truth))
            completion = list(out.token_ids) + ([self.tok.eos_id] if ended else [])
            rows.append(prompts[k] + completion)
            prompt_lens.append(len(prompts[k]))
        r = torch.tensor(rewards)
        groups = r.view(-1, rc.group_size)
        stats = {
            "reward": float(r.mean()),
            "groups_with_signal": float((groups.std(dim=1) > 0).float().mean()),
            "completion_tokens": sum(len(x) - p for x, p in zip(rows, prompt_lens, strict=True)) / len(rows),
            "ended_turn": sum(ended_turns) / len(outs),
        }
        self._warn_if_cut(stats["ended_turn"])
        return rows, prompt_lens, r, stats, records

    def _warn_if_cut(self, ended_turn: float) -> None:
        # A rollout cut at max_new_tokens gets no reward for an answer that had not arrived and no
        # end-of-turn token to learn: on the tiny recipe, 10% cut drifted the chat suite's end-of-turn
        # rate down, once past its check (README, Adaptation). Said once a run, on stderr.
        if ended_turn < CUT_WARNING and not self.warned_cut:
            self.warned_cut = True
            log(self.model.world, f"warning: only {ended_turn:.0%} of this step's rollouts ended their turn "
                                  f"within rl.max_new_tokens ({self.rc.max_new_tokens}); the rest were cut "
                                  "before their reward and their end of turn: raise rl.max_new_tokens")  # fmt: skip

    def batch(self, step: int) -> StepBatch:
        rc, dev = self.rc, self.model.world.device
        rows, prompt_lens, rewards, stats, records = self._rollouts(step)
        advantages = group_advantages(rewards, rc.group_size, rc.adv_eps, rc.scale_rewards)
        keep = signal_groups(rewards, rc.group_size) if rc.filter_flat_groups else list(range(len(rows)))
        if self.log is not None:
            kept = set(keep)
            self.log.write(step, [{**rec, "reward": float(rewards[i]), "advantage": float(advantages[i]),
                                   "trained": i in kept} for i, rec in enumerate(records)])  # fmt: skip
        rows, prompt_lens = [rows[i] for i in keep], [prompt_lens[i] for i in keep]
        advantages = advantages[keep]
        micros: list[Micro] = []
        for part in split_micro(len(rows), self.micro_batch):
            T = max(len(rows[i]) for i in part) - 1
            input_ids = torch.full((len(part), T), self.tok.pad_id, dtype=torch.long)
            labels = torch.full((len(part), T), IGNORE, dtype=torch.long)
            for r, i in enumerate(part):
                ids, p = rows[i], prompt_lens[i]
                input_ids[r, : len(ids) - 1] = torch.tensor(ids[:-1])
                labels[r, p - 1 : len(ids) - 1] = torch.tensor(ids[p:])
            micro = {"input_ids": input_ids, "labels": labels, "advantages": advantages[list(part)]}
            if self.chat:
                micro = self._with_chat(micro, step, len(micros), -(-len(rows) // self.micro_batch))
            micro = {k: v.to(dev) for k, v in micro.items()}
            micro["old_logp"] = logprobs(self.model, self.model.module, micro)
            micros.append(micro)
        return StepBatch(micros, updates=rc.ppo_epochs, metrics=stats)

    def _with_chat(self, micro: Micro, step: int, index: int, n_micros: int) -> Micro:
        """``micro`` with its share of the step's chat conversations appended as more rows (one
        forward for both): ``labels`` stays GRPO's (IGNORE on chat rows), ``sft_labels`` holds the
        chat targets. The conversations are a pure function of (seed, step, rank), as every batch."""
        loader = self.items.loader
        per_rank = max(1, self.rc.sft_per_step // self.model.world.world_size)
        picked = step_items(len(self.chat), loader.seed + 1, step, per_rank * self.model.world.world_size)
        mine = picked[self.model.world.rank * per_rank : (self.model.world.rank + 1) * per_rank]
        share = [self.chat[i] for i in mine[index::n_micros]]
        if not share:
            return micro
        B, T = micro["input_ids"].shape
        T = max(T, *(len(ex.input_ids) for ex in share))
        rows = B + len(share)
        input_ids = torch.full((rows, T), self.tok.pad_id, dtype=torch.long)
        labels = torch.full((rows, T), IGNORE, dtype=torch.long)
        sft_labels = torch.full((rows, T), IGNORE, dtype=torch.long)
        width = micro["input_ids"].shape[1]
        input_ids[:B, :width], labels[:B, :width] = micro["input_ids"], micro["labels"]
        for r, ex in enumerate(share, start=B):
            input_ids[r, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
            sft_labels[r, : len(ex.labels)] = torch.tensor(ex.labels)
        advantages = torch.cat([micro["advantages"], torch.zeros(len(share))])
        return {"input_ids": input_ids, "labels": labels, "advantages": advantages, "sft_labels": sft_labels}


@torch.no_grad()
def logprobs(model: TrainModel, module: torch.nn.Module, micro: Micro) -> torch.Tensor:
    """Token log-probs of ``micro``'s labels under ``module`` (π_old, or the reference), no gradient."""
    with model.autocast():
        logits = module(micro["input_ids"])
    return token_logprobs(logits, micro["labels"])


class GRPOObjective:
    """The clipped, token-level GRPO loss summed over response tokens (the step divides by them);
    with ``rl.kl_coef > 0`` plus the KL to a frozen copy of the initial model, loaded when first needed.
    ``spare``: the end-of-turn id that takes no negative advantage (``rl.penalise_end_of_turn: false``)."""

    def __init__(self, rc: RLOptions, init_from: str, device: torch.device, spare: int | None = None):
        self.rc, self.init_from, self.device, self.spare = rc, init_from, device, spare
        self.reference: OLMo2 | None = None

    def count(self, micro: Micro) -> int:
        return int(step_count(micro["labels"] != IGNORE, self.rc.loss_aggregation))

    def _reference(self) -> OLMo2:
        if self.reference is None:
            loaded = model_ckpt.load_model(self.init_from, device=self.device)
            self.reference = loaded.model.eval().requires_grad_(False)
        return self.reference

    def loss(self, model: TrainModel, micro: Micro) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rc = self.rc
        ref_logp = logprobs(model, self._reference(), micro) if rc.kl_coef > 0 else None
        mask = micro["labels"] != IGNORE
        weights = token_weights(mask, rc.loss_aggregation, rc.max_new_tokens)
        shown = figure_weights(mask, rc.loss_aggregation)
        logits = model.forward(micro)
        logp = token_logprobs(logits, micro["labels"])
        advantages = token_advantages(micro["advantages"], micro["labels"], self.spare)
        terms = grpo_token_terms(logp, micro["old_logp"], advantages, rc.clip_eps, rc.kl_coef, ref_logp)
        objective = (terms.loss * weights).sum()
        out = {"loss": objective, "kl": (terms.kl.detach() * shown).sum(),
               "clip_fraction": (terms.clipped * shown).sum(), "ratio": (terms.ratio * shown).sum()}  # fmt: skip
        if "sft_labels" in micro:
            # The step divides by its count (GRPO tokens or completions): weigh the chat mean by this
            # micro's share of it.
            n_chat = (micro["sft_labels"] != IGNORE).sum().clamp(min=1)
            chat_ce = (
                sft_loss(logits, micro["sft_labels"], "sum") / n_chat * step_count(mask, rc.loss_aggregation)
            )
            objective = objective + rc.sft_coef * chat_ce
            out.update(loss=objective, chat_ce=chat_ce.detach())
        return objective, out


# ------------------------------------------------------------ pass@1


class RLEval:
    """Greedy pass@1 and sampled reward on the held-out prompts, and their paired before/after change."""

    def __init__(self, heldout: list[RLTask], rc: RLOptions):
        self.heldout, self.rc = heldout, rc
        self.families = [_family(t) for t in heldout]  # builder family of each held-out prompt

    @torch.no_grad()
    def evaluate(self, model: OLMo2, tokenizer: Tokenizer) -> dict[str, Any]:
        """Greedy pass@1 and sampled reward on the held-out prompts: overall, per reward type (pass@1),
        per family, over the trained families (``*_trained``, when ``rl.train_families`` is set), and
        per prompt (``per_prompt``, for the paired before/after comparison; kept out of the manifest)."""
        if not self.heldout:
            return {}
        rc = self.rc
        prompts = [prompt_ids(tokenizer, t) for t in self.heldout]
        outs = generate_batch(
            model, tokenizer, prompts, _params(rc, None, greedy=True), max_batch=rc.engine_batch
        )
        greedy = [
            reward_for(t.dataset)(o.text, t.ground_truth) for t, o in zip(self.heldout, outs, strict=True)
        ]
        result: dict[str, Any] = {
            "heldout_prompts": len(greedy),
            **self._breakdown("pass_at_1", greedy),
            **_means_by("pass_at_1_", [t.dataset for t in self.heldout], greedy),
        }
        per_prompt = {"pass_at_1": greedy}
        if rc.eval_samples:
            sampled = self._sampled_reward(model, tokenizer, prompts)
            result.update(self._breakdown("reward_sampled", sampled))
            per_prompt["reward_sampled"] = sampled
        return {**result, "per_prompt": per_prompt}

    def _breakdown(self, name: str, scores: list[float]) -> dict[str, float]:
        """``name`` overall, per family and over the trained families, from per-prompt scores."""
        families = self.families
        out = {name: _mean(scores)}
        trained = self.rc.train_families
        if trained:
            out[f"{name}_trained"] = _mean([s for f, s in zip(families, scores, strict=True) if f in trained])
        return {**out, **_means_by(f"{name}_family_", families, scores)}

    def _sampled_reward(self, model: OLMo2, tokenizer: Tokenizer, prompts: list[list[int]]) -> list[float]:
        """Per held-out prompt, the mean reward of ``rl.eval_samples`` completions sampled as in
        training: the expected reward GRPO maximises, on prompts it never trained on. The seeds depend
        only on the prompt's index, so before and after draw from the same random streams."""
        rc = self.rc
        k = rc.eval_samples
        params = [_params(rc, 2_000_003 + i * k + j) for i in range(len(prompts)) for j in range(k)]
        outs = generate_batch(
            model, tokenizer, [p for p in prompts for _ in range(k)], params, max_batch=rc.engine_batch
        )
        scores = [reward_for(self.heldout[n // k].dataset)(o.text, self.heldout[n // k].ground_truth)
                  for n, o in enumerate(outs)]  # fmt: skip
        return [_mean(scores[i * k : (i + 1) * k]) for i in range(len(prompts))]

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """Paired changes over the same held-out prompts: for each per-prompt figure the mean change
        and its standard error (the spread of per-prompt differences / √n), overall and over the
        trained families; for greedy pass@1 also how many prompts were gained and lost."""
        b, a = before.get("per_prompt", {}), after.get("per_prompt", {})
        families = self.families
        trained = self.rc.train_families
        out: dict[str, Any] = {}
        for name in ("pass_at_1", "reward_sampled"):
            if name not in b or name not in a or not len(b[name]) == len(a[name]) == len(families):
                continue
            diffs = [y - x for x, y in zip(b[name], a[name], strict=True)]
            out.update(paired_change(f"{name}_change", diffs))
            if trained:
                in_trained = [d for d, f in zip(diffs, families, strict=True) if f in trained]
                out.update(paired_change(f"{name}_trained_change", in_trained))
            if name == "pass_at_1":
                out["pass_at_1_gained"] = sum(d > 0 for d in diffs)
                out["pass_at_1_lost"] = sum(d < 0 for d in diffs)
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _means_by(prefix: str, keys: list[str], scores: list[float]) -> dict[str, float]:
    """``prefix + key`` -> the mean of the scores with that key, for every key (sorted)."""
    return {
        f"{prefix}{k}": _mean([s for kk, s in zip(keys, scores, strict=True) if kk == k])
        for k in sorted(set(keys))
    }


def _family(task: RLTask) -> str:
    return family_of(task.messages[-1]["content"])
