"""Artifacts on object storage: ``--out s3://…`` (or ``gs://``, any fsspec URL) for the data stages.

An object store has no directory rename, so an artifact at a URL is committed in steps, and its
``manifest.json`` is the commit marker, written last: every reader (``find_artifact``, ``verify``,
the next stage) takes a prefix without a manifest for no artifact at all.

1. The stage's driver keeps a local staging directory (``GLASSLM_STAGING``, default
   ``~/.cache/glasslm/staging``) for what it writes itself (indexes, ledgers, the manifest). Its shard
   tasks, wherever they run, never write there: :func:`run_staged` (wrapped around every shard function
   by ``executors.map_shards``) gives each task a temp directory of its own on its machine, points the
   task's paths into the driver's staging directory at it, runs the task, uploads what it wrote under the
   artifact's staging prefix on the store (``.NAME.staging/``, mirroring the staging directory), hashes
   each file as it goes, and writes a per-task done marker last (``.NAME.staging/.done/``). The driver
   gets the file list (sizes, sha256) with the task's result and never needs the files: scratch state a
   later task or the driver reads (``executors.load_state``, :func:`fetch`) is downloaded on demand, and
   a shard output is moved into the artifact by reference (:func:`place`). A rerun of an interrupted
   stage finds the done markers and the tasks' scratch state on the store: completed shards are not
   computed again.
2. The driver's own files are uploaded under a second staging prefix (``.NAME.tmp-PID-TOKEN/``).
3. The old artifact's manifest is deleted (from here on there is no artifact at the URL), then its
   files; the staged files (the driver's and the tasks') are copied into place on the server (no second
   upload) and both staging prefixes removed.
4. ``manifest.json`` is uploaded last.

A crash leaves the old artifact whole (before 3), or no artifact (during 3 and 4): never a prefix
whose manifest lists files that are not there or not what it says. Credentials come from each
store's usual environment (``AWS_*``, ``~/.aws``, ``AWS_ENDPOINT_URL``; gcloud's for ``gs://``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NamedTuple

from glasslm.config import ConfigError
from glasslm.processes import alive

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """An object-store ``--out`` that may not be written (the same rule as a local one)."""


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path within it (no trailing slash)."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as e:
        raise ImportError(f"{url}: object-store paths need `pip install 'glasslm[s3]'` ({e})") from None
    try:
        fs, path = url_to_fs(str(url))
    except ImportError as e:  # fsspec knows the scheme but its package is missing (gs:// without gcsfs)
        raise ConfigError(f"{url}: {e}") from None
    return fs, path.rstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *parts])


def normalize(url: str) -> str:
    """``url`` with ``..`` and ``.`` segments resolved in its path (``s3://b/run/tag/../corpus``)."""
    scheme, _, rest = str(url).partition("://")
    bucket, _, path = rest.partition("/")
    return f"{scheme}://{bucket}/{posixpath.normpath(path)}" if path else f"{scheme}://{bucket}"


def relative(target: str, start: str) -> str | None:
    """``target`` relative to ``start`` when both are in the same bucket of the same store, else None."""
    t_scheme, _, t_rest = normalize(target).partition("://")
    s_scheme, _, s_rest = normalize(start).partition("://")
    t_bucket, _, t_path = t_rest.partition("/")
    s_bucket, _, s_path = s_rest.partition("/")
    if (t_scheme, t_bucket) != (s_scheme, s_bucket):
        return None
    return posixpath.relpath("/" + t_path, "/" + s_path)


def resolve(base: str, recorded: str) -> str:
    """Where a path recorded relative to the artifact ``base`` (a URL) is."""
    return normalize(join(base, recorded))


def staging_dir(url: str) -> Path:
    """The local directory where the artifact for ``url`` is built (and its work directories kept)."""
    root = _staging_root()
    key = hashlib.sha256(normalize(url).encode()).hexdigest()[:16]
    path = root / f"{key}-{posixpath.basename(normalize(url)) or 'root'}"
    path.mkdir(parents=True, exist_ok=True)
    _MIRRORS[str(path)] = staging_prefix(url)
    return path


def is_staging_dir(path: Path) -> bool:
    """Whether ``path`` is the local staging directory of some URL (:func:`staging_dir`)."""
    return str(path) in _MIRRORS or path.parent == _staging_root()


def staging_prefix(url: str) -> str:
    """Where the shard tasks of the artifact for ``url`` put their files until it is committed."""
    parent, _, name = normalize(url).rpartition("/")
    return f"{parent}/.{name}.staging"


def sha256(url: str) -> str:
    fs, path = filesystem(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(url: str) -> str | None:
    """The text of the object at ``url``, or None if there is none."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            data: bytes = f.read()
    except FileNotFoundError:
        return None
    return data.decode("utf-8")


def is_file(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(fs.isfile(path))


def listing(url: str) -> dict[str, int]:
    """Every object below ``url`` (relative POSIX name -> size); object stores hold no symlinks."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)  # another process (a worker, an earlier run) may have written since
    found = fs.find(path, detail=True)
    prefix = path + "/"
    return {
        name[len(prefix) :]: int(info.get("size") or 0)
        for name, info in found.items()
        if name.startswith(prefix) and info.get("type", "file") == "file"
    }


def check_out(url: str, kind: str | None, force: bool) -> None:
    """The ``--out`` rule of ``artifacts.check_out`` for a URL: nothing there, or an artifact of the same
    kind holding exactly the files its manifest lists (``force``: any kind, unlisted files allowed);
    never a prefix that holds objects but no manifest, nor a bucket's root (an artifact is a prefix: its
    staging prefix, ``.NAME.staging``, sits beside it in the same bucket)."""
    if "/" not in normalize(url).partition("://")[2]:
        raise StorageError(
            f"{url}: a bucket's root cannot hold an artifact; name a prefix, e.g. {url}/run/NAME"
        )
    existing = listing(url)
    if not existing:
        return
    text = read_text(join(url, MANIFEST))
    if text is None:
        raise StorageError(
            f"{url}: holds objects but no {MANIFEST} (not a glasslm artifact); refusing to replace it "
            "(nothing was deleted). Choose another --out, or delete the prefix yourself"
        )
    manifest = json.loads(text)
    if kind is not None and manifest.get("kind") != kind and not force:
        raise StorageError(
            f"{url}: holds a '{manifest.get('kind')}' artifact, not a '{kind}' one; refusing to replace it "
            "(nothing was deleted). Choose another --out, or add --force to replace it"
        )
    unlisted = sorted(set(existing) - set(manifest.get("files", {})) - {MANIFEST})
    if unlisted and not force:
        raise StorageError(
            f"{url}: holds objects its manifest does not list ({', '.join(unlisted[:3])}"
            f"{' …' if len(unlisted) > 3 else ''}); refusing to replace it (nothing was deleted). "
            "Move them away, or add --force"
        )


def commit(local: Path, url: str) -> None:
    """Publish the finished local directory ``local`` (with its manifest) at ``url`` (see the module doc);
    files the shard tasks left on the store (:func:`remote_files`) are copied into place server-side."""
    fs, path = filesystem(url)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    body = [f for f in files if f != MANIFEST]
    remote = {rel: r for rel, r in remote_files(local).items() if rel not in files}
    parent, name = posixpath.split(path)
    staged = f"{parent}/.{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    for rel in body:
        fs.put_file(str(local / rel), f"{staged}/{rel}")
    old = listing(url)
    if MANIFEST in old:
        fs.rm_file(f"{path}/{MANIFEST}")  # from now on there is no artifact at the URL
    stale = [f"{path}/{rel}" for rel in old if rel != MANIFEST]
    if stale:
        fs.rm(stale)
    sources = [f"{staged}/{rel}" for rel in body] + [filesystem(r.url)[1] for r in remote.values()]
    targets = [f"{path}/{rel}" for rel in [*body, *remote]]
    if sources:
        fs.copy(sources, targets)
    if body:
        fs.rm([f"{staged}/{rel}" for rel in body])
    fs.put_file(str(local / MANIFEST), f"{path}/{MANIFEST}")
    fs.invalidate_cache(path)
    _, prefix = filesystem(staging_prefix(url))
    if fs.exists(prefix):  # the tasks' files and work directories: the artifact no longer needs them
        fs.rm(prefix, recursive=True)
    for root, where in list(_MIRRORS.items()):
        if where == staging_prefix(url):
            del _MIRRORS[root]
            for key in [k for k in _REMOTE if _under(k, root)]:
                del _REMOTE[key]


def hash_files(url: str, names: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256 and size of the objects ``names`` below ``url`` (``verify`` on a remote artifact)."""
    return {rel: {"sha256": sha256(join(url, rel)), "bytes": size} for rel, size in names.items()}


# --- shard tasks on any machine: their outputs go straight to the store ----------------------------


class Remote(NamedTuple):
    """A file the driver sees at a local path but that is on the store: its object, sha256 and size."""

    url: str
    sha256: str
    bytes: int


# In the driver: its staging directories (one per object-store --out) -> their staging prefixes; and
# the files below them that are on the store only (local path -> object). In a shard task: the task's
# own temp directories -> the same prefixes.
_MIRRORS: dict[str, str] = {}
_REMOTE: dict[str, Remote] = {}
_FETCHED: set[str] = set()  # files a task downloaded to read (not its outputs)
_DONE = ".done"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mirror(path: str | os.PathLike[str]) -> tuple[str, str, str] | None:
    """(local root, staging prefix, relative path) of a path below a staging directory, or None."""
    text = os.path.abspath(os.fspath(path))
    for root, prefix in _MIRRORS.items():
        if _under(text, root) and text != root:
            return root, prefix, Path(text).relative_to(root).as_posix()
    return None


def _download(url: str, path: Path) -> bool:
    fs, where = filesystem(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fs.get_file(where, str(tmp))
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, path)
    return True


def fetch(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists locally, after downloading it from the staging prefix when it is below a
    staging directory and only on the store (scratch state another task wrote, on another machine)."""
    if os.path.exists(path):
        return True
    found = _mirror(path)
    if found is None:
        return False
    root, prefix, rel = found
    if not _download(join(prefix, rel), Path(os.path.abspath(os.fspath(path)))):
        return False
    _FETCHED.add(os.path.abspath(os.fspath(path)))
    return True


def _remote(path: str | os.PathLike[str]) -> Remote | None:
    """The object a path below a staging directory stands for: known from a task, else looked up."""
    text = os.path.abspath(os.fspath(path))
    if text in _REMOTE:
        return _REMOTE[text]
    found = _mirror(text)
    if found is None:
        return None
    url = join(found[1], found[2])
    fs, where = filesystem(url)
    try:
        size = int(fs.info(where).get("size") or 0)
    except FileNotFoundError:
        return None
    _REMOTE[text] = Remote(url, sha256(url), size)  # a task of an earlier, interrupted run left it
    return _REMOTE[text]


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file is at ``path``, locally or (below a staging directory) on the store."""
    if os.path.exists(path) or os.path.abspath(os.fspath(path)) in _REMOTE:
        return True
    found = _mirror(path)
    return found is not None and is_file(join(found[1], found[2]))


def place(src: Path, dst: Path) -> None:
    """Put the file ``src`` at ``dst`` (both below staging or local directories): a hard link (a copy
    across file systems) when it is local; by reference when it is on the store (:func:`commit` copies
    it server-side)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, dst)
        return
    remote = _remote(src)
    if remote is None:
        raise FileNotFoundError(f"{src}: no such file, here or on the store")
    _REMOTE[os.path.abspath(dst)] = remote


def place_tree(src: Path, dst: Path) -> None:
    """Move every file below the directory ``src`` to the same place below ``dst``."""
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    root = os.path.abspath(src)
    for key in sorted(k for k in _REMOTE if _under(k, root)):
        _REMOTE[os.path.join(os.path.abspath(dst), os.path.relpath(key, root))] = _REMOTE.pop(key)


def remote_files(local: Path) -> dict[str, Remote]:
    """The files below the local directory ``local`` that are on the store only (relative path -> object)."""
    root = os.path.abspath(local)
    return {
        Path(key).relative_to(root).as_posix(): r
        for key, r in sorted(_REMOTE.items())
        if _under(key, root) and not os.path.exists(key)
    }


def remote_hashes(local: Path) -> dict[str, dict[str, Any]]:
    """``artifacts.hash_tree``'s entries for :func:`remote_files` (hashed by the tasks that wrote them)."""
    return {rel: {"sha256": r.sha256, "bytes": r.bytes} for rel, r in remote_files(local).items()}


class StagedCall(NamedTuple):
    """One shard task as :func:`run_staged` runs it (a plain tuple: Ray and pickle carry it as data)."""

    fn: Callable[[Any], Any]
    task: Any
    mirrors: tuple[tuple[str, str], ...]  # the driver's staging directories and their prefixes
    prefetch: tuple[tuple[str, str], ...]  # (driver's path, object) of staged files the task names
    key: str  # the task's done marker: .done/KEY.json below each prefix
    dirs: tuple[str, ...]  # the directories below the driver's staging directories (made here too)


def stage_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], desc: str) -> list[StagedCall] | None:
    """``tasks`` as :class:`StagedCall`s when this process stages an object-store artifact, else None.

    The driver's own files below its staging directories (an index it built for the tasks) are uploaded
    first, so that a task on any machine can read them."""
    named = [_paths(task) for task in tasks]
    active = {
        root: prefix
        for root, prefix in _MIRRORS.items()
        if any(_under(p, root) for paths in named for p in paths)
    }
    if not active:  # a local --out (a staging directory of an earlier stage in this process is no matter)
        return None
    for root, prefix in active.items():
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            key = str(path)
            if key in _FETCHED:
                continue
            digest = _hash_local(path)
            if key in _REMOTE and _REMOTE[key].sha256 == digest:
                continue
            url = join(prefix, path.relative_to(root).as_posix())
            fs, where = filesystem(url)
            fs.put_file(key, where)
            _REMOTE[key] = Remote(url, digest, path.stat().st_size)
    mirrors = tuple(sorted(active.items()))
    dirs = tuple(sorted(str(p) for root in active for p in Path(root).rglob("*") if p.is_dir()))
    slug = "".join(c if c.isalnum() else "-" for c in desc)
    staged = []
    for i, (task, paths) in enumerate(zip(tasks, named, strict=True)):
        prefetch = tuple(sorted({(p, _REMOTE[p].url) for p in paths if p in _REMOTE}))
        staged.append(StagedCall(fn, task, mirrors, prefetch, f"{slug}-{i:06d}", dirs))
    return staged


