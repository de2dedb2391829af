"""``glasslm reproduce DIR``: re-run the glasslm verb recorded in an artifact's manifest, compare the outputs.

Safety: the recorded command is data, never a shell string. It must be a list starting with
``glasslm`` whose words the glasslm parser accepts as a verb that writes an artifact (``--out``);
anything else is refused. The verb runs in this process through the ``Commands`` the caller gives
(``glasslm.cli``'s parser and entry point: this library module imports no command-line module).

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
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm.artifacts import ArtifactError

# Verbs that take their config as a positional argument (the argparse dests).
CONFIG_POSITIONALS = ("config_pos", "recipe")


class RefusedCommand(ArtifactError):
    """The recorded command is not a glasslm verb that this tool will run."""


@dataclass(frozen=True)
class Commands:
    """The command line that recorded commands are parsed and replayed with."""

    parser: Callable[[str | None], argparse.ArgumentParser]  # the parser for one top-level name
    run: Callable[[list[str]], int]  # run one command line (no program name), return its exit status
    path_types: tuple[Callable[[str], Any], ...] = (Path,)  # argument types whose values are paths


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
    recorded_code: dict[str, Any] = field(default_factory=dict)  # the code version that made the artifact
    code: dict[str, Any] = field(default_factory=dict)  # the code version that re-ran it
    output: str = ""

    @property
    def identical(self) -> bool:
        return self.exit_code == 0 and not self.problems and all(f.status in SAME for f in self.files)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
        data["differing"] = [f.path for f in self.files if f.status not in SAME]
        data["measured_fields_ignored"] = sorted(MEASURED_KEYS)
        return data


# "same values": a JSON/JSONL file equal once the fields that measure this run's machine are set aside
SAME = ("identical", "same values")
# Fields that record how long something took, how fast or with how much memory/energy, and when: they
# differ between two runs of the same computation, so reproduce compares every other field exactly.
MEASURED_KEYS = frozenset(
    {
        "seconds",
        "seconds_hash",
        "seconds_total",
        "shard_seconds",
        "sa_build_seconds",
        "bpe_train_seconds",
        "wall_s",
        "time",
        "created",
        "tokens_per_s",
        "docs_per_s",
        "mb_per_s",
        "examples_per_s",
        "examples_per_second",
        "mfu",
        "mem_gb",
        "energy_j",
        "power_w",
    }
)
# What differs by nature between a nested artifact's manifest and its re-run (``created`` is measured):
# how it was invoked and where its inputs were, relative to an output that now lives elsewhere.
# Its ``files`` are compared one by one as files of the outer artifact, and the code version once, above.
_INVOCATION_KEYS = ("command", "cwd", "made_at", "code", "files")


def check_inputs(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the recorded inputs (found relative to the artifact): gone, manifest changed, or files
    changed under an unchanged manifest."""
    problems = []
    for ref in manifest.get("inputs", []):
        where = artifacts.input_location(path, ref)
        state = artifacts.input_state(ref, where)
        if state == "missing":
            problems.append(f"input {where} ({ref.get('kind')}) is gone")
            continue
        if state == "changed":
            problems.append(f"input {where} ({ref.get('kind')}) changed since: its hash differs")
            continue
        if ref.get("kind") == artifacts.FILE_INPUT:
            continue
        report = artifacts.verify(where, check_inputs=False)
        if not report.ok:
            changed = report.changed + report.missing + report.added + report.irregular
            problems.append(f"input {where}: files changed since it was made: {', '.join(changed[:5])}")
    return problems


def _parse(
    words: list[str], commands: Commands
) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    """(the parser, the parsed words, the words it left: dotted overrides)."""
    parser = commands.parser(words[0] if words and not words[0].startswith("-") else None)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, unknown = parser.parse_known_args(words)
    except SystemExit:
        raise RefusedCommand(
            f"not a glasslm command line this version understands ({err.getvalue().strip()}); refusing to run it"
        ) from None
    return parser, args, unknown


