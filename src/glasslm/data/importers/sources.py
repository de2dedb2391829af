"""Where imported bytes come from: paths through fsspec, hashed as they are read, checked again later.

Every file an import reads becomes one lineage entry in the manifest (``sources``): its URI, size,
modification time or ETag, and the sha256 of the bytes read — all of them, even when a reader stops
early (a cap, a truncated stream), so the hash always names the whole file. ``changed_sources``
compares those entries with what is there now (``glasslm manifest verify``).

Sequential formats (JSONL, WARC, text) are hashed in the same pass that parses them; random-access
formats (Parquet, Arrow files) are hashed in a separate sequential pass, since their readers seek.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from glasslm.config import ConfigError

_CHUNK = 1 << 20


class SourceError(ConfigError):
    """An input path that cannot be listed or opened (not a quarantine matter: nothing was read)."""


class HashingReader(io.RawIOBase):
    """A read-only stream over ``raw`` that feeds every byte it hands out to a sha256."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.bytes_read = 0
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._count(data)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read() if size is None or size < 0 else self.raw.read(size)
        self._count(data)
        return data

    def _count(self, data: bytes) -> None:
        if data:
            self.digest.update(data)
            self.bytes_read += len(data)
        else:
            self.eof = True

    def drain(self) -> None:
        """Read (and hash) whatever the parser left, so the digest covers the whole file."""
        while not self.eof:
            self.read(_CHUNK)

    def close(self) -> None:
        # Readers close the streams they wrap (BufferedReader, gzip); the file stays open so that
        # ``SourceFile.finish`` can hash what they left unread without opening it again.
        super().close()

    def release(self) -> None:
        self.drain()
        self.raw.close()


@dataclass
class SourceFile:
    """One input file: where it is, what it was when read, and its hash once ``finish`` ran."""

    uri: str
    fs: Any  # fsspec.AbstractFileSystem
    path: str
    size: int
    mtime: str | None
    etag: str | None
    sha256: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    _stream: HashingReader | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def open(self) -> HashingReader:
        """The file as a sequential stream; what is read is hashed."""
        self._stream = HashingReader(self.fs.open(self.path, "rb"))
        return self._stream

    def open_random(self) -> IO[bytes]:
        """The file for readers that seek (Parquet, Arrow files); ``finish`` hashes it separately."""
        return self.fs.open(self.path, "rb")  # type: ignore[no-any-return]

    def finish(self) -> None:
        stream = self._stream if self._stream is not None else self.open()  # never streamed: one pass
        stream.release()
        self.sha256 = stream.digest.hexdigest()
        self.size = stream.bytes_read
        self._stream = None

    def record(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "bytes": self.size,
            "mtime": self.mtime,
            "etag": self.etag,
            "sha256": self.sha256,
            **self.counts,
        }


def _mtime(info: Mapping[str, Any]) -> str | None:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, int | float):
        value = _dt.datetime.fromtimestamp(value, _dt.UTC)
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC).isoformat(timespec="microseconds")
    return None if value is None else str(value)


def _etag(info: Mapping[str, Any]) -> str | None:
    value = info.get("ETag", info.get("etag"))
    return None if value is None else str(value).strip('"')


def source_file(fs: Any, path: str) -> SourceFile:
    info = fs.info(path)
    uri = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
    return SourceFile(
        uri=uri, fs=fs, path=path, size=int(info.get("size") or 0), mtime=_mtime(info), etag=_etag(info)
    )


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].strip("/") if path.startswith(root) else path
    return any(part.startswith(".") for part in rel.split("/"))


def expand(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str, list[str]]:
    """(filesystem, root, sorted file paths) for a file, a directory (recursive) or a glob.

    Hidden files and directories below the root (``.git``, ``.cache``) are left out."""
    try:
        fs, root = url_to_fs(uri, **dict(storage_options or {}))
    except (ValueError, ImportError) as e:
        raise SourceError(f"{uri}: cannot open this location ({e})") from None
    if has_magic(root):
        hits = sorted(fs.glob(root))
        paths: list[str] = []
        for hit in hits:
            paths += [p for p in sorted(fs.find(hit)) if not _hidden(p, hit)] if fs.isdir(hit) else [hit]
        if not paths:
            raise SourceError(f"{uri}: no file matches this pattern")
        base = root.split("*", 1)[0].rsplit("/", 1)[0]
        return fs, base, paths
    if fs.isdir(root):
        return fs, root.rstrip("/"), [p for p in sorted(fs.find(root)) if not _hidden(p, root)]
    if fs.exists(root):
        return fs, root.rsplit("/", 1)[0], [root]
    raise SourceError(f"{uri}: no such file or directory")


def changed_sources(manifest: Mapping[str, Any], rehash: bool = False) -> list[str]:
    """What changed among an import's recorded sources since it ran, one line each ([] = none).

    A source whose size and mtime/ETag are unchanged counts as unchanged unless ``rehash``; otherwise
    it is re-hashed, so a touched-but-identical file is not reported. Missing files are reported."""
    problems: list[str] = []
    for entry in manifest.get("sources", []):
        uri = entry.get("uri", "")
        try:
            fs, path = url_to_fs(uri)
            if not fs.exists(path):
                problems.append(f"{uri}: missing (recorded sha256 {str(entry.get('sha256'))[:12]}…)")
                continue
            now = source_file(fs, path)
        except (OSError, ValueError, ImportError) as e:
            problems.append(f"{uri}: unreadable ({e})")
            continue
        same_stat = now.size == entry.get("bytes") and (now.etag or now.mtime) == (
            entry.get("etag") or entry.get("mtime")
        )
        if same_stat and not rehash:
            continue
        now.finish()
        if now.sha256 != entry.get("sha256"):
            problems.append(
                f"{uri}: changed since the import (bytes {entry.get('bytes')} -> {now.size}, "
                f"sha256 {str(entry.get('sha256'))[:12]}… -> {str(now.sha256)[:12]}…)"
            )
    return problems
