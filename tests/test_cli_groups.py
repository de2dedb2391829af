"""The command line's shape: each top-level group registered by exactly one module (see glasslm/cli.py),
one parser per command, and commands that need no torch do not import it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from glasslm.cli import GROUPS, build_parser, main

EXPECTED = {
    "data": ["corpus", "import", "tag", "dedupe", "decon", "mix", "why", "stats", "tokenize"],
    "tokenizer": ["train", "encode", "import"],
    "trace": ["batch", "doc", "index", "count", "span"],
}


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_group_has_exactly_one_registering_module() -> None:
    names = [n for group, _ in GROUPS for n in group]
    assert len(names) == len(set(names)), "a group registered twice"
    assert list(_choices(build_parser())) == names  # nothing registered outside GROUPS, in GROUPS' order
    for group, target in GROUPS:
        module = target.partition(":")[0]
        # several groups from one module only when they are that module's folder's
        assert len(group) == 1 or module.rpartition(".")[2] == "cli", (group, module)


@pytest.mark.parametrize("command", [n for group, _ in GROUPS for n in group])
def test_a_command_builds_only_its_group(command: str) -> None:
    choices = _choices(build_parser(command))
    group = next(g for g, _ in GROUPS if command in g)
    assert set(choices) == set(group)
    if command in EXPECTED:
        assert list(_choices(choices[command])) == EXPECTED[command]


@pytest.mark.parametrize("command", ["data", "tokenizer", "pipeline", "manifest", "reproduce"])
def test_commands_that_need_no_torch_do_not_import_it(command: str) -> None:
    code = (
        "import sys\n"
        "from glasslm.cli import build_parser\n"
        f"build_parser({command!r})\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_out_url_is_refused_clearly_by_verbs_that_write_local_directories(
    capsys: pytest.CaptureFixture,
) -> None:
    """Object storage is for the data stages' outputs; any other verb says so before any work."""
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "init", "--preset", "tiny", "--out", "s3://bucket/model"])
    assert exit_info.value.code == 2
    assert "s3://bucket/model: this verb writes to a local directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a pipeline run directory is local (it made a folder named 's3:')
        main(["pipeline", "--out", "s3://bucket/pipe"])
    assert "s3://bucket/pipe: this verb writes to a local directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "stats", "s3://bucket/run/mix"],
        ["data", "why", "doc", "s3://bucket/run/mix"],
        ["tokenizer", "train", "s3://bucket/run/mix", "--out", "tok"],
        ["reproduce", "s3://bucket/run/corpus"],
        ["eval", "s3://bucket/run/train"],
    ],
)
def test_a_url_for_a_local_input_is_refused_clearly(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """A local-only input given a URL says so (argparse's Path made it 's3:/bucket/…: no such directory')."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "this argument is a local path" in err and "s3:/bucket" not in err.replace("s3://", ""), err


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """`glasslm … --json | head`: the broken pipe ends the command with SIGPIPE's status, no error line."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "glasslm", "model", "info", "--preset", "tiny", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "error" not in err, err


def test_a_flags_value_with_a_space_goes_to_the_flag(tmp_path: Path) -> None:
    """`--out=/path/with space` and `--taggers=stats, gopher` were taken for config overrides (only a
    key no flag has, `--rl.train_families=[a, b]`, is one)."""
    out = tmp_path / "my model"
    assert main(["model", "init", "--preset", "tiny", "--model.vocab_size=128", f"--out={out}"]) == 0
    assert (out / "manifest.json").is_file()


def test_a_spaced_override_is_recorded_in_the_command(tmp_path: Path) -> None:
    """The manifest's command left out the overrides that bypass argparse (reproduce then re-ran without)."""
    import json

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "one short document for tagging"}\n')
    assert main(["data", "import", str(src), "--out", str(tmp_path / "corpus")]) == 0
    spaced = "--tag.taggers=[stats, gopher]"
    assert main(["data", "tag", str(tmp_path / "corpus"), spaced, "--out", str(tmp_path / "tags")]) == 0
    manifest = json.loads((tmp_path / "tags" / "manifest.json").read_text())
    assert spaced in manifest["command"] and manifest["config"]["tag"]["taggers"] == ["stats", "gopher"]
