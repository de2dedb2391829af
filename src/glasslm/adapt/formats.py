"""Adaptation data formats (Tülu 3 / open-instruct) and loaders that validate user JSONL.

- SFT: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, …]}`` with at least one
  assistant turn.
- DPO: ``{"prompt": messages, "chosen": messages, "rejected": messages}`` (chosen/rejected are the
  responses), or open-instruct's preference sets where ``chosen`` and ``rejected`` are *full*
  conversations that share every message but the last (which is the assistant's). ``prompt`` may
  also be a plain string (one user turn).
- RLVR: ``{"messages": prompt messages, "ground_truth": str, "dataset": checker name}``; a trailing
  assistant turn, as open-instruct's files sometimes carry, is dropped from the prompt.

A line that does not fit is quarantined with its file, line number and reason; loading goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glasslm.data.documents import Quarantine, iter_json_lines

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")


class FormatError(ValueError):
    """One record does not follow the expected format (the message is the quarantine reason)."""


@dataclass
class Preference:
    prompt: Messages
    chosen: Messages  # the chosen response turn(s)
    rejected: Messages

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class RLTask:
    messages: Messages
    ground_truth: str
    dataset: str

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "ground_truth": self.ground_truth, "dataset": self.dataset}


def check_messages(value: Any, field: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise FormatError(f"'{field}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise FormatError(f"'{field}[{i}]' is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise FormatError(f"'{field}[{i}].role' is {role!r}, expected one of {list(ROLES)}")
        if not isinstance(content, str):
            raise FormatError(f"'{field}[{i}].content' must be a string")
        out.append({"role": role, "content": content})
    return out


def parse_sft(obj: Any) -> Messages:
    if not isinstance(obj, dict) or "messages" not in obj:
        raise FormatError("missing field: 'messages'")
    messages = check_messages(obj["messages"], "messages")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise FormatError("no non-empty assistant turn (nothing to train on)")
    return messages


def parse_preference(obj: Any) -> Preference:
    if not isinstance(obj, dict):
        raise FormatError("not a JSON object")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise FormatError(f"missing field: '{key}'")
    chosen = check_messages(obj["chosen"], "chosen")
    rejected = check_messages(obj["rejected"], "rejected")
    if "prompt" in obj and obj["prompt"] is not None:
        prompt_value = obj["prompt"]
        if isinstance(prompt_value, str):
            prompt_value = [{"role": "user", "content": prompt_value}]
        prompt = check_messages(prompt_value, "prompt")
        # Some sets repeat the prompt inside chosen/rejected: keep only the responses.
        if chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    else:
        if chosen[:-1] != rejected[:-1]:
            raise FormatError("'chosen' and 'rejected' differ before their last message (no shared prompt)")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if not prompt:
            raise FormatError("no prompt: 'chosen' holds a single message")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1]["role"] != "assistant":
            raise FormatError(f"'{key}' must end with an assistant message")
    if prompt[-1]["role"] == "assistant":
        raise FormatError("the prompt ends with an assistant message")
    if chosen == rejected:
        raise FormatError("'chosen' and 'rejected' are identical")
    return Preference(prompt=prompt, chosen=chosen, rejected=rejected)


def parse_rl(obj: Any, known_datasets: frozenset[str] | None = None) -> RLTask:
    if not isinstance(obj, dict):
        raise FormatError("not a JSON object")
    for key in ("messages", "ground_truth"):
        if key not in obj:
            raise FormatError(f"missing field: '{key}'")
    messages = check_messages(obj["messages"], "messages")
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise FormatError("the prompt must end with a user message")
    truth = obj["ground_truth"]
    if isinstance(truth, list) and len(truth) == 1:
        truth = truth[0]
    if isinstance(truth, bool) or not isinstance(truth, str | int | float):
        raise FormatError("'ground_truth' must be a string or a number")
    dataset = obj.get("dataset", "exact_match")
    if isinstance(dataset, list) and len(dataset) == 1:
        dataset = dataset[0]
    if not isinstance(dataset, str):
        raise FormatError("'dataset' must be a string (the name of a verifiable reward)")
    if known_datasets is not None and dataset.lower() not in known_datasets and dataset not in known_datasets:
        raise FormatError(
            f"'dataset' {dataset!r} names no verifiable reward (known: {sorted(known_datasets)})"
        )
    return RLTask(messages=messages, ground_truth=str(truth), dataset=dataset)


def _load(path: str | Path, parse: Any, quarantine: Quarantine | None) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSONL file")
    q = quarantine if quarantine is not None else Quarantine()
    out = []
    for number, raw, obj in iter_json_lines(path, q):
        try:
            out.append(parse(obj))
        except FormatError as e:
            q.add(path, number, f"bad record: {e}", raw)
    return out


def load_sft(path: str | Path, quarantine: Quarantine | None = None) -> list[Messages]:
    return _load(path, parse_sft, quarantine)


def load_preferences(path: str | Path, quarantine: Quarantine | None = None) -> list[Preference]:
    return _load(path, parse_preference, quarantine)


def load_rl(path: str | Path, quarantine: Quarantine | None = None) -> list[RLTask]:
    from glasslm.adapt.rewards import ALIASES, REWARDS

    known = frozenset([*REWARDS, *ALIASES])
    return _load(path, lambda obj: parse_rl(obj, known), quarantine)
