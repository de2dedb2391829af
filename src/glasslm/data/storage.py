"""Artifacts on object storage: ``--out s3://…`` (or ``gs://``, any fsspec URL) for the data stages.

An object store has no directory rename, so an artifact at a URL is committed in steps, and its
``manifest.json`` is the commit marker, written last: every reader (``find_artifact``, ``verify``,
the next stage) takes a prefix without a manifest for no artifact at all.

1. The stage fills a local staging directory (``GLASSLM_STAGING``, default
   ``~/.cache/glasslm/staging``), exactly as for a local ``--out``; its per-shard work directory
   sits there too, so a rerun of an interrupted stage resumes per shard as for a local output.
2. The files are uploaded under a staging prefix beside the output (``.NAME.tmp-PID-TOKEN/``).
3. The old artifact's manifest is deleted (from here on there is no artifact at the URL), then its
   files; the staged files are copied into place on the server (no second upload) and the staging
   prefix removed.
4. ``manifest.json`` is uploaded last.

A crash leaves the old artifact whole (before 3), or no artifact (during 3 and 4): never a prefix
whose manifest lists files that are not there or not what it says. Credentials come from each
store's usual environment (``AWS_*``, ``~/.aws``, ``AWS_ENDPOINT_URL``; gcloud's for ``gs://``).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    fs, path = url_to_fs(str(url))
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
    root = Path(os.environ.get("GLASSLM_STAGING") or Path.home() / ".cache" / "glasslm" / "staging")
    key = hashlib.sha256(normalize(url).encode()).hexdigest()[:16]
    path = root / f"{key}-{posixpath.basename(normalize(url)) or 'root'}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    never a prefix that holds objects but no manifest."""
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
    """Publish the finished local directory ``local`` (with its manifest) at ``url`` (see the module doc)."""
    fs, path = filesystem(url)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    body = [f for f in files if f != MANIFEST]
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
    if body:
        fs.copy([f"{staged}/{rel}" for rel in body], [f"{path}/{rel}" for rel in body])
        fs.rm([f"{staged}/{rel}" for rel in body])
    fs.put_file(str(local / MANIFEST), f"{path}/{MANIFEST}")
    fs.invalidate_cache(path)


def hash_files(url: str, names: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256 and size of the objects ``names`` below ``url`` (``verify`` on a remote artifact)."""
    return {rel: {"sha256": sha256(join(url, rel)), "bytes": size} for rel, size in names.items()}
