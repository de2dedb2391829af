"""Adaptation data made offline: instruction pairs, preference pairs, verifiable tasks.

No hub dataset is reachable, so the data is derived from what every Python install carries:

- instruction pairs from the Python help topics (``pydoc_data.topics``) and from the docstrings of
  standard-library functions (read with ``ast`` from the module sources, nothing is imported);
- preference pairs: the correct answer against a corrupted one (words shuffled, cut short) or an
  off-topic one (another question's answer), and for verifiable tasks a wrong answer;
- verifiable tasks with a checkable ground truth: arithmetic, string manipulation (reverse, upper
  case, count a letter, first letter, length) and answer extraction from a short passage.

Everything is a pure function of the config (seeded ``random.Random``), so the same config gives the
same files. Held-out splits are disjoint from training by prompt text.

The chat suite's held-out conversations (``chat_heldout.jsonl``, ``eval/chat_suite.py``) are natural
questions a user would ask ("What does json.dumps do?", "Can you explain the "with" statement in
Python?") about the held-out *subjects* (help topics, functions, classes) with their documentation as
the reference answer. A held-out subject is never trained on in any form; :func:`check_disjoint`
checks that on every build, by subject, question and answer text.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from glasslm import artifacts
from glasslm.adapt.formats import Messages, Preference, RLTask
from glasslm.config import ConfigError

ADAPT_DATA = "adapt_data"  # the artifact kind `glasslm adapt data` writes
CHAT_HELDOUT = "chat_heldout.jsonl"  # the chat suite's held-out conversations, in every adapt_data artifact
T = TypeVar("T")

TASK_FAMILIES = ("arithmetic", "reverse", "upper", "count", "first_letter", "length", "passage")
DEFAULT_MODULES = [
    "json", "textwrap", "string", "shlex", "fnmatch", "glob", "base64", "heapq", "bisect", "random",
    "statistics", "fractions", "calendar", "difflib", "csv", "gzip", "shutil", "tempfile", "copy", "pprint",
    "functools", "operator", "colorsys", "html", "ipaddress", "uuid", "zipfile", "argparse", "logging",
]  # fmt: skip


@dataclass
class AdaptDataConfig:
    seed: int = 0
    rl_train: int = 2000  # verifiable training prompts
    rl_heldout: int = 256  # held-out verifiable prompts (pass@1 is reported on these; >= 200)
    tasks: list[str] = field(default_factory=lambda: list(TASK_FAMILIES))
    max_operand: int = 50  # arithmetic operands lie in [0, max_operand]
    modules: list[str] = field(default_factory=lambda: list(DEFAULT_MODULES))
    help_topics: bool = True
    max_answer_chars: int = 400  # instruction answers are cut at a sentence end below this
    sft_verifiable: int = 2000  # solved verifiable training tasks mixed into SFT (from the rl_train pool)
    # Of documentation subjects, held out (SFT loss, DPO accuracy, the chat suite). 0.2, not 0.1: the
    # chat suite's greedy replies flip in and out of loops between checkpoints (~15% of them per stage),
    # and with 32 held-out subjects that noise alone was as large as the 0.05 end-of-turn tolerance (#17).
    heldout_fraction: float = 0.2
    dpo_verifiable: int = 500  # preference pairs made from solved training tasks (right vs. wrong answer)
    # Verifiable tasks' reference answers (SFT, DPO chosen/rejected): "sentence" restates the question
    # and ends "The answer is X." (the checkers extract X); "clause": the same in one sentence, "…, so
    # the answer is X." (GRPO then does not reward going on after a first sentence, docs/adaptation.md);
    # "bare": X alone.
    answer_style: Literal["sentence", "clause", "bare"] = "sentence"
    # Natural phrasings per trained subject added to the SFT and DPO instruction data (beside the
    # templated instruction); 0: templated instructions only. 2, not 1: with one, half of SFT's answers
    # were one-sentence task answers and the tiny model's replies ran at 0.49 of the references'
    # length; with two, 0.70 (chat suite, #17).
    natural_questions: int = 2
    # Natural questions per held-out subject in chat_heldout.jsonl (differently phrased, one reference).
    # 4, not 2 (with heldout_fraction 0.2: 256 conversations on the default data, not 64): at 64 the
    # suite's end-of-turn rate moved by up to ±0.06 between checkpoints of one stage, as much as the
    # 0.05 tolerance, and fresh default runs failed DPO's or RL's check on that noise (#17).
    chat_questions: int = 4

    def validate(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASK_FAMILIES))
        if unknown:
            raise ConfigError(
                f"adapt_data.tasks: unknown task families {unknown}; choose from {list(TASK_FAMILIES)}"
            )
        if not self.tasks:
            raise ConfigError("adapt_data.tasks is empty")
        if self.rl_heldout < 1 or self.rl_train < 1:
            raise ConfigError("adapt_data.rl_train and adapt_data.rl_heldout must be >= 1")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"adapt_data.heldout_fraction must lie in [0, 1), got {self.heldout_fraction}")
        if self.max_operand < 2:
            raise ConfigError("adapt_data.max_operand must be >= 2")
        if self.chat_questions < 0 or self.natural_questions < 0:
            raise ConfigError("adapt_data.chat_questions and adapt_data.natural_questions must be >= 0")


# --------------------------------------------------------------------------- instruction pairs


def _first_paragraphs(text: str, max_chars: int) -> str:
    """Prose paragraphs from the top of ``text`` (no headings, no indented grammar/code), cut at a
    sentence end below ``max_chars``."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t")):
            continue
        if len(lines) >= 2 and set(lines[1].strip()) <= set("*=-~^") and lines[1].strip():
            continue  # a reStructuredText heading
        if block.lstrip().startswith((">>>", "..")):
            continue
        paragraphs.append(" ".join(line.strip() for line in lines))
        if sum(len(p) for p in paragraphs) >= max_chars:
            break
    text = " ".join(paragraphs).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[: end + 1] if end > max_chars // 4 else cut.rsplit(" ", 1)[0] + " …"


