"""One chat suite: the same held-out conversations, the same figures, for every adaptation stage.

A stage that helps its own skill can break chat (Tülu 3 and open-instruct evaluate every stage on one
whole suite for that reason). Each stage measures, before and after it trains, on the held-out
conversations that ``glasslm adapt data`` writes (``chat_heldout.jsonl``, never trained on):

- ``assistant_loss``: cross-entropy of the reference answers given the question (nats per token,
  the answer's tokens and the end-of-turn token that closes it), and ``assistant_bpb``: the same sum
  in bits per UTF-8 byte of the reference text, comparable across tokenizers;
- ``end_of_turn_rate``: share of greedy replies that say something and then emit end-of-turn within
  ``max_new_tokens``;
- ``length_ratio_median``: median of reply tokens / reference tokens, and ``short_reply_share``:
  share of replies shorter than ``SHORT_REPLY_TOKENS`` tokens (a collapsed model answers "s");
- ``chrf``: corpus chrF (Popović 2015) of the replies against the references, from ``sacrebleu``
  with its default settings (character 6-grams, β = 2), which needs no network;

plus the stage's own figure (DPO reward accuracy, RL pass@1) through the ``stage_metrics`` hook.

:func:`check_regressions` compares a stage's figures with the stage before it: a change for the worse
beyond a tolerance is a :class:`Regression`; :func:`enforce` raises :class:`ChatRegressionError`, which
names the metric, both values and the tolerance, unless the config lists the metric as accepted.
Everything is greedy, so the same model gives the same figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from glasslm.config import ConfigError
from glasslm.model.olmo2 import OLMo2

CHAT_SUITE = "chat_suite"  # the key of a stage's record in its manifest metrics
SHORT_REPLY_TOKENS = 3

Messages = list[dict[str, str]]


@dataclass
class Tolerances:
    """How much worse than the stage before a figure may get; ``accept``: metrics whose regression
    the config accepts (the stage passes, and the regression is recorded as accepted)."""

    assistant_loss: float = 0.05  # nats/token, higher is worse
    end_of_turn_rate: float = 0.05  # lower is worse
    short_reply_share: float = 0.05  # higher is worse
    # The median reply/reference length ratio must lie in [low, high]; a stage that moves it outside,
    # or further outside, regresses (#17: RL shortened replies to half the reference's length).
    length_ratio_band: list[float] = field(default_factory=lambda: [0.5, 2.0])
    accept: list[str] = field(default_factory=list)

    def validate(self) -> None:
        unknown = sorted(set(self.accept) - set(ACCEPTABLE))
        if unknown:
            raise ConfigError(
                f"chat_suite.tolerances.accept: unknown metrics {unknown}; choose from {list(ACCEPTABLE)}"
            )
        for name in CHECKED:
            if getattr(self, name) < 0:
                raise ConfigError(f"chat_suite.tolerances.{name} must be >= 0, got {getattr(self, name)}")
        band = self.length_ratio_band
        if len(band) != 2 or not 0 < band[0] <= 1 <= band[1]:
            raise ConfigError(
                f"chat_suite.tolerances.length_ratio_band must be [low, high] with 0 < low <= 1 <= high, got {band}"
            )


# metric -> +1 when higher is worse, -1 when lower is worse
CHECKED: dict[str, int] = {"assistant_loss": +1, "end_of_turn_rate": -1, "short_reply_share": +1}
BAND = "length_ratio_median"  # checked against a band, not the stage before's value plus a tolerance
ACCEPTABLE = (*CHECKED, BAND)


@dataclass
class ChatSuiteConfig:
    enabled: bool = True
    max_new_tokens: int = 128  # reply cap: the references' median is ~60 tokens on the tiny tokenizer
    limit: int = 0  # conversations measured (0: all of them)
    batch: int = 64  # replies decoded at once
    tolerances: Tolerances = field(default_factory=Tolerances)
    # Held-out conversations (SFT JSONL); None: the adapt_data artifact's chat_heldout.jsonl.
    conversations: str | None = None
    # Compare with the stage before and fail on a regression; None: every stage but SFT (the baseline).
    check: bool | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch < 1 or self.limit < 0:
            raise ConfigError(
                "chat_suite.max_new_tokens and chat_suite.batch must be >= 1, chat_suite.limit >= 0"
            )
        self.tolerances.validate()


@dataclass
class Reply:
    question: str
    reference: str
    reply: str
    reply_tokens: int
    reference_tokens: int
    ended: bool  # said something, then end-of-turn


@dataclass
class ChatResult:
    metrics: dict[str, float]
    replies: list[Reply]
    stage_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "stage_metrics": self.stage_metrics,
                "replies": [asdict(r) for r in self.replies]}  # fmt: skip


# --------------------------------------------------------------------------- data


def load_conversations(path: str | Path, limit: int = 0) -> list[Messages]:
    """Held-out conversations (SFT format, ending with the reference answer); a bad line is an error
    here, not a quarantine: a suite that silently measures fewer conversations would mislead."""
    from glasslm.adapt.formats import load_sft
    from glasslm.data.documents import Quarantine

    quarantine = Quarantine()
    conversations = load_sft(path, quarantine)
    if quarantine.total:
        raise ConfigError(
            f"{path}: {quarantine.total} unusable held-out conversations ({dict(quarantine.counts)})"
        )
    bad = [i + 1 for i, c in enumerate(conversations) if c[-1]["role"] != "assistant"]
    if bad:
        raise ConfigError(f"{path}: line(s) {bad[:5]} do not end with the reference (assistant) answer")
    if not conversations:
        raise ConfigError(f"{path}: no held-out conversations")
    return conversations[:limit] if limit else conversations


def split(conversation: Messages) -> tuple[Messages, str]:
    """(the turns before the reference, the reference answer)."""
    return conversation[:-1], conversation[-1]["content"]


# --------------------------------------------------------------------------- metrics


def chrf(replies: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) with sacrebleu's defaults."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(replies), [list(references)]).score)


def length_figures(reply_tokens: Sequence[int], reference_tokens: Sequence[int]) -> dict[str, float]:
    """Median reply/reference length ratio and the share of replies under ``SHORT_REPLY_TOKENS``."""
    ratios = [r / max(ref, 1) for r, ref in zip(reply_tokens, reference_tokens, strict=True)]
    return {
        "length_ratio_median": float(statistics.median(ratios)),
        "short_reply_share": sum(r < SHORT_REPLY_TOKENS for r in reply_tokens) / len(reply_tokens),
    }


@torch.no_grad()
def assistant_loss(model: OLMo2, tokenizer: Any, conversations: Sequence[Messages]) -> dict[str, float]:
    """Reference-answer cross-entropy: nats per token and bits per byte of the reference text."""
    from glasslm.adapt.sft import sft_loss, tokenize_conversation
    from glasslm.model.modes import eval_mode

    device = next(model.parameters()).device
    max_len = model.config.max_seq_len
    nats, tokens, n_bytes = 0.0, 0, 0
    with eval_mode(model):
        for conv in conversations:
            ex = tokenize_conversation(tokenizer, conv, max_len, first_trained=len(conv) - 1)
            if ex is None:
                continue
            logits = model(torch.tensor([ex.input_ids], device=device))
            labels = torch.tensor([ex.labels], device=device)
            nats += float(sft_loss(logits, labels, "sum"))
            tokens += ex.n_targets
            n_bytes += len(conv[-1]["content"].encode("utf-8"))
    if not tokens:
        raise ConfigError("no held-out reference answer fits the model's context")
    return {"assistant_loss": nats / tokens, "assistant_bpb": nats / math.log(2) / max(n_bytes, 1)}


@torch.no_grad()
def replies(
    model: OLMo2,
    tokenizer: Any,
    conversations: Sequence[Messages],
    max_new_tokens: int,
    batch: int = 64,
) -> list[Reply]:
    """Greedy replies with the generation engine (``model/generate.py``), in eval mode."""
    from glasslm.model.generate import SamplingParams, generate_batch

    prompts = [tokenizer.encode_chat(split(c)[0], add_generation_prompt=True) for c in conversations]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    outs = generate_batch(model, tokenizer, prompts, params, max_batch=batch)
    out = []
    for conv, o in zip(conversations, outs, strict=True):
        question, reference = conv[-2]["content"], conv[-1]["content"]
        out.append(Reply(question=question, reference=reference, reply=o.text, reply_tokens=len(o.token_ids),
                         reference_tokens=len(tokenizer.encode(reference)),
                         ended=o.finish_reason == "stop" and len(o.token_ids) > 0))  # fmt: skip
    return out


def run_chat_suite(
    model: OLMo2,
    tokenizer: Any,
    conversations: Sequence[Messages],
    config: ChatSuiteConfig | None = None,
    stage_metrics: Callable[[], Mapping[str, float]] | None = None,
) -> ChatResult:
    """Every figure of the suite for ``model`` (and the stage's own, from ``stage_metrics``)."""
    config = config or ChatSuiteConfig()
    config.validate()
    conversations = list(conversations)[: config.limit or None]
    if not conversations:
        raise ConfigError("the chat suite needs at least one held-out conversation")
    got = replies(model, tokenizer, conversations, config.max_new_tokens, config.batch)
    metrics = {
        "conversations": float(len(got)),
        **assistant_loss(model, tokenizer, conversations),
        "end_of_turn_rate": sum(r.ended for r in got) / len(got),
        **length_figures([r.reply_tokens for r in got], [r.reference_tokens for r in got]),
        "chrf": chrf([r.reply for r in got], [r.reference for r in got]),
    }
    own = {k: float(v) for k, v in (stage_metrics() if stage_metrics else {}).items()}
    return ChatResult(metrics=metrics, replies=got, stage_metrics=own)


# --------------------------------------------------------------------------- regressions


@dataclass
class Regression:
    metric: str
    before: float  # the stage before's figure
    after: float  # this stage's
    tolerance: float  # for the band metric: 0 (the band is the limit)
    accepted: bool
    band: list[float] | None = None  # [low, high] for the band metric

    @property
    def change(self) -> float:
        return self.after - self.before

    def describe(self) -> str:
        moved = f"{self.metric} went from {self.before:.4f} to {self.after:.4f} ({self.change:+.4f}), "
        if self.band is not None:
            limit = f"outside the band [{self.band[0]:g}, {self.band[1]:g}] (chat_suite.tolerances.length_ratio_band)"
        else:
            worse = "higher" if CHECKED[self.metric] > 0 else "lower"
            limit = f"{worse} by more than the tolerance {self.tolerance:g}"
        return moved + limit + (" (accepted by chat_suite.tolerances.accept)" if self.accepted else "")


class ChatRegressionError(RuntimeError):
    """A stage made a chat-suite figure worse than its tolerance allows, and the config did not accept it."""

    def __init__(self, stage: str, regressions: Sequence[Regression]):
        self.regressions = list(regressions)
        lines = "; ".join(r.describe() for r in self.regressions)
        super().__init__(f"{stage}: chat suite regressed against the stage before: {lines} "
                         "(raise chat_suite.tolerances.<metric> or list it in chat_suite.tolerances.accept)")  # fmt: skip


def band_distance(ratio: float, band: Sequence[float]) -> float:
    """How far ``ratio`` lies outside ``band`` in log space (0 inside), so that twice too long and
    half too short weigh alike."""
    if ratio <= 0:
        return math.inf
    return max(0.0, math.log(band[0] / ratio), math.log(ratio / band[1]))


def check_regressions(
    previous: Mapping[str, float], current: Mapping[str, float], tolerances: Tolerances
) -> list[Regression]:
    """The checked figures that got worse by more than their tolerance (accepted ones flagged)."""
    out = []
    for metric, worse_sign in CHECKED.items():
        if metric not in previous or metric not in current:
            continue
        before, after = float(previous[metric]), float(current[metric])
        tolerance = float(getattr(tolerances, metric))
        # A tiny epsilon: equal figures from two float paths must not fail a zero tolerance.
        if worse_sign * (after - before) > tolerance + 1e-9:
            out.append(Regression(metric, before, after, tolerance, metric in tolerances.accept))
    if BAND in previous and BAND in current:
        before, after = float(previous[BAND]), float(current[BAND])
        band = list(tolerances.length_ratio_band)
        # Blamed only when the stage leaves the band or moves further out of it.
        if band_distance(after, band) > band_distance(before, band) + 1e-9:
            out.append(Regression(BAND, before, after, 0.0, BAND in tolerances.accept, band))
    return out


def failure_of(stage: str, record: Mapping[str, Any]) -> ChatRegressionError | None:
    """The error a stage's manifest record (:func:`stage_record`) stands for, or None if it passed."""
    failing = [Regression(r["metric"], r["before"], r["after"], r["tolerance"], r["accepted"], r.get("band"))
               for r in record.get("regressions", []) if not r.get("accepted")]  # fmt: skip
    return ChatRegressionError(stage, failing) if failing else None


def enforce(stage: str, regressions: Sequence[Regression]) -> None:
    failing = [r for r in regressions if not r.accepted]
    if failing:
        raise ChatRegressionError(stage, failing)


def stage_record(
    before: ChatResult | None,
    after: ChatResult,
    regressions: Sequence[Regression] | None,
    tolerances: Tolerances,
    max_new_tokens: int,
) -> dict[str, Any]:
    """What a stage's manifest keeps (``metrics[CHAT_SUITE]``): figures before and after, the stage's
    own figures, tolerances, the accepted list and every regression; ``checked`` is False for a stage
    that is not compared with one before it (SFT, the baseline)."""
    return {
        "max_new_tokens": max_new_tokens,
        "before": before.metrics if before else None,
        "after": after.metrics,
        "stage_before": before.stage_metrics if before else None,
        "stage_after": after.stage_metrics,
        "checked": regressions is not None,
        "tolerances": {
            **{k: getattr(tolerances, k) for k in CHECKED},
            "length_ratio_band": list(tolerances.length_ratio_band),
        },  # fmt: skip
        "accepted": list(tolerances.accept),
        "regressions": [{**asdict(r), "change": r.change} for r in regressions or []],
        "passed": not any(not r.accepted for r in regressions or []),
    }


def format_figures(metrics: Mapping[str, float]) -> str:
    """One line for a command's output."""
    names = (
        "assistant_loss",
        "assistant_bpb",
        "end_of_turn_rate",
        "length_ratio_median",
        "short_reply_share",
        "chrf",
    )
    return ", ".join(f"{n} {metrics[n]:.3f}" for n in names if n in metrics)
