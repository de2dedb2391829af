"""Artifact directories: every output of glasslm is a directory with a ``manifest.json``.

The manifest records what the directory holds (sha256 and size of every file), how it was made
(command line, resolved config, code version) and from what (the manifests of its input artifacts,
by hash). Lineage back to the raw documents is a walk over input manifests.

Directories are built in a temporary sibling and renamed into place, so a crash or kill never leaves
a half-written artifact under the final name.

Safety rules (docs/glass-box.md):
- ``--out`` never deletes what glasslm did not make: an existing non-empty directory is replaced only
  when it is an artifact of the same kind (``--force``: of any kind), and never when it holds one of
  the inputs.
- Input paths are stored relative to the artifact (with the hash of the input's manifest), so a run
  directory can be moved, copied or downloaded and still verify; a missing input is an error.
- Only regular files are artifact content: a symlink, FIFO or device below an artifact is reported by
  ``verify`` and refused by every verb that reads the artifact, and is never followed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glasslm import __version__, processes
from glasslm.config import to_dict

if TYPE_CHECKING:
    from glasslm.data.documents import Location

MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


# Artifacts at object-store URLs (s3://, gs://: issue #19) are read and written through
# glasslm.data.storage, imported lazily so that local use never loads fsspec.
def is_url(path: object) -> bool:
    """Whether ``path`` names an object-store location (``s3://``, ``gs://``…), not a local path."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


class ArtifactError(RuntimeError):
    """An artifact is missing, of the wrong kind, or damaged."""


def sha256_file(path: str | Path | Location) -> str:
    if is_url(path):
        from glasslm.data import storage

        return storage.sha256(str(path))
    digest = hashlib.sha256()
    with open(str(path), "rb") as f:
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


def walk_tree(root: Path) -> tuple[list[str], list[str]]:
    """The regular files below ``root`` (relative POSIX paths, sorted) and everything else that is not a
    directory: symlinks (to files or directories), FIFOs, sockets, devices. Links are never followed."""
    regular: list[str] = []
    irregular: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():  # os.walk lists a link to a directory among the directories
                dirnames.remove(name)
                irregular.append((base / name).relative_to(root).as_posix())
        for name in filenames:
            mode = os.lstat(base / name).st_mode
            rel = (base / name).relative_to(root).as_posix()
            (regular if stat.S_ISREG(mode) else irregular).append(rel)
    return sorted(regular), sorted(irregular)


def check_regular(root: Path) -> None:
    """Refuse an artifact that holds anything but regular files and directories (a planted symlink to
    /etc/passwd, a FIFO that would block a reader): cheap, no hashing, done on every input."""
    _, irregular = walk_tree(root)
    if irregular:
        more = f" (+{len(irregular) - 3} more)" if len(irregular) > 3 else ""
        raise ArtifactError(
            f"{root}: holds {', '.join(irregular[:3])}{more}, which is not a regular file (a symlink or special "
            "file); artifacts hold regular files only — remove it, or rebuild the artifact"
        )


def hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every regular file below ``root`` except the manifest, keyed by relative path."""
    return _hash_files(root, walk_tree(root)[0])


def _hash_files(root: Path, regular: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {
        rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for rel in regular
        if rel != MANIFEST
    }


def read_manifest(path: str | Path | Location) -> dict[str, Any]:
    if is_url(path):
        from glasslm.data import storage

        text = storage.read_text(storage.join(str(path), MANIFEST))
        if text is None:
            raise ArtifactError(f"{path}: not an artifact (no {MANIFEST})")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}/{MANIFEST}: not valid JSON ({e})") from None
    path = Path(str(path))
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{path}: not an artifact directory (no {MANIFEST})")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{manifest}: not valid JSON ({e})") from None


def manifest_hash(path: str | Path | Location) -> str:
    if is_url(path):
        return sha256_file(f"{str(path).rstrip('/')}/{MANIFEST}")
    return sha256_file(Path(str(path)) / MANIFEST)


def input_ref(path: str | Path | Location) -> dict[str, Any]:
    """How a manifest names one of its inputs: path, kind and the hash of the input's manifest.

    The path is absolute here; ``write_manifest`` stores it relative to the artifact it writes."""
    if is_url(path):
        from glasslm.data import storage

        url = storage.normalize(str(path))
        return {"path": url, "kind": read_manifest(url).get("kind"), "sha256": manifest_hash(url)}
    path = Path(str(path))
    manifest = read_manifest(path)
    return {"path": str(path.resolve()), "kind": manifest.get("kind"), "sha256": manifest_hash(path)}


def input_location(artifact: str | Path | Location, ref: Mapping[str, Any]) -> Path:
    """Where an input named in ``artifact``'s manifest is now: relative paths are relative to the artifact
    (so a moved or copied run finds its own inputs); absolute ones come from manifests written before.
    An input at a URL, or relative to an artifact at a URL, is a UPath (typed as Path: callers only read
    through it, and UPath has the same reading interface)."""
    text = str(ref.get("path", ""))
    if is_url(text) or (is_url(artifact) and not Path(text).is_absolute()):
        from glasslm.data import storage
        from glasslm.data.documents import location

        where = text if is_url(text) else storage.resolve(str(artifact), text)
        return location(where)  # type: ignore[return-value]  # a UPath, see above
    recorded = Path(text)
    if recorded.is_absolute():
        return recorded
    return Path(os.path.normpath(Path(str(artifact)).resolve() / recorded))


def inputs_of(artifact: str | Path | Location) -> list[tuple[dict[str, Any], Path]]:
    """Each input reference of an artifact's manifest with its current location."""
    return [(ref, input_location(artifact, ref)) for ref in read_manifest(artifact).get("inputs", [])]


def input_of_kind(artifact: str | Path, kind: str) -> Path | None:
    """The current location of ``artifact``'s first input of ``kind`` (None if it names none)."""
    return next((where for ref, where in inputs_of(artifact) if ref.get("kind") == kind), None)


FILE_INPUT = "file"  # an input that is a plain file (an evaluation set), recorded with its own sha256


def input_state(ref: Mapping[str, Any], where: Path | Location) -> str:
    """``ok``, ``missing`` or ``changed``: an artifact input by its manifest hash, a file input by its bytes."""
    if ref.get("kind") == FILE_INPUT:
        if not where.is_file():
            return "missing"
        return "ok" if not ref.get("sha256") or sha256_file(where) == ref["sha256"] else "changed"
    if not (where / MANIFEST).is_file():
        return "missing"
    return "ok" if not ref.get("sha256") or manifest_hash(where) == ref["sha256"] else "changed"


def _relative_ref(ref: Mapping[str, Any], root: Path, location: str | None = None) -> dict[str, Any]:
    """``ref`` with an absolute path made relative to ``root`` (the artifact or its temporary sibling:
    same parent, so the same relative path). ``location``: the URL the artifact is built for (its
    ``root`` is then a local staging directory): inputs in the same bucket are stored relative to it,
    others as they are (a URL, an absolute local path)."""
    out = dict(ref)
    if location is not None:
        from glasslm.data import storage

        recorded = str(out.get("path", ""))
        rel = storage.relative(recorded, location) if is_url(recorded) else None
        if rel is not None:
            out["path"] = rel
        return out
    path = Path(str(out.get("path", "")))
    if path.is_absolute():
        out["path"] = os.path.relpath(path, root.resolve())
    return out


def find_artifact(
    path: str | Path | Location, kinds: str | Sequence[str], subdirs: Sequence[str] = ()
) -> Path:
    """Resolve ``path`` to an artifact of one of ``kinds``.

    ``path`` may be the artifact itself or a run directory (``runs/NAME``) that holds it in one of
    ``subdirs`` (default: a sub-directory named like the kind). The artifact found must hold regular
    files only (``check_regular``).
    """
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    if is_url(path):
        return _find_remote(str(path), wanted, subdirs)  # type: ignore[return-value]  # a UPath
    path = Path(str(path))
    found: Path | None = None
    if (path / MANIFEST).is_file():
        kind = read_manifest(path).get("kind")
        if kind in wanted:
            found = path
        elif not subdirs:
            raise ArtifactError(f"{path}: is a '{kind}' artifact, expected {' or '.join(wanted)}")
    if found is None and not path.exists():
        raise ArtifactError(f"{path}: no such directory (expected an artifact of kind {' or '.join(wanted)})")
    for sub in [] if found is not None else list(subdirs) or wanted:
        candidate = path / sub
        if (candidate / MANIFEST).is_file() and read_manifest(candidate).get("kind") in wanted:
            found = candidate
            break
    if found is None:
        raise ArtifactError(f"{path}: no {' or '.join(wanted)} artifact here or in its sub-directories")
    check_regular(found)
    return found


def _find_remote(url: str, wanted: Sequence[str], subdirs: Sequence[str]) -> Location:
    """``find_artifact`` for a URL: the artifact (a UPath), found by its manifest, the commit marker."""
    from glasslm.data import storage
    from glasslm.data.documents import location

    url = storage.normalize(url)
    for candidate in [url, *(storage.join(url, sub) for sub in list(subdirs) or wanted)]:
        text = storage.read_text(storage.join(candidate, MANIFEST))
        if text is None:
            continue
        kind = json.loads(text).get("kind")
        if kind in wanted:
            return location(candidate)
        if candidate == url and not subdirs:
            raise ArtifactError(f"{url}: is a '{kind}' artifact, expected {' or '.join(wanted)}")
    raise ArtifactError(f"{url}: no {' or '.join(wanted)} artifact here or in its sub-directories")


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
    inputs: Sequence[str | Path | Location | Mapping[str, Any]] = (),
    command: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    location: str | None = None,
) -> dict[str, Any]:
    """Hash everything under ``root`` and write its manifest (atomically). Returns the manifest.

    ``root`` is the artifact or a temporary sibling of it: input paths are stored relative to it.
    ``location``: the object-store URL the artifact will be committed to (``root`` is its staging)."""
    refs = [_relative_ref(i if isinstance(i, Mapping) else input_ref(i), root, location) for i in inputs]
    manifest: dict[str, Any] = {
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else command_line(),
        "cwd": os.getcwd(),  # relative paths in the command are relative to this (glasslm reproduce)
        "config": to_dict(config) if config is not None else {},
        "code": code_version(),
        "inputs": refs,
        "files": _hash_staged(root) if location is not None else hash_tree(root),
        "metrics": dict(metrics or {}),
    }
    manifest.update(extra or {})
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, root / MANIFEST)
    return manifest


