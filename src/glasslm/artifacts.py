"""Artifact directories: every output of glasslm is a directory with a ``manifest.json``.

The manifest records what the directory holds (sha256 and size of every file), how it was made
(command line, resolved config, code version) and from what (the manifests of its input artifacts,
by hash). Lineage back to the raw documents is a walk over input manifests.

Directories are built in a temporary sibling and renamed into place, so a crash or kill never leaves
a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm import __version__
from glasslm.config import to_dict

MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact is missing, of the wrong kind, or damaged."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> dict[str, Any]:
    """Package version plus, when running from a git checkout, its commit and whether it is dirty."""
    root = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"version": __version__, "git": None, "dirty": None}
    if not (root / ".git").exists():
        return info
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file below ``root`` except the manifest, keyed by relative path."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{path}: not an artifact directory (no {MANIFEST})")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{manifest}: not valid JSON ({e})") from None


def manifest_hash(path: str | Path) -> str:
    return sha256_file(Path(path) / MANIFEST)


def input_ref(path: str | Path) -> dict[str, Any]:
    """How a manifest names one of its inputs: path, kind and the hash of the input's manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    return {"path": str(path.resolve()), "kind": manifest.get("kind"), "sha256": manifest_hash(path)}


def find_artifact(path: str | Path, kinds: str | Sequence[str], subdirs: Sequence[str] = ()) -> Path:
    """Resolve ``path`` to an artifact of one of ``kinds``.

    ``path`` may be the artifact itself or a run directory (``runs/NAME``) that holds it in one of
    ``subdirs`` (default: a sub-directory named like the kind).
    """
    path = Path(path)
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    if (path / MANIFEST).is_file():
        kind = read_manifest(path).get("kind")
        if kind in wanted:
            return path
        if not subdirs:
            raise ArtifactError(f"{path}: is a '{kind}' artifact, expected {' or '.join(wanted)}")
    if not path.exists():
        raise ArtifactError(f"{path}: no such directory (expected a {' or '.join(wanted)} artifact)")
    for sub in list(subdirs) or wanted:
        candidate = path / sub
        if (candidate / MANIFEST).is_file() and read_manifest(candidate).get("kind") in wanted:
            return candidate
    raise ArtifactError(f"{path}: no {' or '.join(wanted)} artifact here or in its sub-directories")


@dataclass
class ArtifactWriter:
    """Handle given to the code that fills an artifact: write files under ``path``."""

    path: Path
    kind: str
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new names, renames) durable."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root``, so a rename after it publishes durable data."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fsync_dir(directory)


def write_manifest(
    root: Path,
    kind: str,
    *,
    config: Any = None,
    inputs: Sequence[str | Path | Mapping[str, Any]] = (),
    command: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash everything under ``root`` and write its manifest (atomically). Returns the manifest."""
    refs = [dict(i) if isinstance(i, Mapping) else input_ref(i) for i in inputs]
    manifest: dict[str, Any] = {
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else command_line(),
        "cwd": os.getcwd(),  # relative paths in the command are relative to this (glasslm reproduce)
        "config": to_dict(config) if config is not None else {},
        "code": code_version(),
        "inputs": refs,
        "files": hash_tree(root),
        "metrics": dict(metrics or {}),
    }
    manifest.update(extra or {})
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest


_RECORDED_COMMAND: list[str] | None = None


@contextlib.contextmanager
def recording_command(argv: Sequence[str]) -> Iterator[None]:
    """Record ``argv`` as the command of the manifests written inside (``cli.main`` given an argv list,
    as in tests and ``glasslm reproduce``, would otherwise record the host process's ``sys.argv``)."""
    global _RECORDED_COMMAND
    previous, _RECORDED_COMMAND = _RECORDED_COMMAND, list(argv)
    try:
        yield
    finally:
        _RECORDED_COMMAND = previous


def command_line() -> list[str]:
    if _RECORDED_COMMAND is not None:
        return list(_RECORDED_COMMAND)
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("glasslm", "__main__.py", "cli.py"):
        argv[0] = "glasslm"
    return argv


@contextlib.contextmanager
def create_artifact(
    out: str | Path,
    kind: str,
    *,
    config: Any = None,
    inputs: Sequence[str | Path | Mapping[str, Any]] = (),
    command: Sequence[str] | None = None,
    overwrite: bool = True,
) -> Iterator[ArtifactWriter]:
    """Build an artifact in a temporary sibling of ``out``; on success hash, fsync and rename it.

    On an exception the temporary directory is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    writer = ArtifactWriter(path=tmp, kind=kind)
    try:
        yield writer
        write_manifest(
            tmp, kind, config=config, inputs=inputs, command=command, metrics=writer.metrics, extra=writer.extra
        )
        fsync_tree(tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out: Path) -> None:
    """Move a finished directory into place, replacing an older one at ``out``."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class VerifyReport:
    path: Path
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    inputs_changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added or self.inputs_changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "changed": self.changed,
            "missing": self.missing,
            "added": self.added,
            "inputs_changed": self.inputs_changed,
        }


def verify(path: str | Path, check_inputs: bool = True) -> VerifyReport:
    """Re-hash an artifact and compare with its manifest (and, optionally, its inputs' manifests)."""
    path = Path(path)
    manifest = read_manifest(path)
    report = VerifyReport(path=path)
    recorded: dict[str, dict[str, Any]] = manifest.get("files", {})
    actual = hash_tree(path)
    for rel, info in recorded.items():
        if rel not in actual:
            report.missing.append(rel)
        elif actual[rel]["sha256"] != info["sha256"]:
            report.changed.append(rel)
    report.added = sorted(set(actual) - set(recorded))
    if check_inputs:
        for ref in manifest.get("inputs", []):
            parent = Path(ref.get("path", ""))
            if (parent / MANIFEST).is_file() and ref.get("sha256") and manifest_hash(parent) != ref["sha256"]:
                report.inputs_changed.append(str(parent))
    return report


def lineage(path: str | Path, _seen: set[str] | None = None) -> dict[str, Any]:
    """The tree of manifests from ``path`` back through its inputs."""
    path = Path(path)
    seen = _seen if _seen is not None else set()
    manifest = read_manifest(path)
    node: dict[str, Any] = {
        "path": str(path),
        "kind": manifest.get("kind"),
        "created": manifest.get("created"),
        "command": manifest.get("command"),
        "manifest_sha256": manifest_hash(path),
        "code": manifest.get("code"),
        "inputs": [],
    }
    key = str(path.resolve())
    if key in seen:
        return node
    seen.add(key)
    for ref in manifest.get("inputs", []):
        parent = Path(ref.get("path", ""))
        if (parent / MANIFEST).is_file():
            child = lineage(parent, seen)
            child["recorded_sha256"] = ref.get("sha256")
            child["matches"] = child["manifest_sha256"] == ref.get("sha256")
        else:
            child = {"path": str(parent), "kind": ref.get("kind"), "missing": True, "inputs": []}
        node["inputs"].append(child)
    return node