@dataclass
class PathMap:
    """Where a path of the recorded command is now.

    Paths inside the run are taken relative to the recorded output and re-applied to the artifact's
    current location, so a moved, copied or downloaded run reproduces from its own files; other paths
    (a recipe, a task file) are taken as recorded, resolved against the recorded working directory."""

    cwd: Path | None
    recorded_out: Path | None  # absolute, as recorded
    artifact: Path  # where the artifact is now
    inputs: list[Path] = field(default_factory=list)  # where the recorded inputs are now

    def bases(self) -> tuple[Path, Path] | None:
        """(where the run was, where it is now): the recorded output and the artifact's location with
        their common tail taken off (``/old/runs/x/eval`` now ``/new/copy/runs/x/eval`` → ``/old``,
        ``/new/copy``). None when nothing moved."""
        if self.recorded_out is None:
            return None
        old, new = self.recorded_out.parts, self.artifact.parts
        same = 0
        while same < min(len(old), len(new)) - 1 and old[-1 - same] == new[-1 - same]:
            same += 1
        before, after = Path(*old[: len(old) - same]), Path(*new[: len(new) - same])
        return None if before == after else (before, after)

    @functools.cached_property
    def moved_cwd(self) -> Path | None:
        """The recorded working directory, moved with the run when it was inside what moved: the re-run
        works there, so the paths it was given relative stay relative, and every path it writes into its
        outputs (a title, a label) reads as recorded."""
        if self.cwd is None:
            return None
        bases = self.bases()
        if bases is None:
            return self.cwd if self.cwd.is_dir() else None
        if not self.cwd.is_relative_to(bases[0]):
            return None
        moved = bases[1] / self.cwd.relative_to(bases[0])
        return moved if moved.is_dir() else None

    def __call__(self, word: str) -> str:
        if not word or word.startswith("-"):
            return word
        recorded = Path(word) if Path(word).is_absolute() or self.cwd is None else self.cwd / word
        recorded = Path(os.path.normpath(recorded))
        if self.recorded_out is not None:
            moved = Path(os.path.normpath(self.artifact / os.path.relpath(recorded, self.recorded_out)))
            if moved.exists():
                here = self.moved_cwd
                same = here is not None and moved == Path(os.path.normpath(here / word))
                return word if same and not Path(word).is_absolute() else str(moved)
        if recorded.exists():
            return str(recorded)
        return word


def rebuild_command(
    manifest: dict[str, Any],
    out: Path,
    config_file: Path | None,
    commands: Commands,
    artifact: Path | None = None,
) -> tuple[list[str], PathMap]:
    """The recorded argv with its output, config and paths replaced (see module docstring), and the map
    that re-pointed its paths (for the config's paths too)."""
    command = manifest.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(w, str) for w in command):
        raise RefusedCommand(f"the recorded command is not a list of words: {command!r}; refusing to run it")
    if Path(command[0]).name != "glasslm":
        raise RefusedCommand(
            f"the recorded command is not a glasslm command ({command[0]!r}); refusing to run it"
        )
    words = command[1:]
    parser, args, unknown = _parse(words, commands)
    if not hasattr(args, "func"):
        raise RefusedCommand(
            f"the recorded command names no glasslm verb: {' '.join(command)}; refusing to run it"
        )
    if args.stage in ("reproduce", "pipeline") or not (hasattr(args, "out") or hasattr(args, "out_pos")):
        raise RefusedCommand(f"'glasslm {args.stage}' does not write one artifact; refusing to reproduce it")
    # None when the verb chose a default output (e.g. `trace index RUN` → RUN/trace_index): --out below.
    out_value = getattr(args, "out", None) or getattr(args, "out_pos", None)
    where = _path_map(args, manifest, artifact)
    n_verb_words = 2 if getattr(args, "verb", None) else 1  # `model init` / `train`: names, never paths
    paths = _path_arguments(parser, words, args, commands.path_types)
    overrides = set(unknown)  # dotted overrides: the resolved config passed below already holds them
    # A config given as a positional (`train CONFIG`, `data mix RECIPE`) is replaced by the recorded one.
    config_word = next((str(getattr(args, d)) for d in CONFIG_POSITIONALS if getattr(args, d, None)), None)
    new: list[str] = list(words[:n_verb_words])
    i = n_verb_words
    while i < len(words):
        word = words[i]
        if config_word is not None and word == config_word and config_file is not None:
            new.append(str(config_file))
            config_file = None  # given once, as the positional
            i += 1
        elif word in ("--out", "--config"):
            i += 2
        elif word.startswith(("--out=", "--config=")) or word == "--force":
            i += 1
        elif word.startswith("--") and word in overrides:
            # "--key=value", or "--key value" as two words (clitools.split_overrides reads them so)
            two = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("--")
            i += 2 if two else 1
        elif out_value is not None and not word.startswith("-") and str(Path(word)) == str(out_value):
            i += 1  # the positional OUT
        else:
            new.append(where(word) if _names_a_path(word, paths, where) else word)
            i += 1
    new += ["--out", str(out)]
    if config_file is not None and hasattr(args, "config"):
        new += ["--config", str(config_file)]
    return new, where