def _title(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


@dataclass(frozen=True)
class Subject:
    """One thing the documentation explains: a help topic, a function or a class, and its answer."""

    key: str  # topic:<name> or doc:<module>.<name>
    kind: str  # "topic", "function" or "class"
    name: str  # the topic's title, or the dotted name
    answer: str

    @property
    def instruction(self) -> str:
        """The templated instruction the SFT and DPO sets ask."""
        if self.kind == "topic":
            return f"What does the Python help topic '{self.key[6:]}' ({self.name}) say?"
        return f"Summarise the docstring of the {self.kind} {self.name}."

    def ask(self, rng: random.Random) -> str:
        """A question a user would ask about this subject, in one of several phrasings."""
        if self.kind == "topic":
            title = self.name[0].lower() + self.name[1:] if self.name[1:2].islower() else self.name
            return rng.choice(_TOPIC_QUESTIONS).format(title=title)
        module, _, short = self.name.rpartition(".")
        templates = _FUNCTION_QUESTIONS if self.kind == "function" else _CLASS_QUESTIONS
        return rng.choice(templates).format(name=self.name, module=module, short=short)


_FUNCTION_QUESTIONS = ("What does {name} do?", "How do I use {name}?", "What is {name} for?",
                       "Can you explain the function {name}?", "What does {short}() in the {module} module do?")  # fmt: skip
_CLASS_QUESTIONS = ("What is {name}?", "What is the {name} class for?", "Can you explain the class {name}?",
                    "What does the {short} class in {module} do?")  # fmt: skip
_TOPIC_QUESTIONS = ("Can you explain {title} in Python?", "What should I know about {title} in Python?",
                    "Tell me about {title} in Python.", "How does Python handle {title}?",
                    "What does the Python documentation say about {title}?")  # fmt: skip


def help_topic_subjects(max_chars: int) -> list[Subject]:
    """Python's help topics with a prose answer of at least 40 characters."""
    from pydoc_data.topics import topics

    subjects = []
    for key in sorted(topics):
        text = topics[key]
        answer = _first_paragraphs(text, max_chars)
        if len(answer) >= 40:
            subjects.append(Subject(f"topic:{key}", "topic", _title(text), answer))
    return subjects


def help_topic_pairs(max_chars: int) -> list[tuple[str, str, str]]:
    """(key, question, answer) from Python's help topics."""
    return [(s.key, s.instruction, s.answer) for s in help_topic_subjects(max_chars)]


def _module_source(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def docstring_subjects(modules: list[str], max_chars: int) -> list[Subject]:
    """Public functions and classes with docstrings, read with ``ast`` (nothing is imported)."""
    subjects = []
    for name in modules:
        source = _module_source(name)
        if source is None:
            raise ConfigError(f"adapt_data.modules: '{name}' is not a pure-Python standard-library module")
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            answer = _first_paragraphs(doc, max_chars)
            if len(answer) < 30:
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            subjects.append(Subject(f"doc:{name}.{node.name}", kind, f"{name}.{node.name}", answer))
    return subjects


def docstring_pairs(modules: list[str], max_chars: int) -> list[tuple[str, str, str]]:
    """(key, question, answer) for public functions and classes with docstrings, read with ``ast``."""
    return [(s.key, s.instruction, s.answer) for s in docstring_subjects(modules, max_chars)]


# --------------------------------------------------------------------------- verifiable tasks

_NAMES = ["Ada", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Lars", "Mira", "Noor",
          "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tove", "Uma", "Vik", "Wen", "Yara", "Zeno"]  # fmt: skip
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Quito", "Seoul", "Tunis", "Perth", "Riga",
           "Accra", "Cusco", "Porto", "Kyoto", "Bergen"]  # fmt: skip
_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "brown"]
_OBJECTS = [
    "bicycle",
    "kite",
    "umbrella",
    "teapot",
    "lamp",
    "backpack",
    "guitar",
    "notebook",
    "scarf",
    "boat",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def word_list() -> list[str]:
    """Plain lower-case English words (4-9 letters) from the Python help topics, sorted."""
    from pydoc_data.topics import topics

    words: set[str] = set()
    for text in topics.values():
        words.update(w for w in re.findall(r"\b[a-z]{4,9}\b", text))
    return sorted(words)


def _user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


TaskMaker = Callable[[random.Random], tuple[str, str, str, str]]  # (prompt, answer, checker, wrong answer)


def _arithmetic(max_operand: int) -> TaskMaker:
    def make(rng: random.Random) -> tuple[str, str, str, str]:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        wrong = value + rng.choice([-10, -2, -1, 1, 2, 10])
        return f"What is {a} {op} {b}?", str(value), "numeric", str(wrong)

    return make


def _string_task(kind: str, words: list[str]) -> TaskMaker:
    def make(rng: random.Random) -> tuple[str, str, str, str]:
        word = rng.choice(words)
        if kind == "reverse":
            return f"Reverse the word '{word}'.", word[::-1], "string_equal", word
        if kind == "upper":
            return f"Write the word '{word}' in upper case.", word.upper(), "string_equal", word.capitalize()
        if kind == "first_letter":
            wrong = chr((ord(word[0]) - ord("a") + 1) % 26 + ord("a"))
            return f"What is the first letter of the word '{word}'?", word[0], "string_equal", wrong
        if kind == "length":
            return (
                f"How many letters does the word '{word}' have?",
                str(len(word)),
                "numeric",
                str(len(word) + 1),
            )
        letter = rng.choice(sorted(set(word)) + ["z", "q"]) if kind == "count" else ""
        count = word.count(letter)
        return (f"How many times does the letter '{letter}' appear in '{word}'?", str(count), "numeric",
                str(count + 1))  # fmt: skip

    return make


def _passage(rng: random.Random) -> tuple[str, str, str, str]:
    n1, n2, n3 = rng.sample(_NAMES, 3)
    city, colour, obj, day = (
        rng.choice(_CITIES),
        rng.choice(_COLOURS),
        rng.choice(_OBJECTS),
        rng.choice(_DAYS),
    )
    facts = [f"{n1} lives in {city}.", f"{n2} has a {colour} {obj}.", f"{n3} plays chess every {day}."]
    rng.shuffle(facts)
    questions = [
        (f"Where does {n1} live?", city, rng.choice([c for c in _CITIES if c != city])),
        (f"What colour is {n2}'s {obj}?", colour, rng.choice([c for c in _COLOURS if c != colour])),
        (f"On which day does {n3} play chess?", day, rng.choice([d for d in _DAYS if d != day])),
    ]
    question, answer, wrong = rng.choice(questions)
    return f"Passage: {' '.join(facts)}\nQuestion: {question}", answer, "exact_match", wrong


# The prompt templates above, as patterns: pass@1 is reported per family, and an RLVR line carries
# only its checker (``dataset``), not the family that made it.
FAMILY_PATTERNS: dict[str, re.Pattern[str]] = {
    "arithmetic": re.compile(r"^What is -?\d+ [-+*] -?\d+\?$"),
    "reverse": re.compile(r"^Reverse the word '[^']*'\.$"),
    "upper": re.compile(r"^Write the word '[^']*' in upper case\.$"),
    "count": re.compile(r"^How many times does the letter '.' appear in '[^']*'\?$"),
    "first_letter": re.compile(r"^What is the first letter of the word '[^']*'\?$"),
    "length": re.compile(r"^How many letters does the word '[^']*' have\?$"),
    "passage": re.compile(r"^Passage: .*\nQuestion: ", re.DOTALL),
}


def family_of(prompt: str) -> str:
    """The builder family whose template made ``prompt``; ``other`` for prompts from elsewhere."""
    for family, pattern in FAMILY_PATTERNS.items():
        if pattern.match(prompt):
            return family
    return "other"


def task_makers(config: AdaptDataConfig) -> dict[str, TaskMaker]:
    words = word_list()
    makers: dict[str, TaskMaker] = {"arithmetic": _arithmetic(config.max_operand), "passage": _passage}
    for kind in ("reverse", "upper", "count", "first_letter", "length"):
        makers[kind] = _string_task(kind, words)
    return {k: makers[k] for k in config.tasks}


_QUOTED = re.compile(r"'([^']*)'")


def say(family: str, prompt: str, value: str, truth: str, style: str = "sentence") -> str:
    """``value`` as a sentence answering ``prompt``: a restatement, then "The answer is <value>." (the
    form the checkers extract, ``rewards.extract_answer``), or with ``style`` "clause" one sentence,
    "<restatement>, so the answer is <value>.". Replies of one token taught the model to end every turn
    at once (issue #17); these read like the instruction answers."""
    restated = _restate(family, prompt, value, truth)
    if style == "clause":
        return f"{restated}, so the answer is {value}."
    return f"{restated}. The answer is {value}."


def _restate(family: str, prompt: str, value: str, truth: str) -> str:
    quoted = _QUOTED.findall(prompt)
    if family == "arithmetic":
        return f"{prompt[len('What is ') : -1]} = {value}"
    if family == "reverse":
        return f"Reversed letter by letter, '{quoted[0]}' is '{value}'"
    if family == "upper":
        return f"In upper case, '{quoted[0]}' is '{value}'"
    if family == "count":
        times = "time" if value == "1" else "times"
        return f"The letter '{quoted[0]}' appears {value} {times} in '{quoted[1]}'"
    if family == "first_letter":
        return f"The word '{quoted[0]}' starts with '{value}'"
    if family == "length":
        return f"The word '{quoted[0]}' has {value} letters"
    # passage: the fact that answers the question, restated with ``value`` in place of the truth
    passage, question = prompt.split("\nQuestion: ")
    fact = next(f + "." for f in passage[len("Passage: ") :].split(". ") if truth in f)
    return f"The passage says: {fact.rstrip('.').replace(truth, value)}"


@dataclass
class SolvedTask:
    task: RLTask
    answer: str  # the reference response for SFT
    wrong: str  # a wrong response for preference pairs
    family: str


def verifiable_tasks(config: AdaptDataConfig) -> tuple[list[SolvedTask], list[SolvedTask]]:
    """(train, held-out): distinct prompts, families drawn round-robin, held-out drawn first so its
    size is exact; a prompt never appears in both."""
    rng = random.Random(config.seed)
    makers = task_makers(config)
    families = list(makers)
    seen: set[str] = set()

    def draw(n: int) -> list[SolvedTask]:
        out: list[SolvedTask] = []
        misses = 0
        while len(out) < n:
            family = families[len(out) % len(families)]
            prompt, answer, checker, wrong = makers[family](rng)
            if prompt in seen:
                misses += 1
                if misses > 50 * n + 1000:
                    raise ConfigError(
                        f"only {len(seen)} distinct verifiable prompts exist for this config; lower "
                        "adapt_data.rl_train/rl_heldout or raise adapt_data.max_operand"
                    )
                continue
            seen.add(prompt)
            task = RLTask(messages=_user(prompt), ground_truth=answer, dataset=checker)
            if config.answer_style != "bare":
                style = config.answer_style
                answer, wrong = (
                    say(family, prompt, answer, answer, style),
                    say(family, prompt, wrong, answer, style),
                )
            out.append(SolvedTask(task=task, answer=answer, wrong=wrong, family=family))
        return out

    heldout = draw(config.rl_heldout)
    train = draw(config.rl_train)
    return train, heldout


# --------------------------------------------------------------------------- preference pairs


def corrupt(answer: str, rng: random.Random) -> str:
    """A fluent-looking but wrong answer: words shuffled within the text, or cut short."""
    words = answer.split()
    if len(words) >= 6 and rng.random() < 0.5:
        middle = words[1:-1]
        rng.shuffle(middle)
        return " ".join([words[0], *middle, words[-1]])
    return " ".join(words[: max(1, len(words) // 3)])


def preference_pairs(
    pairs: list[tuple[str, str, str]], solved: list[SolvedTask], config: AdaptDataConfig, rng: random.Random
) -> list[Preference]:
    prefs = []
    for i, (_, question, answer) in enumerate(pairs):
        if rng.random() < 0.5 and len(pairs) > 1:
            other = pairs[(i + rng.randrange(1, len(pairs))) % len(pairs)][2]  # off-topic
            rejected = other
        else:
            rejected = corrupt(answer, rng)
        if rejected == answer:
            continue
        prefs.append(_preference(question, answer, rejected))
    for s in solved[: config.dpo_verifiable]:
        prefs.append(_preference(s.task.messages[-1]["content"], s.answer, s.wrong))
    return prefs


def alternate(first: list[T], second: list[T]) -> list[T]:
    """One item of each list in turn, the longer list's rest at the end."""
    mixed = [item for pair in zip(first, second, strict=False) for item in pair]
    shorter = min(len(first), len(second))
    return mixed + first[shorter:] + second[shorter:]


def _preference(question: str, chosen: str, rejected: str) -> Preference:
    return Preference(
        prompt=_user(question),
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )


# --------------------------------------------------------------------------- all of it


@dataclass
class AdaptData:
    sft: list[Messages]
    sft_heldout: list[Messages]
    dpo: list[Preference]
    dpo_heldout: list[Preference]
    rl_train: list[RLTask]
    rl_heldout: list[RLTask]
    chat_heldout: list[tuple[str, Messages]]  # (subject key, [user question, reference answer])
    counts: dict[str, Any]

    def files(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        yield "sft.jsonl", [{"messages": m} for m in self.sft]
        yield "sft_heldout.jsonl", [{"messages": m} for m in self.sft_heldout]
        yield "dpo.jsonl", [p.to_json() for p in self.dpo]
        yield "dpo_heldout.jsonl", [p.to_json() for p in self.dpo_heldout]
        yield "rl_train.jsonl", [t.to_json() for t in self.rl_train]
        yield "rl_heldout.jsonl", [t.to_json() for t in self.rl_heldout]
        yield CHAT_HELDOUT, [{"messages": m, "subject": key} for key, m in self.chat_heldout]


def _conversation(question: str, answer: str) -> Messages:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def natural_questions(subject: Subject, n: int, rng: random.Random) -> list[str]:
    """``n`` differently phrased questions a user would ask about ``subject``."""
    questions: list[str] = []
    for _ in range(50 * n):  # a subject kind has at least 4 phrasings: this always ends
        if len(questions) == n:
            break
        q = subject.ask(rng)
        if q not in questions:
            questions.append(q)
    return questions


def chat_conversations(
    subjects: list[Subject], per_subject: int, rng: random.Random
) -> list[tuple[str, Messages]]:
    """``per_subject`` differently phrased questions about each subject, its answer the reference."""
    return [
        (s.key, _conversation(q, s.answer)) for s in subjects for q in natural_questions(s, per_subject, rng)
    ]


class HeldOutLeak(ValueError):
    """A held-out conversation's subject, question or answer occurs in a training set."""


def check_disjoint(data: AdaptData, train_subjects: set[str]) -> None:
    """Raise :class:`HeldOutLeak` if anything of ``chat_heldout`` is in the SFT, DPO or RL training data:
    its subject among the trained subjects, its question among the training prompts, its reference
    answer among the training answers (chosen and rejected alike)."""
    prompts = {m["content"] for c in data.sft for m in c if m["role"] != "assistant"}
    prompts |= {m["content"] for p in data.dpo for m in p.prompt}
    prompts |= {m["content"] for t in data.rl_train for m in t.messages}
    answers = {m["content"] for c in data.sft for m in c if m["role"] == "assistant"}
    answers |= {m["content"] for p in data.dpo for m in [*p.chosen, *p.rejected]}
    answers |= {t.ground_truth for t in data.rl_train}
    for key, (question, reference) in data.chat_heldout:
        for what, value, seen in (("subject", key, train_subjects), ("question", question["content"], prompts),
                                  ("reference answer", reference["content"], answers)):  # fmt: skip
            if value in seen:
                raise HeldOutLeak(
                    f"held-out conversation about {key}: its {what} {value[:80]!r} is in the training data"
                )


def build(config: AdaptDataConfig) -> AdaptData:
    config.validate()
    rng = random.Random(config.seed + 1)  # a stream apart from the task draws
    subjects = help_topic_subjects(config.max_answer_chars) if config.help_topics else []
    subjects += docstring_subjects(config.modules, config.max_answer_chars)
    rng.shuffle(subjects)
    n_held = round(len(subjects) * config.heldout_fraction)
    subj_held, subj_train = subjects[:n_held], subjects[n_held:]
    inst_held = [(s.key, s.instruction, s.answer) for s in subj_held]
    inst_train = [(s.key, s.instruction, s.answer) for s in subj_train]
    # Trained subjects asked as a user would, too: a model taught only the templated instructions
    # answered "What does X do?" like a verifiable task, with a number (issue #17).
    ask = random.Random(config.seed + 3)
    inst_train += [
        (s.key, q, s.answer) for s in subj_train for q in natural_questions(s, config.natural_questions, ask)
    ]

    train_tasks, held_tasks = verifiable_tasks(config)
    sft_tasks = train_tasks[: config.sft_verifiable]
    sft = [_conversation(q, a) for _, q, a in inst_train]
    sft += [_conversation(t.task.messages[-1]["content"], t.answer) for t in sft_tasks]
    rng.shuffle(sft)
    # Held-out verifiable tasks also measure SFT loss (a different number of them from RL's pass@1),
    # alternating with the held-out subjects' documentation: any prefix of the file (the trainers'
    # ``eval_limit``) measures both kinds. One after the other, the tiny config's first 64 were all
    # documentation answers (issue #17's follow-up).
    held_verifiable = held_tasks[: max(1, n_held)]
    sft_held = alternate(
        [_conversation(q, a) for _, q, a in inst_held],
        [_conversation(t.task.messages[-1]["content"], t.answer) for t in held_verifiable],
    )

    # DPO's verifiable pairs come from the *end* of the training pool so they differ from SFT's where
    # the pool allows, which makes the held-out accuracy test preference learning, not memory.
    dpo_pool = list(reversed(train_tasks))
    dpo = preference_pairs(inst_train, dpo_pool, config, rng)
    rng.shuffle(dpo)
    dpo_held = preference_pairs(
        inst_held, held_verifiable, AdaptDataConfig(dpo_verifiable=len(held_verifiable)), rng
    )
    n_documentation = len(dpo_held) - len(held_verifiable)  # preference_pairs: documentation pairs first
    dpo_held = alternate(dpo_held[:n_documentation], dpo_held[n_documentation:])
    # Its own stream, so the number of phrasings asked changes no other file. A held-out subject whose
    # documentation repeats a trained one's word for word (an alias) is no test of generalisation.
    trained_answers = {s.answer for s in subj_train}
    chat_subjects = [s for s in subj_held if s.answer not in trained_answers]
    chat = chat_conversations(chat_subjects, config.chat_questions, random.Random(config.seed + 2))

    families: dict[str, int] = {}
    for t in held_tasks:
        families[t.family] = families.get(t.family, 0) + 1
    counts = {
        "sft": len(sft),
        "sft_heldout": len(sft_held),
        "dpo": len(dpo),
        "dpo_heldout": len(dpo_held),
        "rl_train": len(train_tasks),
        "rl_heldout": len(held_tasks),
        "chat_heldout": len(chat),
        "instruction_pairs": len(subjects),
        "rl_heldout_families": families,
    }
    data = AdaptData(
        sft=sft,
        sft_heldout=sft_held,
        dpo=dpo,
        dpo_heldout=dpo_held,
        rl_train=[t.task for t in train_tasks],
        rl_heldout=[t.task for t in held_tasks],
        chat_heldout=chat,
        counts=counts,
    )
    check_disjoint(data, {s.key for s in subj_train})
    return data


def find_data_file(path: str | Path, name: str) -> Path:
    """A JSONL file given directly, or ``name`` inside an adapt_data artifact (or a run's adapt/data)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.suffix in (".jsonl", ".json", ".gz") and not path.exists():
        raise artifacts.ArtifactError(
            f"{path}: no such file (data.path: a JSONL file or an adapt_data artifact)"
        )
    directory = artifacts.find_artifact(path, ADAPT_DATA, subdirs=("adapt/data", "data"))
    file = directory / name
    if not file.is_file():
        raise artifacts.ArtifactError(f"{directory}: no {name} in this adapt_data artifact")
    return file
