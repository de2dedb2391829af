"""Decontamination: 13-gram overlap with evaluation sets, fractions and character spans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from glasslm.artifacts import create_artifact, read_manifest
from glasslm.cli import main
from glasslm.data.decon import ngram_set, overlaps
from glasslm.data.documents import read_jsonl, write_jsonl

QUESTION = "Which gas do plants absorb from the air during photosynthesis in bright sunlight on a warm day"


def test_overlap_spans_are_character_offsets() -> None:
    index, short = ngram_set([QUESTION, "too short"], 13)
    assert short == 1 and len(index) == len(QUESTION.split()) - 12
    prefix = "Ünïcödé préfix — "
    text = prefix + QUESTION.upper() + ". Then unrelated words follow here."
    ov = overlaps([text, "nothing in common at all"], index, 13)
    assert ov.matched.tolist()[1] == 0 and ov.matched[0] == len(index)
    assert ov.spans[0] == [[len(prefix), len(prefix) + len(QUESTION), 1.0]]
    assert 0 < ov.fraction(0) < 1


def test_overlap_with_empty_index() -> None:
    ov = overlaps(["a b c"], np.zeros(0, dtype=np.uint64), 2)
    assert ov.matched.tolist() == [0] and ov.total.tolist() == [2]


def test_decon_cli_marks_contaminated_documents(tmp_path: Path) -> None:
    with create_artifact(tmp_path / "docs", "documents") as w:
        write_jsonl(
            w.path / "documents" / "a.jsonl.gz",
            [
                {"id": "clean", "text": "A document about something else entirely, with many words in it."},
                {"id": "leak", "text": "Quiz time! " + QUESTION + "? Answer: carbon dioxide."},
            ],
        )
    task = tmp_path / "sciq.jsonl"
    task.write_text(json.dumps({"question": QUESTION, "answer": "carbon dioxide", "id": 7}) + "\n")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"context": QUESTION, "label": "x"}) + "\n")
    out = tmp_path / "dc"
    rc = main(
        [
            "data",
            "decon",
            str(tmp_path / "docs"),
            "--tasks",
            str(task),
            str(other),
            "--out",
            str(out),
            "--experiment",
            "e",
            "--decon.fields=[question,answer]",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    rows = {r["id"]: r["attributes"] for r in read_jsonl(out / "a.jsonl.gz")}
    assert rows["clean"]["e__decon__contaminated"] == [] and rows["clean"]["e__decon__sciq"] == []
    leak = rows["leak"]
    assert leak["e__decon__contaminated"][0][2] == leak["e__decon__sciq"][0][2] > 0
    assert leak["e__decon__sciq__spans"] == [[11, 11 + len(QUESTION), 1.0]]
    # `fields` restricts what is read from task files: `other` then has no 13-gram.
    assert leak["e__decon__other"] == []
    metrics = read_manifest(out)["metrics"]
    assert metrics["contaminated_documents"] == 1
    assert metrics["tasks"]["other"]["short_instances"] == 1


def test_decon_malformed_task_file_names_file_and_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with create_artifact(tmp_path / "docs", "documents") as w:
        write_jsonl(w.path / "documents" / "a.jsonl.gz", [{"id": "d", "text": "some words here"}])
    task = tmp_path / "bad.jsonl"
    task.write_text(json.dumps({"question": QUESTION}) + "\n\n{not json\n")
    rc = main(
        [
            "data",
            "decon",
            str(tmp_path / "docs"),
            "--tasks",
            str(task),
            "--out",
            str(tmp_path / "dc"),
            "--workers",
            "1",
        ]
    )
    assert rc != 0
    assert f"{task}:3: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "dc").exists()


def test_short_questions_are_matched_whole_after_normalising_case_space_and_punctuation(
    tmp_path: Path,
) -> None:
    short = "What is the boiling point of water?"  # 7 words: no 13-gram to match
    with create_artifact(tmp_path / "docs", "documents") as w:
        write_jsonl(
            w.path / "documents" / "a.jsonl.gz",
            [
                {"id": "leak", "text": "Quiz:  WHAT is the boiling-point\nof   water!! It is 100 C."},
                {"id": "partial", "text": "What is the boiling point? Nobody said of what."},
                {"id": "longer_word", "text": "so what is the boiling point of waterfalls, then"},
                {"id": "yes", "text": "Yes, the answer was yes."},
            ],
        )
    task = tmp_path / "trivia.jsonl"
    task.write_text("".join(json.dumps({"question": q}) + "\n" for q in (short, "Yes", QUESTION)))
    out = tmp_path / "dc"
    assert (
        main(
            [
                "data",
                "decon",
                str(tmp_path / "docs"),
                "--tasks",
                str(task),
                "--out",
                str(out),
                "--experiment",
                "e",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    rows = {r["id"]: r["attributes"] for r in read_jsonl(out / "a.jsonl.gz")}
    leak = rows["leak"]
    text = "Quiz:  WHAT is the boiling-point\nof   water!! It is 100 C."
    [[start, end, score]] = leak["e__decon__trivia__questions"]
    assert text[start:end] == "WHAT is the boiling-point\nof   water" and score == 1.0
    assert leak["e__decon__trivia"] == [[0, len(text), 0.0]]  # no 13-gram: the fraction stays 0
    assert leak["e__decon__contaminated"] == [[0, len(text), 0.0]]
    assert leak["e__decon__trivia__spans"] == []
    for clean in ("partial", "longer_word", "yes"):  # a prefix, another word, a 1-word item (too short)
        assert (
            rows[clean]["e__decon__trivia__questions"] == [] and rows[clean]["e__decon__contaminated"] == []
        )
    metrics = read_manifest(out)["metrics"]
    facts = metrics["tasks"]["trivia"]
    assert facts["short_instances"] == 2 and facts["questions_indexed"] == 1
    assert facts["whole_question_documents"] == facts["contaminated_documents"] == 1
    # off: only the n-gram matching is left, which cannot see the short question
    assert (
        main(
            [
                "data",
                "decon",
                str(tmp_path / "docs"),
                "--tasks",
                str(task),
                "--out",
                str(tmp_path / "off"),
                "--experiment",
                "e",
                "--workers",
                "1",
                "--decon.question_min_words=0",
            ]
        )
        == 0
    )
    assert read_manifest(tmp_path / "off")["metrics"]["contaminated_documents"] == 0