def _path_arguments(
    top: argparse.ArgumentParser,
    words: list[str],
    args: argparse.Namespace,
    path_types: tuple[Callable[[str], Any], ...],
) -> set[str]:
    """The values the verb's parser reads as paths (arguments of ``path_types``): `--preset tiny` is a
    name even when the working directory holds a folder `tiny`."""
    parser: Any = top
    for word in words[: 2 if getattr(args, "verb", None) else 1]:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        parser = sub.choices[word]
    values: set[str] = set()
    for action in parser._actions:
        if action.type in path_types:
            value = getattr(args, action.dest, None)
            values |= {str(v) for v in (value if isinstance(value, list) else [value]) if v is not None}
    return values


def _names_a_path(word: str, typed: set[str], where: PathMap) -> bool:
    """A word to re-point: a Path-typed argument, or (for arguments the parser keeps as text, such as
    `--model`) one that contains a directory separator or that names one of the recorded inputs."""
    if str(Path(word)) in typed or "/" in word:
        return True
    return where(word) != word and any(
        Path(where(word)) == loc or Path(where(word)) in loc.parents for loc in where.inputs
    )


def map_config_paths(config: Any, where: PathMap) -> Any:
    """The recorded config with path values (tokens, init_from, …) re-pointed like the command's paths."""
    if isinstance(config, dict):
        return {k: map_config_paths(v, where) for k, v in config.items()}
    if isinstance(config, list):
        return [map_config_paths(v, where) for v in config]
    if isinstance(config, str) and ("/" in config) and Path(config).is_absolute():
        return where(config)
    return config


def reproduce(path: str | Path, commands: Commands, keep: str | Path | None = None) -> ReproduceReport:
    path = Path(path)
    manifest = artifacts.read_manifest(path)
    report = ReproduceReport(
        artifact=str(path),
        kind=manifest.get("kind"),
        command=list(manifest.get("command") or []),
        recorded_code=dict(manifest.get("code") or {}),
        code=artifacts.code_version(),
    )
    report.problems += check_inputs(path, manifest)
    if report.problems:
        return report
    # A checkpoint written during training is reproduced by re-running the training (the run directory is
    # what the recorded command made) and comparing the checkpoint of the same step.
    in_run = manifest.get("kind") == "checkpoint" and manifest.get("step") is not None
    made = path.parent.parent if in_run else path
    config = (manifest.get("config") or {}).get("train") if in_run else manifest.get("config")
    work = Path(tempfile.mkdtemp(prefix="glasslm-reproduce-"))
    try:
        run_out = work / "out"
        out = run_out / path.relative_to(made) if in_run else run_out
        rerun_config = work / "config.yaml" if config else None
        rerun, where = rebuild_command(manifest, run_out, rerun_config, commands, artifact=made)
        report.rerun = ["glasslm", *rerun]
        if rerun_config is not None:
            rerun_config.write_text(yaml.safe_dump(map_config_paths(config, where), sort_keys=False))
        captured = io.StringIO()
        here = where.moved_cwd
        with (
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
            _replaying(made),
            contextlib.chdir(here) if here is not None else contextlib.nullcontext(),
        ):
            try:
                report.exit_code = commands.run(report.rerun[1:])
            except SystemExit as e:  # argparse errors
                report.exit_code = int(e.code or 0) if isinstance(e.code, int) else 2
        report.output = captured.getvalue()[-4000:]
        if report.exit_code != 0 or not (out / artifacts.MANIFEST).is_file():
            report.problems.append(f"the re-run failed (exit {report.exit_code}); its output is in 'output'")
            return report
        report.files = compare_files(
            manifest.get("files", {}),
            artifacts.hash_tree(out),
            path,
            out,
            repoint=lambda value: map_config_paths(value, where),
            moved=where.bases(),
        )
        if keep is not None:
            shutil.copytree(out, Path(keep), dirs_exist_ok=False)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _replaying(made: Path) -> Iterator[None]:
    """Choices the recorded run made by timing on its machine, replayed as recorded (a training run's
    MKL-or-oneDNN linears: the libraries round differently)."""
    chosen = _manifest_metrics(made).get("linear_backend")
    if not isinstance(chosen, dict):
        yield
        return
    from glasslm.model import onednn

    with onednn.replaying(chosen):
        yield


def _manifest_metrics(path: Path) -> dict[str, Any]:
    return (
        (artifacts.read_manifest(path).get("metrics") or {}) if (path / artifacts.MANIFEST).is_file() else {}
    )


