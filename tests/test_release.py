"""glasslm release: a tiny run packaged as a Hugging Face-style git repository (issue #22)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from glasslm.cli import main
from glasslm.data import ledger
from glasslm.release import licenses, repo
from glasslm.release.card import CARD_SECTIONS
from glasslm.release.push import push_release
from glasslm.release.verify import check_card, verify_release
from tests.pipeline_support import micro_pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The default pipeline ends with the release stage: RUN/release is made by it.
    return micro_pipeline(
        tmp_path_factory.mktemp("release"),
        "{suite: [perplexity], ppl_max_docs: 3}",
        code_bytes=120_000,
        web_bytes=150_000,
        checkpoint_every=3,
        log_every=1,
    )[1]


def test_pipeline_release_has_every_revision_and_verifies(run: Path) -> None:
    release = run / "release"
    heads = repo.branches(release)
    assert {
        "main",
        "stage1-step3-tokens768",
        "stage1-step6-tokens2K",
        "sft-step3",
        "dpo-step2",
        "rl-step1",
    } <= set(heads)
    result = verify_release(release)  # loads main and every revision with transformers
    assert result["ok"], result["problems"]
    assert set(result["loaded"]) == {*result["revisions"], "main"}


def test_each_revision_loads_with_transformers_and_matches_its_checkpoint(run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from glasslm.model.hf import to_hf_state

    info = json.loads((run / "release" / "glasslm" / "manifest.json").read_text())["release"]
    for name, rev in info["revisions"].items():
        # from_pretrained(local_folder, revision=...) ignores the revision: load a copy of the branch
        folder = repo.extract(run / "release", name, tmp_path / name)
        model = AutoModelForCausalLM.from_pretrained(folder)
        expected = to_hf_state(load_file(str(run / rev["source"] / "model.safetensors")))
        state = model.state_dict()
        for key, tensor in expected.items():
            assert torch.equal(state[key], tensor), (name, key)


def test_card_has_metadata_and_every_section_from_real_figures(run: Path) -> None:
    text = (run / "release" / "README.md").read_text()
    assert check_card(text) == []
    header = text.split("---")[1]
    for key in ("license: apache-2.0", "language:", "datasets:", "base_model:", "tags:"):
        assert key in header
    for title in CARD_SECTIONS:
        assert f"## {title}" in text
    train = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
    assert f"| tokens | {train['tokens']:,} |" in text
    assert f"{train['params']:,} parameters" in text
    bpb = json.loads((run / "eval" / "perplexity.json").read_text())["macro"]["bits_per_byte"]
    assert f"{bpb:.4g}" in text
    assert "has a licence that allows release under `apache-2.0`" in text  # every default source is licensed
    mix_hash = repo.git(run / "release", "show", "main:glasslm/manifests/mix/manifest.json")
    import hashlib

    assert hashlib.sha256(mix_hash).hexdigest() in text  # the lineage hash of every artifact
    assert "glasslm pipeline --config glasslm/pipeline-config.yaml" in text


def _table(text: str, caption: str) -> list[dict[str, str]]:
    block = text.split(f"**{caption}**", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    head = [c.strip() for c in block[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in block[2:]
    ]


def test_datasheet_numbers_equal_the_ledger(run: Path) -> None:
    text = (run / "release" / "DATASHEET.md").read_text()
    rows = ledger.read(run / "mix").to_pylist()
    rules = _table(text, "Every recipe rule that decided a document: documents and bytes it removed")
    assert rules
    for r in rules:
        removed = [
            x
            for x in rows
            if x["first_rule"] == r["rule"]
            and (x["decision"] in ("removed", "quarantined") or x["split"] == "none")
        ]
        assert int(r["docs_removed"].replace(",", "")) == len(removed)
        assert int(r["bytes_removed"].replace(",", "")) == sum(x["bytes"] for x in removed)
    per_source = _table(text, "Per source, from the ledger")
    for r in per_source:
        mine = [x for x in rows if x["recipe_source"] == r["source"]]
        assert int(r["input docs"].replace(",", "")) == len(mine)
        assert int(r["input bytes"].replace(",", "")) == sum(x["bytes"] for x in mine)
        assert int(r["train docs"].replace(",", "")) == sum(1 for x in mine if x["split"] == "train")
    # every document of the default corpus carries its licence (the unlicensed case: the refusal test)
    assert "Documents without a licence: 0." in text
    assert (run / "release" / "glasslm" / "data" / "unlicensed_documents.jsonl").read_text() == ""


@pytest.fixture(scope="module")
def unlicensed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run on imported JSONL that says nothing of its licence (the default corpus's sources all
    carry one: the stdlib's PSF-2.0 and each pinned distribution's own licence)."""
    import random

    from tests.test_import_pipeline import prose

    base = tmp_path_factory.mktemp("unlicensed")
    rng = random.Random(0)
    (base / "notes").mkdir()
    (base / "notes" / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"n{i}", "text": prose(rng, 240)}) + "\n" for i in range(40))
    )
    (base / "recipe.yaml").write_text(
        "documents: ''\nattributes: []\nseed: 0\nsources:\n"
        "  - {name: notes, match: [notes], heldout: {count: 4}}\n"
    )
    (base / "tasks.jsonl").write_text(
        json.dumps({"question": "An unrelated question about chemistry."}) + "\n"
    )
    (base / "run.yaml").write_text(
        "stages: [corpus, tag, dedupe, decon, mix, tokenizer, tokenize, train, report]\n"
        "corpus: {inputs: [{path: notes, source: notes}]}\ntag: {taggers: [stats]}\ndecon: {tasks: [tasks.jsonl]}\n"
        "mix: {recipe: recipe.yaml}\ntokenizer: {vocab_size: 300}\n"
        "train: {model: {preset: tiny, n_layers: 1}, data: {loader: {seq_len: 64, global_batch_size: 4}},"
        " trainer: {max_steps: 2, checkpoint_every: 2}}\n"
    )
    assert main(["pipeline", "--config", str(base / "run.yaml"), "--out", str(base / "run")]) == 0
    return base / "run"