def _hash_staged(root: Path) -> dict[str, dict[str, Any]]:
    """``hash_tree`` of a staged object-store artifact: its local files and those its shard tasks left
    on the store (hashed by the tasks; glasslm.data.storage)."""
    from glasslm.data import storage

    files = {**storage.remote_hashes(root), **hash_tree(root)}
    return {rel: files[rel] for rel in sorted(files)}


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


_FORCE = False


@contextlib.contextmanager
def forcing(force: bool) -> Iterator[None]:
    """Inside, ``--out`` may replace an artifact of another kind, or one with files its manifest does not
    list (the verbs' ``--force``). A directory that is not an artifact is never replaced."""
    global _FORCE
    previous, _FORCE = _FORCE, bool(force)
    try:
        yield
    finally:
        _FORCE = previous


def check_run_out(out: Path, inputs: Sequence[str | Path | Location | Mapping[str, Any]] = ()) -> None:
    """The ``--out`` rule for a training run (which a verb continues with ``--resume``): a new or empty
    directory, or one that holds a training run — its manifest of kind ``train_run``, or, for a run that
    was stopped before it finished, its config.yaml beside checkpoints/ or metrics.jsonl — and that is
    not (and is not inside) one of the inputs."""
    _check_out_path(out, "the run", inputs)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / MANIFEST).is_file():
        kind = read_manifest(out).get("kind")
        if kind != "train_run":
            raise ArtifactError(
                f"{out}: holds a '{kind}' artifact, not a training run; refusing to write into it (nothing was "
                "changed). Choose a new --out"
            )
        return
    if not (
        (out / "config.yaml").is_file()
        and ((out / "checkpoints").is_dir() or (out / "metrics.jsonl").is_file())
    ):
        raise ArtifactError(
            f"{out}: exists, is not empty and is not a training run; refusing to write into it (nothing was "
            "changed). Choose a new --out"
        )