def _path_map(args: argparse.Namespace, manifest: dict[str, Any], artifact: Path | None) -> PathMap:
    """The PathMap of a recorded command (``args``: its parse); without the artifact, paths stay as recorded."""
    out_value = getattr(args, "out", None) or getattr(args, "out_pos", None)
    cwd = Path(manifest["cwd"]) if manifest.get("cwd") else None
    if artifact is None:
        return PathMap(cwd, None, Path.cwd())
    recorded_out = artifact.resolve()  # a verb's default output: the artifact is where the verb put it
    if out_value is not None:
        recorded_out = Path(
            os.path.normpath(out_value if out_value.is_absolute() or cwd is None else cwd / out_value)
        )
    elif manifest.get("made_at"):
        recorded_out = Path(manifest["made_at"])
    inputs = (
        [loc for _, loc in artifacts.inputs_of(artifact)] if (artifact / artifacts.MANIFEST).is_file() else []
    )
    return PathMap(cwd, recorded_out, artifact.resolve(), inputs)


def compare_files(
    recorded: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    old_root: Path | None = None,
    new_root: Path | None = None,
    repoint: Callable[[Any], Any] | None = None,
    moved: tuple[Path, Path] | None = None,
) -> list[FileResult]:
    """Each file's status: identical (same bytes), same values (JSON/YAML equal but for MEASURED_KEYS, and
    for paths the re-run was given re-pointed (``repoint``: a moved run's config names its own copies),
    or text equal once the run's old and new locations are set aside (``moved``: an absolute path a
    report or summary quotes); only when the recorded file is still the one its manifest hashed),
    differs, missing, or extra."""
    results = []
    for rel in sorted(set(recorded) | set(new)):
        old_sha = recorded.get(rel, {}).get("sha256")
        new_sha = new.get(rel, {}).get("sha256")
        if old_sha is None:
            status = "extra"
        elif new_sha is None:
            status = "missing"
        elif old_sha == new_sha:
            status = "identical"
        elif (
            old_root is not None
            and new_root is not None
            and (old_root / rel).is_file()
            and artifacts.sha256_file(old_root / rel) == old_sha
            and _same_values(old_root / rel, new_root / rel, repoint or (lambda value: value), moved)
        ):
            status = "same values"
        else:
            status = "differs"
        results.append(FileResult(rel, status, old_sha, new_sha))
    return results


def _same_values(
    old: Path, new: Path, repoint: Callable[[Any], Any], moved: tuple[Path, Path] | None = None
) -> bool:
    if old.suffix not in (".json", ".jsonl", ".yaml", ".md", ".html", ".txt"):
        return False
    try:
        old_text, new_text = old.read_text(), new.read_text()
        if moved is not None:  # where the run lives is set aside on both sides (a quoted recorded path
            # keeps its old location in the re-run too: it is data of an input, not of this run)
            old_text, new_text = (_without_location(t, moved) for t in (old_text, new_text))
        if old.suffix in (".md", ".html", ".txt"):
            return old_text == new_text
        if old.suffix == ".jsonl":
            a = [json.loads(line) for line in old_text.splitlines() if line.strip()]
            b = [json.loads(line) for line in new_text.splitlines() if line.strip()]
        elif old.suffix == ".yaml":
            a, b = yaml.safe_load(old_text), yaml.safe_load(new_text)
        else:
            a, b = json.loads(old_text), json.loads(new_text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, RecursionError):
        return False
    a = repoint(a)
    if old.name == artifacts.MANIFEST:  # a nested artifact (a checkpoint inside a training run)
        a, b = _comparable_manifest(a), _comparable_manifest(b)
    return bool(_without_measured(a) == _without_measured(b))


def _without_location(text: str, moved: tuple[Path, Path]) -> str:
    for base in sorted(map(str, moved), key=len, reverse=True):  # the longer first: one may hold the other
        text = text.replace(base, "<run location>")
    return text


def _comparable_manifest(manifest: Any) -> Any:
    if not isinstance(manifest, dict):
        return manifest
    out = {k: v for k, v in manifest.items() if k not in _INVOCATION_KEYS}
    out["inputs"] = [{"kind": r.get("kind"), "sha256": r.get("sha256")} for r in manifest.get("inputs", [])]
    return out


def _without_measured(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_measured(v) for k, v in value.items() if k not in MEASURED_KEYS}
    if isinstance(value, list):
        return [_without_measured(v) for v in value]
    return value
