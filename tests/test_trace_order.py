"""``glasslm trace batch|doc``: recomputed from a tokens artifact or a training run's recorded settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tokens_support import make_tokens

from glasslm import artifacts
from glasslm.cli import main
from glasslm.data.loader import LoaderConfig, TokenLoader

FLAGS = ["--seq-len", "24", "--global-batch-size", "4", "--seed", "7"]
CONFIG = LoaderConfig(seq_len=24, global_batch_size=4, seed=7)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokens(tmp_path_factory.mktemp("trace"), shards=2, per_shard=40)[2]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_trace_batch_lists_the_documents_of_a_step(tokens: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loader = TokenLoader(tokens, CONFIG)
    # Step 10 as the trainer logs it (metrics.jsonl) trained on the loader's batch 9.
    data = run_json(capsys, "trace", "batch", str(tokens), "--step", "10", *FLAGS)
    assert data["instances"] == loader.global_instances(9).tolist() and data["batch_index"] == 9
    want = [
        (slot, d["doc_id"], d["doc_start"], d["doc_end"])
        for slot, i in enumerate(data["instances"])
        for d in loader.instance_docs(i)
    ]
    assert [(d["slot"], d["doc_id"], d["doc_start"], d["doc_end"]) for d in data["documents"]] == want
    # and the tokens of those spans are the tokens of the batch
    batch = loader.batch(9)
    for d in data["documents"]:
        assert (
            batch["doc_ids"][d["slot"], d["instance_start"]]
            == batch["doc_ids"][d["slot"], d["instance_end"] - 1]
        )
    assert main(["trace", "batch", str(tokens), "--step", "10", *FLAGS]) == 0
    assert "step 10 (loader batch 9" in capsys.readouterr().out
    assert main(["trace", "batch", str(tokens), "--step", "0", *FLAGS]) == 2


def test_trace_doc_finds_exactly_the_steps_that_saw_it(
    tokens: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loader = TokenLoader(tokens, CONFIG)
    max_steps = loader.steps_per_epoch * 2 + 3  # into the third epoch
    doc_id = loader.instance_docs(int(loader.global_instances(2)[1]))[0]["doc_id"]
    data = run_json(capsys, "trace", "doc", str(tokens), doc_id, "--max-steps", str(max_steps), *FLAGS)
    # brute force: materialise every batch and look for the document
    brute = [
        (step, slot)
        for step in range(1, max_steps + 1)
        for slot, inst in enumerate(loader.global_instances(step - 1).tolist())
        if doc_id in {d["doc_id"] for d in loader.instance_docs(inst)}
    ]
    assert [(s["step"], s["slot"]) for s in data["seen"]] == brute
    assert (3, 1) in brute and {s["epoch"] for s in data["seen"]} <= {0, 1, 2}
    assert data["tokens_in_instances"] <= data["tokens"]


def test_trace_reads_a_training_run(tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A run directory as the trainer leaves it: runs/NAME/train (kind train_run) with config.yaml.
    run = tmp_path / "runs" / "demo" / "train"
    with artifacts.create_artifact(run, "train_run", inputs=[tokens]) as art:
        config = {
            "data": {
                "tokens": str(tokens),
                "loader": {
                    "seq_len": 24,
                    "global_batch_size": 4,
                    "seed": 7,
                    "mixture": {},
                    "document_mask": True,
                },
            },
            "trainer": {"max_steps": 5},
        }
        (art.path / "config.yaml").write_text(yaml.safe_dump(config))
        art.metrics["steps"] = 4  # stopped early: the steps it took, not the configured 5, bound the search
    from_run = run_json(capsys, "trace", "batch", str(run.parent), "--step", "3")
    from_tokens = run_json(capsys, "trace", "batch", str(tokens), "--step", "3", *FLAGS)
    assert from_run["documents"] == from_tokens["documents"] and from_run["run"] == str(run)
    doc_id = from_run["documents"][0]["doc_id"]
    seen = run_json(capsys, "trace", "doc", str(run), doc_id)
    assert seen["max_steps"] == 4 and all(1 <= s["step"] <= 4 for s in seen["seen"])
    # a step the run never took is not answered as if it had
    assert main(["trace", "batch", str(run), "--step", "5"]) == 2
    assert "took 4 steps" in capsys.readouterr().err
    # a flag overrides the recorded setting
    other = run_json(capsys, "trace", "batch", str(run), "--step", "3", "--seed", "8")
    assert other["instances"] != from_run["instances"]


def test_unknown_document_is_a_clear_error(tokens: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "doc", str(tokens), "no-such-doc", *FLAGS]) == 2
    assert "no-such-doc" in capsys.readouterr().err


def test_trace_a_real_training_run(tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    if not configs.is_file():
        pytest.skip("configs/tiny.yaml is not there")
    run = tmp_path / "runs" / "demo"
    assert (
        main(
            [
                "train",
                str(configs),
                "--out",
                str(run / "train"),
                f"--data.tokens={tokens}",
                "--trainer.max_steps=2",
                "--data.loader.seq_len=24",
                "--data.loader.global_batch_size=4",
                "--data.loader.seed=7",
            ]
        )
        == 0
    )
    capsys.readouterr()
    from_run = run_json(capsys, "trace", "batch", str(run), "--step", "2")
    assert from_run["instances"] == TokenLoader(tokens, CONFIG).global_instances(1).tolist()
    doc_id = from_run["documents"][-1]["doc_id"]
    seen = run_json(capsys, "trace", "doc", str(run), doc_id)
    assert seen["max_steps"] == 2 and 2 in [s["step"] for s in seen["seen"]]
