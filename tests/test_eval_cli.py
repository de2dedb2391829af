"""``glasslm eval`` end to end: a tiny checkpoint, local task rows and documents, the artifact."""

from __future__ import annotations

import json

import pytest
from eval_support import arc_rows, build_model, build_tokenizer, documents, winogrande_rows, write_jsonl

from glasslm.cli import main
from glasslm.eval.harness import EvalConfig, evaluate_model
from glasslm.model.checkpoint import load_model
from glasslm.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_cli")
    tok = build_tokenizer(d / "tok" / "tokenizer.json")
    return {
        "dir": d,
        "tokenizer": tok,
        "ckpt": build_model(d / "ckpt", tok),
        "arc": write_jsonl(d / "arc.jsonl", arc_rows(10)),
        "wg": write_jsonl(d / "wg.jsonl", winogrande_rows(10)),
        "docs": write_jsonl(d / "docs.jsonl", documents()),
    }


def test_eval_writes_artifact_and_json(tiny_eval, tmp_path, capsys):
    t = tiny_eval
    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            str(t["ckpt"]),
            "--suite",
            "perplexity,arc_easy,arc_challenge,winogrande",
            "--documents",
            str(t["docs"]),
            "--data",
            f"arc_easy={t['arc']}",
            "--data",
            f"arc_challenge={t['arc']}",
            "--data",
            f"winogrande={t['wg']}",
            "--shots",
            "2",
            "--limit",
            "6",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "eval"
    assert manifest["inputs"][0]["kind"] == "checkpoint"
    # Input paths may be recorded relative to the artifact (an absolute one joins as itself).
    assert {str((out / i["path"]).resolve()) for i in manifest["inputs"][1:]} == {
        str(t[k].resolve()) for k in ("docs", "arc", "wg")
    }
    tasks = {r["task"]: r for r in results["tasks"]}
    assert tasks["arc_easy"]["metric"] == "acc_per_char" and tasks["arc_challenge"]["metric"] == "acc_pmi"
    assert tasks["winogrande"]["metric"] == "acc_none"
    for r in tasks.values():
        assert r["n"] == 6 and 0 <= r["acc"] <= 1 and r["gold_bpb"] > 0
    assert tasks["arc_easy"]["chance"] == pytest.approx(0.25) and tasks["winogrande"][
        "chance"
    ] == pytest.approx(0.5)
    preds = [json.loads(x) for x in (out / "predictions" / "arc_easy.jsonl").read_text().splitlines()]
    assert len(preds) == 6
    # accuracy is recomputable from the per-example records
    assert tasks["arc_easy"]["acc"] == pytest.approx(
        sum(p["predictions"]["per_char"] == p["gold"] for p in preds) / 6
    )
    assert set(preds[0]["scores"]) == {"none", "per_token", "per_char", "pmi"}
    assert {d["domain"] for d in results["perplexity"]["domains"]} == {"books", "web"}
    summary = (out / "summary.md").read_text()
    assert "| arc_easy | not OLMES |" in summary and "setting — OLMES: OLMES's standard" in summary
    # --data rows: shots seeded from the rows, so the figure says it is not OLMES's setting
    assert tasks["arc_easy"]["setting"] == {
        "name": "glasslm",
        "label": "not OLMES",
        "split": str(t["arc"]),
        "shots": "seeded",
        "docs": "6 of 8, OLMES-style sample (seed 1234)",
    }  # 10 rows - 2 shots
    assert json.loads((out / "tasks" / "winogrande.json").read_text())["n"] == 6


def test_table_output(tiny_eval, tmp_path, capsys):
    t = tiny_eval
    rc = main(
        [
            "eval",
            str(t["ckpt"]),
            "--suite",
            "arc_easy",
            "--data",
            f"arc_easy={t['arc']}",
            "--shots",
            "0",
            "--format",
            "mc",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "arc_easy" in out and "acc_none" in out and "chance" in out


def test_in_loop_matches_cli(tiny_eval, tmp_path, capsys):
    """The trainer's in-memory path gives the numbers the CLI writes."""
    t = tiny_eval
    config = EvalConfig(suite=["arc_easy"], data={"arc_easy": str(t["arc"])}, num_shots=1, limit=4)
    loaded = load_model(t["ckpt"])
    results, _ = evaluate_model(loaded.model, Tokenizer.from_file(t["tokenizer"]), config)
    main(
        [
            "eval",
            str(t["ckpt"]),
            "--suite",
            "arc_easy",
            "--data",
            f"arc_easy={t['arc']}",
            "--shots",
            "1",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "e"),
            "--json",
        ]
    )
    cli = json.loads(capsys.readouterr().out)
    assert results["tasks"][0]["acc"] == cli["tasks"][0]["acc"]
    assert results["tasks"][0]["gold_bpb"] == cli["tasks"][0]["gold_bpb"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--suite", "arc_esy"], "unknown task 'arc_esy'"),
        (["--suite", "perplexity"], "needs held-out data"),
        (["--suite", "arc_easy", "--data", "arc_easy"], "expected TASK=FILE"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_eval, tmp_path, capsys, extra, message):
    rc = main(["eval", str(tiny_eval["ckpt"]), *extra, "--out", str(tmp_path / "e")])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_tokenizer_model_mismatch(tiny_eval, tmp_path, capsys):
    small = build_model(tmp_path / "small", tiny_eval["tokenizer"], vocab_size=300)
    assert Tokenizer.from_file(tiny_eval["tokenizer"]).vocab_size > 300
    rc = main(
        [
            "eval",
            str(small),
            "--suite",
            "arc_easy",
            "--data",
            f"arc_easy={tiny_eval['arc']}",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert rc == 2
    assert "does not belong to this model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "lines,flag,message",
    [
        (['{"text": "fine"}', "{oops"], "--documents", ":2: not valid JSON"),
        (['{"text": "fine"}', '["a list"]'], "--documents", ":2: expected a JSON object, got list"),
        (['{"body": "no text"}'], "--documents", ":1: not a document with a string 'text' field"),
        (["", "{oops"], "--data", ":2: not valid JSON"),
    ],
)
def test_malformed_lines_name_file_and_line(tiny_eval, tmp_path, capsys, lines, flag, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    args = (
        ["--suite", "perplexity", "--documents", str(bad)]
        if flag == "--documents"
        else ["--suite", "arc_easy", "--data", f"arc_easy={bad}"]
    )
    rc = main(["eval", str(tiny_eval["ckpt"]), *args, "--out", str(tmp_path / "e")])
    assert rc == 2
    assert f"{bad}{message}" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--limit", "-2"], "config key 'limit' must be >= 1"),  # was a traceback from random.sample
        (["--shots", "-3"], "'num_shots' >= 0"),  # was accepted and recorded
    ],
)
def test_eval_flags_are_validated_like_config_keys(tiny_eval, tmp_path, capsys, flags, says):
    t = tiny_eval
    argv = ["eval", str(t["ckpt"]), "--suite", "arc_easy", "--data", f"arc_easy={t['arc']}", *flags]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