def register(files: Mapping[str, Remote]) -> None:
    """Record in the driver the files a task left on the store (its :func:`run_staged` result)."""
    _REMOTE.update({k: Remote(*v) for k, v in files.items()})


def _hash_local(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _staging_root() -> Path:
    root = Path(os.environ.get("GLASSLM_STAGING") or Path.home() / ".cache" / "glasslm" / "staging")
    return root.expanduser().absolute()  # tasks find their paths below it by prefix


def _task_dir() -> Path:
    """A task's own temp directory, named by its process so that one a killed task left behind is swept
    by the next task on that machine (a Ray worker killed mid-task runs no ``finally``)."""
    parent = Path(_worker_root() or tempfile.gettempdir())
    for stale in parent.glob("glasslm-task-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"glasslm-task-{os.getpid()}-", dir=parent)).resolve()


def _worker_root() -> str | None:
    root = os.environ.get("GLASSLM_STAGING")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    return root or None


def run_staged(call: StagedCall) -> tuple[Any, dict[str, Remote]]:
    """Run one shard task in a temp directory of this machine (see the module doc).

    Returns the task's result (its paths pointed back at the driver's staging directories) and the files
    it left on the store, keyed by the driver's path: those it wrote now and those its done marker of an
    earlier run lists."""
    base = _task_dir()
    for root, _ in call.mirrors:
        if _under(str(base), root):  # never the driver's directory, even on the driver's machine
            raise StorageError(f"{base}: a task's temp directory inside the driver's staging {root}")
    local = {root: str(base / str(i)) for i, (root, _) in enumerate(call.mirrors)}
    there = dict(call.mirrors)
    saved = (dict(_MIRRORS), set(_FETCHED))
    try:
        for directory in call.dirs:  # a task may write into a directory the driver made (work/done)
            Path(_swap(directory, local)).mkdir(parents=True, exist_ok=True)
        known: dict[str, str] = {}  # task-local path -> sha256 of what the store already holds
        named = [_swap(p, local) for p in _paths(call.task)]
        for root, prefix in call.mirrors:
            marker = read_text(join(prefix, _DONE, f"{call.key}.json"))
            earlier = json.loads(marker)["files"] if marker else {}
            for rel, (digest, _) in sorted(earlier.items()):
                target = os.path.join(local[root], rel)
                # only files below what this task names: a marker of another job at this URL lists others
                if any(_under(target, n) for n in named) and _download(join(prefix, rel), Path(target)):
                    known[target] = digest
        prefetched = {_swap(p, local) for p, _ in call.prefetch}
        for driver_path, url in call.prefetch:
            _download(url, Path(_swap(driver_path, local)))
        _MIRRORS.clear()
        _MIRRORS.update({local[root]: prefix for root, prefix in call.mirrors})
        _FETCHED.clear()
        result = call.fn(_rewrite(call.task, local))
        fetched = _FETCHED | prefetched
    finally:
        _MIRRORS.clear()
        _MIRRORS.update(saved[0])
        _FETCHED.clear()
        _FETCHED.update(saved[1])
    try:
        files: dict[str, Remote] = {}
        for root, mine in local.items():
            prefix = there[root]
            written = sorted(p for p in Path(mine).rglob("*") if p.is_file() and str(p) not in fetched)
            # scratch state last: a state file on the store means the outputs it describes are there too
            written.sort(key=lambda p: p.name.endswith(".state.npz"))
            listed: dict[str, tuple[str, int]] = {}
            uploaded = False
            for path in written:
                rel = path.relative_to(mine).as_posix()
                digest, size = _hash_local(path), path.stat().st_size
                url = join(prefix, rel)
                if known.get(str(path)) != digest:
                    fs, where = filesystem(url)
                    fs.put_file(str(path), where)
                    uploaded = True
                files[os.path.join(root, rel)] = Remote(url, digest, size)
                listed[rel] = (digest, size)
            if uploaded:  # the marker last: every file it lists is on the store
                fs, where = filesystem(join(prefix, _DONE, f"{call.key}.json"))
                fs.pipe_file(where, json.dumps({"files": listed}, sort_keys=True).encode())
        return _rewrite(result, {mine: root for root, mine in local.items()}), files
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _swap(path: str, roots: Mapping[str, str]) -> str:
    for old, new in roots.items():
        if _under(path, old):
            return new + path[len(old) :]
    return path


def _paths(obj: Any) -> list[str]:
    """Every local path (``Path`` or absolute ``str``) inside a task, as text."""
    found: list[str] = []
    _rewrite(obj, {}, found)
    return found


def _rewrite(obj: Any, roots: Mapping[str, str], found: list[str] | None = None) -> Any:
    """``obj`` with every path below a key of ``roots`` moved below its value (tasks and results are
    dataclasses, tuples, lists, dicts and sets of paths, text, numbers and arrays)."""
    if isinstance(obj, PurePath) and "://" not in str(obj):
        if found is not None:
            found.append(str(obj))
        new = _swap(str(obj), roots)
        return obj if new == str(obj) else type(obj)(new)
    if isinstance(obj, str):
        if not obj.startswith("/"):
            return obj
        if found is not None:
            found.append(obj)
        return _swap(obj, roots)
    if isinstance(obj, (list, tuple)):
        items = [_rewrite(x, roots, found) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        pairs = {k: _rewrite(v, roots, found) for k, v in obj.items()}
        return obj if all(pairs[k] is obj[k] for k in obj) else type(obj)(pairs)
    if isinstance(obj, (set, frozenset)):
        if not any(isinstance(x, str) and x.startswith("/") for x in obj):
            return obj  # sets of ids and hashes: no paths, nothing to copy
        return type(obj)(_rewrite(x, roots, found) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _rewrite(value, roots, found)
            if new is not value:
                changes[f.name] = new
        if not changes:
            return obj
        copy = dataclasses.replace(obj, **{k: v for k, v in changes.items() if _init(obj, k)})
        for k, v in changes.items():
            if not _init(obj, k):
                object.__setattr__(copy, k, v)
        return copy
    return obj


def _init(obj: Any, name: str) -> bool:
    return next(f.init for f in dataclasses.fields(obj) if f.name == name)
