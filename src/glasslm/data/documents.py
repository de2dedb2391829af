"""Dolma-format documents: reading with quarantine, writing atomically.

A document is one JSON object per line: ``id`` and ``text`` (required, strings), ``source``,
``added``, ``created`` (strings) and ``metadata`` (object). Shards are ``*.jsonl``, ``*.jsonl.gz``
or ``*.jsonl.zst``.

Bad input never stops a run and is never dropped silently: every line that cannot be used
(malformed JSON, invalid UTF-8, missing or empty text, a field of the wrong type, a duplicate id,
the tail of a truncated gzip) goes to a quarantine file with its file, line number and reason,
and the reasons are counted.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SHARD_SUFFIXES = (".jsonl.gz", ".jsonl.zst", ".jsonl", ".json.gz")
_STRING_FIELDS = ("id", "text", "source", "added", "created")


def list_shards(directory: str | Path) -> list[Path]:
    """Document shards below ``directory`` in a stable (sorted) order."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES))


def open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard  # optional: only needed for .zst shards

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # type: ignore[return-value]
    return open(path, "rb")


@dataclass
class Quarantine:
    """Collects unusable lines with where they came from and why; writes them as JSONL."""

    path: Path | None = None
    counts: Counter[str] = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: Path | str, line: int, reason: str, raw: bytes) -> None:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        self.counts[reason.split(":")[0]] += 1
        self.records.append({"file": str(file), "line": line, "reason": reason, "raw": text, "encoding": encoding})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def write(self, path: Path | None = None) -> None:
        target = path or self.path
        if target is None:
            return
        write_jsonl(target, self.records)

    def merge(self, other: Quarantine) -> None:
        self.counts.update(other.counts)
        self.records.extend(other.records)


def validate(obj: Any) -> str | None:
    """Why a parsed line is not a usable document, or None if it is."""
    if not isinstance(obj, dict):
        return f"not a JSON object: {type(obj).__name__}"
    for key in ("id", "text"):
        if key not in obj:
            return f"missing field: '{key}'"
    for key in _STRING_FIELDS:
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            return f"non-string field: '{key}' is {type(obj[key]).__name__}"
    if not obj["id"]:
        return "empty field: 'id'"
    if not obj["text"].strip():
        return "empty field: 'text'"
    if "metadata" in obj and obj["metadata"] is not None and not isinstance(obj["metadata"], dict):
        return "non-object field: 'metadata'"
    return None


def read_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number from 1, raw bytes, error); a truncated/corrupt compressed tail is one error entry."""
    number = 0
    try:
        with open_binary(path) as f:
            for number, raw in enumerate(f, start=1):  # noqa: B007 - number is used after the loop
                yield number, raw.rstrip(b"\r\n"), None
    except (EOFError, OSError, zlib.error) as e:
        yield number + 1, None, f"truncated or corrupt file after line {number}: {e}"


def iter_documents(
    path: str | Path,
    quarantine: Quarantine | None = None,
    seen_ids: set[str] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, document) for every usable line; the rest go to ``quarantine``.

    ``seen_ids``: ids already read (shared across shards) to quarantine duplicates.
    """
    path = Path(path)
    q = quarantine if quarantine is not None else Quarantine()
    for number, raw, error in read_lines(path):
        if error is not None or raw is None:
            q.add(path, number, error or "unreadable", b"")
            continue
        if not raw.strip():
            q.add(path, number, "empty line", raw)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            q.add(path, number, f"invalid UTF-8: {e}", raw)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            q.add(path, number, f"malformed JSON: {e}", raw)
            continue
        reason = validate(obj)
        if reason is None and seen_ids is not None:
            if obj["id"] in seen_ids:
                reason = f"duplicate id: {obj['id']}"
            else:
                seen_ids.add(obj["id"])
        if reason is not None:
            q.add(path, number, reason, raw)
            continue
        yield number, obj


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | Path, records: Iterable[Any], compress: bool | None = None, compresslevel: int = 6) -> int:
    """Write records atomically (temp file + rename); gzip when the name ends in .gz. Returns count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = path.name.endswith(".gz") if compress is None else compress
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with open(tmp, "wb") as raw:
            # mtime=0 and no file name in the header (it would be the temp name, which holds this
            # process's id): identical content gives identical bytes, so artifact hashes reproduce.
            stream: IO[bytes] = (
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=compresslevel) if compress else raw  # type: ignore[assignment]
            )
            with io.TextIOWrapper(stream, encoding="utf-8", newline="\n") as f:
                for record in records:
                    f.write(dumps(record))
                    f.write("\n")
                    n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def read_jsonl(path: str | Path) -> Iterator[Any]:
    """Plain JSONL reading for files we wrote ourselves (attributes, indexes): errors are bugs."""
    with open_binary(Path(path)) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def shard_names(documents_root: str | Path) -> list[tuple[str, Path]]:
    """(name, path) of every shard of a ``documents`` artifact, in the defined order (sorted names).

    ``name`` is the path relative to ``<artifact>/documents``; an ``attributes`` artifact stores the
    attributes of that shard under the same relative name.
    """
    root = Path(documents_root)
    base = root / "documents" if (root / "documents").is_dir() else root
    return [(p.relative_to(base).as_posix() if p != base else p.name, p) for p in list_shards(base)]


def attributes_path(attributes_root: str | Path, name: str) -> Path:
    """Where an ``attributes`` artifact keeps the attributes of shard ``name``."""
    return Path(attributes_root) / name