def _check_out_path(
    out: Path, what: str, inputs: Sequence[str | Path | Location | Mapping[str, Any]]
) -> None:
    """What every ``--out`` must be, whatever it will hold: a named path, not a symlink or a file, and not
    one of the inputs (checked before anything else that could advise ``--force``, which an input never
    allows)."""
    if str(out) in ("", "."):
        raise ArtifactError(f"--out is empty or '.': name a new directory for {what}")
    if out.is_symlink():
        raise ArtifactError(f"{out}: is a symlink; --out must be a directory path (nothing was changed)")
    check_not_an_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise ArtifactError(
            f"{out}: exists and is not a directory; choose another --out (nothing was changed)"
        )


def check_not_an_input(
    out: Path | Location | str, inputs: Sequence[str | Path | Location | Mapping[str, Any]]
) -> None:
    """``out`` must not be, hold, or lie inside (an artifact) one of the inputs."""
    if is_url(out):
        _check_url_not_an_input(str(out), inputs)
        return
    target = Path(str(out)).resolve()
    for item in inputs:
        recorded = str(item.get("path", "")) if isinstance(item, Mapping) else str(item)
        if is_url(recorded) or not recorded:
            continue  # an object-store input cannot be (or hold) a local --out
        where = Path(recorded).resolve()
        if where == target or target in where.parents:
            raise ArtifactError(f"--out {out} would replace the input {where}; choose another --out")
        if where in target.parents and (where / MANIFEST).is_file():
            raise ArtifactError(
                f"--out {out} is inside the input artifact {where}: it would add files its manifest does not "
                "list (verify would then fail); choose another --out"
            )


