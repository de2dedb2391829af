"""Verifiable rewards: a registry of functions ``(completion, ground_truth) -> float`` in [0, 1].

RL with verifiable rewards (Lambert et al., 2024, Tülu 3) scores a sampled completion by checking
its answer, not with a learned reward model. An RLVR example names its checker in ``dataset`` (as in
open-instruct); :func:`reward_for` resolves that name, also through the aliases below.

Every checker first takes the *answer* out of the completion (:func:`extract_answer`): the text after
the last "answer:" / "the answer is" when there is one, else the whole completion, so a model that
explains itself before answering is not penalised for it.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable

RewardFn = Callable[[str, str], float]
REWARDS: dict[str, RewardFn] = {}
# open-instruct names its RLVR sets by source; map the ones whose checker we have.
ALIASES = {"gsm8k": "numeric", "math": "numeric", "arithmetic": "numeric", "squad": "exact_match"}

_EOS_MARKERS = ("<|endoftext|>", "<|im_end|>", "</s>")
_ANSWER_RE = re.compile(r"(?:answer\s*(?:is|:)|####)\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward '{name}' is registered twice")
        REWARDS[name] = fn
        return fn

    return wrap


def reward_for(name: str) -> RewardFn:
    key = ALIASES.get(name.lower(), name)
    if key not in REWARDS:
        known = ", ".join(sorted([*REWARDS, *ALIASES]))
        raise KeyError(f"no verifiable reward named '{name}' (known: {known})")
    return REWARDS[key]


def strip_eos(text: str) -> str:
    for marker in _EOS_MARKERS:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text


def extract_answer(completion: str) -> str:
    """The answer part of a completion: after the last 'answer:'/'answer is'/'####', else all of it."""
    text = strip_eos(completion)
    matches = list(_ANSWER_RE.finditer(text))
    if matches:
        text = text[matches[-1].end() :]
        text = text.split("\n", 1)[0]  # the answer is the rest of that line
    return text.strip()


def normalize_text(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    found = _NUMBER_RE.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@register("exact_match")
def exact_match(completion: str, ground_truth: str) -> float:
    """1 when the extracted answer equals the ground truth after SQuAD normalisation."""
    return float(normalize_text(extract_answer(completion)) == normalize_text(ground_truth))


@register("string_equal")
def string_equal(completion: str, ground_truth: str) -> float:
    """1 when the extracted answer equals the ground truth exactly (case and punctuation matter:
    the checker for string manipulation, where upper-casing or reversing *is* the task)."""
    answer = extract_answer(completion).strip()
    # A trailing full stop is the one decoration we forgive, unless the truth ends with one too.
    if answer.endswith(".") and not ground_truth.endswith("."):
        answer = answer[:-1].rstrip()
    return float(answer == ground_truth.strip())


@register("numeric")
def numeric(completion: str, ground_truth: str) -> float:
    """1 when the last number of the extracted answer equals the ground truth's number."""
    truth = parse_number(ground_truth)
    got = parse_number(extract_answer(completion))
    if truth is None or got is None:
        return 0.0
    return float(math.isclose(got, truth, rel_tol=1e-6, abs_tol=1e-9))
