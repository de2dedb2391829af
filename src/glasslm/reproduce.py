"""``glasslm reproduce DIR``: re-run the glasslm verb recorded in an artifact's manifest, compare the outputs.

Safety: the recorded command is data, never a shell string. It must be a list starting with
``glasslm`` whose words the glasslm parser accepts as a verb that writes an artifact (``--out``);
anything else is refused. The verb runs in this process through ``glasslm.cli.main``.

Procedure:

1. every recorded input must still exist with the same manifest hash and unchanged files;
2. the command is rebuilt from the recorded one: the output goes to a temporary directory, any
   ``--config FILE`` and ``--key=value`` overrides are replaced by the *resolved* config recorded in
   the manifest (written to a temporary YAML), relative paths are resolved against the recorded
   working directory (or matched to the recorded inputs);
3. every file of the new output is hashed and compared with the hashes recorded in the manifest.

The manifest itself is not compared: its ``created`` time and ``command`` differ by nature.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm.artifacts import ArtifactError


class RefusedCommand(ArtifactError):
    """The recorded command is not a glasslm verb that this tool will run."""


@dataclass
class FileResult:
    path: str
    status: str  # identical | differs | missing (not produced again) | extra (new file)
    recorded_sha256: str | None = None
    new_sha256: str | None = None


@dataclass
class ReproduceReport:
    artifact: str
    kind: str | None
    command: list[str]
    rerun: list[str] = field(default_factory=list)
    exit_code: int | None = None
    files: list[FileResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def identical(self) -> bool:
        return self.exit_code == 0 and not self.problems and all(f.status == "identical" for f in self.files)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
        data["differing"] = [f.path for f in self.files if f.status != "identical"]
        return data


def check_inputs(manifest: dict[str, Any]) -> list[str]:
    """Problems with the recorded inputs: gone, manifest changed, or files changed under an unchanged manifest."""
    problems = []
    for ref in manifest.get("inputs", []):
        path = Path(ref.get("path", ""))
        if not (path / artifacts.MANIFEST).is_file():
            problems.append(f"input {path} ({ref.get('kind')}) is gone")
            continue
        if ref.get("sha256") and artifacts.manifest_hash(path) != ref["sha256"]:
            problems.append(f"input {path} ({ref.get('kind')}) changed since: its manifest hash differs")
            continue
        report = artifacts.verify(path, check_inputs=False)
        if not report.ok:
            changed = report.changed + report.missing + report.added
            problems.append(f"input {path}: files changed since it was made: {', '.join(changed[:5])}")
    return problems


def _parse(words: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from glasslm.cli import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, unknown = parser.parse_known_args(words)
    except SystemExit:
        raise RefusedCommand(
            f"not a glasslm command line this version understands ({err.getvalue().strip()}); refusing to run it"
        ) from None
    return args, unknown


def rebuild_command(manifest: dict[str, Any], out: Path, config_file: Path | None) -> list[str]:
    """The recorded argv with its output, config and relative paths replaced (see module docstring)."""
    command = manifest.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(w, str) for w in command):
        raise RefusedCommand(f"the recorded command is not a list of words: {command!r}; refusing to run it")
    if Path(command[0]).name != "glasslm":
        raise RefusedCommand(f"the recorded command is not a glasslm command ({command[0]!r}); refusing to run it")
    words = command[1:]
    args, unknown = _parse(words)
    if not hasattr(args, "func"):
        raise RefusedCommand(f"the recorded command names no glasslm verb: {' '.join(command)}; refusing to run it")
    if args.stage in ("reproduce", "pipeline") or not (hasattr(args, "out") or hasattr(args, "out_pos")):
        raise RefusedCommand(f"'glasslm {args.stage}' does not write one artifact; refusing to reproduce it")
    # None when the verb chose a default output (e.g. `trace index RUN` → RUN/trace_index): --out below.
    out_value = getattr(args, "out", None) or getattr(args, "out_pos", None)
    overrides = set(unknown)  # dotted overrides: the resolved config passed below already holds them
    new: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("--out", "--config"):
            i += 2
        elif word.startswith(("--out=", "--config=")):
            i += 1
        elif word.startswith("--") and word in overrides:
            # "--key=value", or "--key value" as two words (clitools.split_overrides reads them so)
            two = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("--")
            i += 2 if two else 1
        elif out_value is not None and not word.startswith("-") and str(Path(word)) == str(out_value):
            i += 1  # the positional OUT
        else:
            new.append(_resolve_path(word, manifest))
            i += 1
    new += ["--out", str(out)]
    if config_file is not None and getattr(args, "accepts_overrides", False):
        new += ["--config", str(config_file)]
    return new


def _resolve_path(word: str, manifest: dict[str, Any]) -> str:
    """An argument that named a relative path when recorded, made absolute; other words unchanged."""
    if word.startswith("-") or Path(word).is_absolute():
        return word
    cwd = manifest.get("cwd")
    if cwd and (Path(cwd) / word).exists():
        return str(Path(cwd) / word)
    if Path(word).exists():
        return word
    tail = Path(word).as_posix().rstrip("/")
    for ref in manifest.get("inputs", []):  # older manifests without cwd: match an input by its tail
        path = Path(ref.get("path", "")).as_posix()
        if tail and (path == tail or path.endswith("/" + tail)):
            return path
    return word


def reproduce(path: str | Path, keep: str | Path | None = None) -> ReproduceReport:
    from glasslm.cli import main

    path = Path(path)
    manifest = artifacts.read_manifest(path)
    report = ReproduceReport(artifact=str(path), kind=manifest.get("kind"), command=list(manifest.get("command") or []))
    report.problems += check_inputs(manifest)
    if report.problems:
        return report
    work = Path(tempfile.mkdtemp(prefix="glasslm-reproduce-"))
    try:
        config_file = None
        if manifest.get("config"):
            config_file = work / "config.yaml"
            config_file.write_text(yaml.safe_dump(manifest["config"], sort_keys=False))
        out = work / "out"
        report.rerun = ["glasslm", *rebuild_command(manifest, out, config_file)]
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            try:
                report.exit_code = main(report.rerun[1:])
            except SystemExit as e:  # argparse errors
                report.exit_code = int(e.code or 0) if isinstance(e.code, int) else 2
        report.output = captured.getvalue()[-4000:]
        if report.exit_code != 0 or not (out / artifacts.MANIFEST).is_file():
            report.problems.append(f"the re-run failed (exit {report.exit_code}); its output is in 'output'")
            return report
        report.files = compare_files(manifest.get("files", {}), artifacts.hash_tree(out))
        if keep is not None:
            shutil.copytree(out, Path(keep), dirs_exist_ok=False)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare_files(recorded: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[FileResult]:
    results = []
    for rel in sorted(set(recorded) | set(new)):
        old_sha = recorded.get(rel, {}).get("sha256")
        new_sha = new.get(rel, {}).get("sha256")
        if old_sha is None:
            status = "extra"
        elif new_sha is None:
            status = "missing"
        else:
            status = "identical" if old_sha == new_sha else "differs"
        results.append(FileResult(rel, status, old_sha, new_sha))
    return results