def _check_url_not_an_input(out: str, inputs: Sequence[str | Path | Location | Mapping[str, Any]]) -> None:
    """``check_not_an_input`` for an object-store ``--out``: its URL must not equal, lie below, or hold an
    input's (an object store has no links, so the URLs say it all)."""
    from glasslm.data import storage

    target = storage.normalize(out)
    for item in inputs:
        recorded = str(item.get("path", "")) if isinstance(item, Mapping) else str(item)
        if not is_url(recorded):
            continue
        where = storage.normalize(recorded)
        if where == target or where.startswith(target + "/"):
            raise ArtifactError(f"--out {out} would replace the input {where}; choose another --out")
        if target.startswith(where + "/"):
            raise ArtifactError(
                f"--out {out} is inside the input artifact {where}: it would add objects its manifest does "
                "not list (verify would then fail); choose another --out"
            )


def check_out(
    out: Path, kind: str | None, inputs: Sequence[str | Path | Location | Mapping[str, Any]] = ()
) -> None:
    """Refuse an ``--out`` whose replacement could lose something glasslm did not make.

    Allowed: a path that does not exist, an empty directory, or an artifact of the same kind whose files
    are exactly those its manifest lists (re-running a verb). ``--force`` also allows another kind and
    unlisted files. Never allowed: a non-empty directory without a manifest, a file, a symlink, or a
    directory that is (or holds) one of the inputs. ``kind`` None: everything but the kind (checked before
    a verb starts its work, so a refusal costs nothing)."""
    _check_out_path(out, "the artifact", inputs)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise ArtifactError(
                f"{out}: exists, is not empty and is not a glasslm artifact; refusing to replace it "
                "(nothing was deleted). Choose a new --out, or empty the directory yourself"
            )
        existing = read_manifest(out)
        listed = set(existing.get("files", {})) | {MANIFEST}
        regular, irregular = walk_tree(out)
        unlisted = sorted(set(regular) - listed) + irregular
        if kind is not None and existing.get("kind") != kind and not _FORCE:
            raise ArtifactError(
                f"{out}: holds a '{existing.get('kind')}' artifact, not a '{kind}' one; refusing to replace "
                "it (nothing was deleted). Choose another --out, or add --force to replace it"
            )
        if unlisted and not _FORCE:
            raise ArtifactError(
                f"{out}: holds files its manifest does not list ({', '.join(unlisted[:3])}"
                f"{' …' if len(unlisted) > 3 else ''}); refusing to replace it (nothing was deleted). "
                "Move them away, or add --force"
            )


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """Inside, this process alone writes ``out``: an exclusive lock on ``.NAME.lock`` beside it, held for
    the whole verb (two runs with one --out used to delete each other's work directory, or both train).
    The lock file is removed when the verb ends; the lock goes with the process if it is killed."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ArtifactError(
                f"{out}: another glasslm process (pid {holder}) is writing it; wait for it to end, or choose "
                "another --out"
            ) from None
        try:  # the file locked must still be the one at the path: a finishing holder unlinks it
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def create_artifact(
    out: str | Path | Location,
    kind: str,
    *,
    config: Any = None,
    inputs: Sequence[str | Path | Location | Mapping[str, Any]] = (),
    command: Sequence[str] | None = None,
    overwrite: bool = True,
) -> Iterator[ArtifactWriter]:
    """Build an artifact in a temporary sibling of ``out``; on success hash, fsync and rename it.

    ``out`` must pass ``check_out`` (the ``--out`` rule). On an exception the temporary directory is
    removed and ``out`` is left as it was. An object-store URL (``s3://…``) is built in a local staging
    directory and committed with its manifest last (glasslm.data.storage).
    """
    if is_url(out):
        from glasslm.data import storage

        url = storage.normalize(str(out))
        _check_url_not_an_input(url, inputs)
        if not overwrite and storage.read_text(storage.join(url, MANIFEST)) is not None:
            raise ArtifactError(f"{url}: already exists")
        try:
            storage.check_out(url, kind, _FORCE)
        except storage.StorageError as e:
            raise ArtifactError(str(e)) from None
        tmp = storage.staging_dir(url) / f"artifact.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        remote = ArtifactWriter(path=tmp, kind=kind)
        try:
            yield remote
            write_manifest(
                tmp,
                kind,
                config=config,
                inputs=inputs,
                command=command,
                metrics=remote.metrics,
                extra=remote.extra,
                location=url,
            )
            storage.commit(tmp, url)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):  # the URL's staging directory, unless a stage's work is there
                tmp.parent.rmdir()
        return
    out = Path(str(out))
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out}: already exists")
    check_out(out, kind, inputs)
    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            # ours from before (same process id), or a killed process's: nothing live is writing it
            if pid.isdigit() and (int(pid) == os.getpid() or not processes.alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise ArtifactError(f"{out}: cannot create the artifact there ({e.strerror or e})") from None
    writer = ArtifactWriter(path=tmp, kind=kind)
    try:
        yield writer
        write_manifest(
            tmp,
            kind,
            config=config,
            inputs=inputs,
            command=command,
            metrics=writer.metrics,
            # where it was made: a verb's default output (`report RUN` → RUN/report) is then known to
            # `glasslm reproduce` after the run has moved
            extra={"made_at": str(out), **writer.extra},
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
    path: Path | Location
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    irregular: list[str] = field(default_factory=list)  # symlinks and special files: never artifact content
    inputs_changed: list[str] = field(default_factory=list)
    inputs_missing: list[str] = field(default_factory=list)
    sources_changed: list[str] = field(default_factory=list)  # outside data an import read (data import)

    @property
    def ok(self) -> bool:
        return not (
            self.changed
            or self.missing
            or self.added
            or self.irregular
            or self.inputs_changed
            or self.inputs_missing
            or self.sources_changed
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "changed": self.changed,
            "missing": self.missing,
            "added": self.added,
            "irregular": self.irregular,
            "inputs_changed": self.inputs_changed,
            "inputs_missing": self.inputs_missing,
            "sources_changed": self.sources_changed,
        }


def verify(path: str | Path, check_inputs: bool = True) -> VerifyReport:
    """Re-hash an artifact and compare with its manifest (and, optionally, its inputs' manifests, found
    relative to this artifact: a moved or copied run checks its own copies)."""
    if is_url(path):
        return _verify_remote(str(path), check_inputs)
    path = Path(path)
    manifest = read_manifest(path)
    report = VerifyReport(path=path)
    recorded: dict[str, dict[str, Any]] = manifest.get("files", {})
    regular, report.irregular = walk_tree(path)
    actual = _hash_files(path, regular)
    for rel, info in recorded.items():
        if rel not in actual:
            report.missing.append(rel)
        elif actual[rel]["sha256"] != info["sha256"]:
            report.changed.append(rel)
    report.added = sorted(set(actual) - set(recorded))
    if check_inputs:
        for ref, parent in inputs_of(path):
            state = input_state(ref, parent)
            if state == "missing":
                report.inputs_missing.append(str(parent))
            elif state == "changed":
                report.inputs_changed.append(str(parent))
        if isinstance(manifest.get("sources"), list):
            from glasslm.data.importers.sources import changed_sources  # lazy: data imports artifacts

            report.sources_changed = changed_sources(manifest)
    return report


def _verify_remote(url: str, check_inputs: bool) -> VerifyReport:
    """``verify`` for an artifact at an object-store URL: its objects re-hashed by streaming them."""
    from glasslm.data import storage
    from glasslm.data.documents import location

    url = storage.normalize(url)
    manifest = read_manifest(url)
    report = VerifyReport(path=location(url))
    recorded: dict[str, dict[str, Any]] = manifest.get("files", {})
    present = {rel: size for rel, size in storage.listing(url).items() if rel != MANIFEST}
    for rel, info in recorded.items():
        if rel not in present:
            report.missing.append(rel)
        elif present[rel] != info.get("bytes") or storage.sha256(storage.join(url, rel)) != info["sha256"]:
            report.changed.append(rel)
    report.added = sorted(set(present) - set(recorded))
    if check_inputs:
        for ref in manifest.get("inputs", []):
            recorded_path = str(ref.get("path", ""))
            where = recorded_path if is_url(recorded_path) or Path(recorded_path).is_absolute() else None
            where = where or storage.resolve(url, recorded_path)
            state = input_state(ref, location(where))
            if state == "missing":
                report.inputs_missing.append(where)
            elif state == "changed":
                report.inputs_changed.append(where)
        if isinstance(manifest.get("sources"), list):
            from glasslm.data.importers.sources import changed_sources

            report.sources_changed = changed_sources(manifest)
    return report


def lineage(path: str | Path | Location, _seen: set[str] | None = None) -> dict[str, Any]:
    """The tree of manifests from ``path`` (a directory or an object-store URL) back through its inputs."""
    if is_url(path):
        from glasslm.data import storage

        path = storage.normalize(str(path))
    else:
        path = Path(str(path))
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
    key = str(path) if isinstance(path, str) else str(path.resolve())
    if key in seen:
        return node
    seen.add(key)
    for ref, parent in inputs_of(path):
        if ref.get("kind") == FILE_INPUT:
            state = input_state(ref, parent)
            child: dict[str, Any] = {
                "path": str(parent),
                "kind": FILE_INPUT,
                "manifest_sha256": ref.get("sha256"),
                "missing": state == "missing",
                "matches": state == "ok",
                "inputs": [],
            }
        elif (parent / MANIFEST).is_file():  # a UPath for an input on a store
            child = lineage(parent, seen)
            child["recorded_sha256"] = ref.get("sha256")
            child["matches"] = child["manifest_sha256"] == ref.get("sha256")
        else:
            child = {"path": str(parent), "kind": ref.get("kind"), "missing": True, "inputs": []}
        node["inputs"].append(child)
    return node