def test_licence_check_refuses_an_unknown_licence(
    unlicensed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "refused"
    capsys.readouterr()
    assert main(["release", str(unlicensed_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "licence check failed" in err and "source 'notes'" in err
    assert not out.exists()
    # overridden: the release is made, and says so in the card and the manifest
    assert main(["release", str(unlicensed_run), "--out", str(out), "--allow-license-issues"]) == 0
    assert "**Overridden** with `--allow-license-issues`" in (out / "README.md").read_text()
    manifest = json.loads((out / "glasslm" / "manifest.json").read_text())
    assert (
        manifest["metrics"]["license_overridden"] is True
        and manifest["config"]["allow_license_issues"] is True
    )
    unlicensed = [
        json.loads(line)
        for line in (out / "glasslm" / "data" / "unlicensed_documents.jsonl").read_text().splitlines()
    ]
    assert unlicensed and all(d["source"] == "notes" for d in unlicensed)
    text = (out / "DATASHEET.md").read_text()
    assert f"Documents without a licence: {len(unlicensed):,} — notes {len(unlicensed):,}" in text
    assert f"`{unlicensed[0]['id']}`" in text
    # a licence expression passes when one choice (OR) or every part (AND) is allowed
    assert licenses.verdict("MPL-2.0 AND (Apache-2.0 OR MIT)", "apache-2.0") is None
    assert licenses.verdict("GPL-3.0 OR MIT", "apache-2.0") is None
    assert licenses.verdict("GPL-3.0 AND MIT", "apache-2.0") is not None
    assert licenses.verdict("(none)", "apache-2.0") == "no licence recorded"
    assert licenses.verdict("PSF-2.0", "apache-2.0") is None
    assert (
        licenses.verdict("GPL-3.0", "apache-2.0") is not None
        and licenses.verdict("GPL-3.0", "gpl-3.0") is None
    )


def test_a_misspelt_model_licence_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["release", str(run), "--out", str(tmp_path / "r"), "--license=mti"]) == 2
    assert "did you mean 'mit'?" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_release_is_reproducible_and_verify_catches_changes(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["release", str(run), "--out", str(out), "--allow-license-issues"]) == 0
    first, second = repo.branches(run / "release"), repo.branches(out)
    assert {k: v for k, v in first.items() if k != "main"} == {k: v for k, v in second.items() if k != "main"}
    manifest = json.loads((out / "glasslm" / "manifest.json").read_text())
    assert manifest["kind"] == "release" and manifest["metrics"]["license_overridden"] is False
    # the run's own release (RUN/release) ships copies of its manifests: they are not listed as stages
    steps = (out / "README.md").read_text().split("## How to reproduce")[1].split("## Lineage")[0]
    commands = [line for line in steps.splitlines() if line.startswith("glasslm ")]
    assert len(commands) == len(set(commands)) and not any("/release/" in c for c in commands)
    # run again onto the same folder: an earlier release is replaced
    assert main(["release", str(run), "--out", str(out), "--allow-license-issues"]) == 0
    card = out / "README.md"
    card.write_text(card.read_text().replace("## Limitations", "## Limits"))
    problems = verify_release(out, load=False)["problems"]
    assert any("README.md changed" in p for p in problems)
    assert any("section 'Limitations'" in p for p in problems)
    assert any("working tree differs" in p for p in problems)


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records calls and what each uploaded folder held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, "exist_ok": exist_ok}))

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch}))

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        revision: str | None = None,
        commit_message: str | None = None,
        delete_patterns: list[str] | str | None = None,
    ) -> None:
        files = sorted(
            p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
        )
        self.calls.append(("upload_folder", {"repo_id": repo_id, "revision": revision, "files": files}))


def test_push_uploads_every_revision_as_a_branch_then_main(run: Path) -> None:
    hub = FakeHub()
    pushed = push_release(run / "release", "someone/tiny", api=hub)
    revisions = [k for k in repo.branches(run / "release") if k != "main"]
    assert pushed[-1] == "main" and sorted(pushed[:-1]) == sorted(revisions)
    assert hub.calls[0][0] == "create_repo"
    uploads = {c["revision"]: c["files"] for name, c in hub.calls if name == "upload_folder"}
    branches = [c["branch"] for name, c in hub.calls if name == "create_branch"]
    assert sorted(branches) == sorted(revisions)
    for rev in revisions:
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(uploads[rev])
        assert "DATASHEET.md" not in uploads[rev]
    assert {"README.md", "DATASHEET.md", "glasslm/manifest.json", "model.safetensors"} <= set(uploads["main"])


def test_report_links_to_the_card(run: Path) -> None:
    # The release runs after the report: the report names where the card is made.
    md = (run / "report" / "report.md").read_text()
    assert re.search(r"release/README\.md", md)
