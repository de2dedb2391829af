"""`tokenizer.file`: a given tokenizer.json (here OLMo's, as ai2-olmo-eval ships it) imported as the run's
tokenizer artifact instead of training one: recorded as a file input, verified, reproduced, tokenized with."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from glasslm import artifacts
from glasslm import config as cfg
from glasslm.cli import main
from glasslm.config import ConfigError
from glasslm.pipeline import run as pipeline

ROOT = Path(__file__).resolve().parents[1]


def _olmo_tokenizer() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    return path if path.is_file() else None


OLMO_TOKENIZER = _olmo_tokenizer()
needs_file = pytest.mark.skipif(OLMO_TOKENIZER is None, reason="ai2-olmo-eval's tokenizer file is absent")


@needs_file
def test_import_records_the_file_and_verify_and_reproduce_reach_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert OLMO_TOKENIZER is not None
    source = tmp_path / "olmo.json"
    shutil.copyfile(OLMO_TOKENIZER, source)
    out = tmp_path / "tokenizer"
    assert main(["tokenizer", "import", str(source), "--out", str(out)]) == 0
    manifest = artifacts.read_manifest(out)
    (ref,) = manifest["inputs"]
    assert ref["kind"] == artifacts.FILE_INPUT and ref["sha256"] == artifacts.sha256_file(source)
    assert manifest["metrics"]["vocab_size"] == 50_280 and manifest["metrics"]["eos_id"] == 50_279
    assert (out / "tokenizer.json").read_bytes() == source.read_bytes()
    assert main(["manifest", "verify", str(out), "--recursive"]) == 0
    assert main(["reproduce", str(out)]) == 0
    capsys.readouterr()
    source.write_text(source.read_text().replace('"<|padding|>"', '"<|padded|>"'))  # the file changed
    assert main(["manifest", "verify", str(out), "--recursive"]) == 1


def test_import_refuses_a_file_that_is_not_a_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    assert main(["tokenizer", "import", str(bad), "--out", str(tmp_path / "tok")]) == 2
    assert "not a usable tokenizer.json" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


@needs_file
def test_pipeline_imports_tokenizer_file_and_tokenizes_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert OLMO_TOKENIZER is not None
    (tmp_path / "tok").mkdir()
    shutil.copyfile(OLMO_TOKENIZER, tmp_path / "tok" / "olmo.json")
    (tmp_path / "eval_set.jsonl").write_text(json.dumps({"question": "What does json do?"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "stages: [corpus, tag, dedupe, decon, mix, tokenizer, tokenize]\n"
        "corpus: {max_bytes_code: 150000, max_bytes_docs: 150000, max_bytes_web: 200000}\n"
        "tag: {taggers: [langid, gopher, c4, stats, pii, code, toxicity]}\n"
        "decon: {tasks: [eval_set.jsonl]}\n"
        "tokenizer: {file: tok/olmo.json, vocab_size: 512}\n"
    )
    run = tmp_path / "run"
    with contextlib.chdir(tmp_path / "tok"):  # the file is found relative to the config, not the cwd
        assert main(["pipeline", "--config", str(config), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"glasslm tokenizer import {tmp_path / 'tok' / 'olmo.json'} --out {run / 'tokenizer'}" in printed
    assert artifacts.read_manifest(run / "tokenizer")["metrics"]["vocab_size"] == 50_280
    tokens = artifacts.read_manifest(run / "tokens")
    assert tokens["metrics"]["vocab_size"] == 50_280
    # lineage: tokens → tokenizer artifact → the given file
    assert main(["manifest", "verify", str(run / "tokens"), "--recursive"]) == 0
    # an edited file re-imports (its content is in the fingerprint); the rest stays up to date
    data = json.loads((tmp_path / "tok" / "olmo.json").read_text())
    data["added_tokens"][0]["content"] = "<|padded|>"
    (tmp_path / "tok" / "olmo.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["pipeline", "--config", str(config), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "[pipeline] mix        up to date" in printed
    assert "[pipeline] tokenizer  done" in printed and "[pipeline] tokenize   done" in printed


def test_olmo2_configs_name_a_tokenizer_file_and_preflight_checks_it() -> None:
    for name in ("olmo2-1b", "olmo2-7b"):
        path = ROOT / "configs" / f"{name}.yaml"
        config = cfg.load(pipeline.PipelineConfig, path)
        pipeline.resolve_paths(config, path.parent, set())
        file = Path(config.tokenizer["file"])
        assert file == ROOT / "configs" / "tokenizers" / "olmo2-dolma2.json"
        pipeline.check_sections(config)
        # Whether or not scripts/get_olmo2_tokenizer.sh has put the file there: a missing one is named
        # before any stage runs, with how to get OLMo-2's.
        config.tokenizer["file"] = str(ROOT / "configs" / "tokenizers" / "absent.json")
        with pytest.raises(
            ConfigError, match=r"absent.json does not exist \(OLMo-2's tokenizer: .*get_olmo2"
        ):
            pipeline.plan(config)


def test_corpus_inputs_take_bare_urls_as_the_olmo2_configs_document() -> None:
    """The documented raw-data command: `--corpus.inputs='[s3://…/*.json.gz]'` (strings, not mappings)."""
    path = ROOT / "configs" / "olmo2-1b.yaml"
    config = cfg.load(
        pipeline.PipelineConfig, path, ["--corpus.inputs=[s3://my-bucket/dolma/*.json.gz, /data/extra.jsonl]"]
    )
    pipeline.check_sections(config)
    inputs = config.corpus["inputs"]
    assert [i["path"] if isinstance(i, dict) else i for i in inputs] == [
        "s3://my-bucket/dolma/*.json.gz",
        "/data/extra.jsonl",
    ]
