"""Dolma-format documents: reading with quarantine, writing atomically.

A document is one JSON object per line: ``id`` and ``text`` (required, strings), ``source``,
``added``, ``created`` (strings) and ``metadata`` (object). Shards are ``*.jsonl``, ``*.jsonl.gz``
or ``*.jsonl.zst``.

Bad input never stops a run and is never dropped silently: every line that cannot be used
(malformed JSON, invalid UTF-8, a lone surrogate escape such as ``"\\ud800"`` that no UTF-8 writer can
encode, JSON nested deeper than ``MAX_DEPTH``, a line that is not an object, missing, null or empty
text, a field of the wrong type, a duplicate id, the tail of a truncated gzip) goes to a quarantine
file with its file, line number and reason, and the reasons are counted. Every stage reads its input
through :func:`iter_documents`, so they all quarantine the same lines for the same reasons.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from upath import UPath

import orjson
from isal import igzip, isal_zlib

SHARD_SUFFIXES = (".jsonl.gz", ".jsonl.zst", ".jsonl", ".json.gz")
QUARANTINE_FILE = "quarantine.jsonl"  # every data stage's artifact holds its quarantined lines here
_STRING_FIELDS = ("id", "text", "source", "added", "created")
# Deepest JSON nesting a document may have. Dolma documents are a flat object with a small metadata
# object; the limit leaves every recursive consumer (our writers, json, orjson's 255-level writer,
# pyarrow) far below Python's recursion limit of 1,000, which a 2,000-deep line used to hit.
MAX_DEPTH = 100


# A shard's place: a local path, or an object-store URL (s3://, gs://, any fsspec protocol) as a
# universal_pathlib UPath, which has the same interface (name, /, rglob, open), so every reader
# below works on both. Credentials come from each store's usual environment/config (boto, gcloud).
Location: TypeAlias = "Path | UPath"


def is_url(path: object) -> bool:
    """Whether ``path`` names an object in a store other than the local file system."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def location(path: str | os.PathLike[str] | Location) -> Location:
    """A local ``Path``, or a ``UPath`` for a URL (needs the ``s3`` extra: universal-pathlib, s3fs)."""
    if is_url(path):
        try:
            from upath import UPath
        except ImportError as e:
            raise ImportError(f"{path}: object-store paths need `pip install 'glasslm[s3]'` ({e})") from None
        return path if isinstance(path, UPath) else UPath(str(path))
    return path if isinstance(path, Path) else Path(path)  # type: ignore[arg-type]


def list_shards(directory: str | Path | Location) -> list[Location]:
    """Document shards below ``directory`` in a stable (sorted) order."""
    directory = location(directory)
    if directory.is_file():
        return [directory]
    return sorted(
        (p for p in directory.rglob("*") if p.name.endswith(SHARD_SUFFIXES) and p.is_file()), key=str
    )


def list_local_shards(directory: str | Path) -> list[Path]:
    """:func:`list_shards` for a directory that must be local (our own artifacts, being written)."""
    if is_url(directory):
        raise ValueError(f"{directory}: expected a local directory here, not an object-store URL")
    return list_shards(directory)  # type: ignore[return-value]  # local in, Paths out


def open_binary(path: Location) -> IO[bytes]:
    if path.name.endswith(".gz"):
        # ISA-L's gzip reader: same stream semantics and errors as the stdlib's (EOFError on a
        # truncated member, BadGzipFile), ~5x faster inflate on our shards (benchmarks/dedupe_mix_throughput.py).
        return igzip.open(_raw(path), "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard  # optional: only needed for .zst shards

        return zstandard.ZstdDecompressor().stream_reader(_raw(path))  # type: ignore[return-value]
    return _raw(path)


def _raw(path: Location) -> IO[bytes]:
    return open(path, "rb") if isinstance(path, Path) else path.open("rb")


@dataclass
class Quarantine:
    """Collects unusable lines with where they came from and why; writes them as JSONL."""

    path: Path | None = None
    counts: Counter[str] = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: Location | str, line: int, reason: str, raw: bytes) -> None:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        self.counts[category(reason)] += 1
        self.records.append(
            {"file": str(file), "line": line, "reason": reason, "raw": text, "encoding": encoding}
        )

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> Quarantine:
        """The quarantine of records written by :meth:`add` (e.g. gathered from shard workers)."""
        q = cls()
        for record in records:
            q.counts[category(record["reason"])] += 1
            q.records.append(record)
        return q

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


def category(reason: str) -> str:
    """What a quarantine reason is counted as in manifests: its text before the first ':'."""
    return reason.split(":")[0]


def validate(obj: Any) -> str | None:
    """Why a parsed line is not a usable document, or None if it is."""
    if not isinstance(obj, dict):
        return f"not a JSON object: {type(obj).__name__}"
    for key in ("id", "text"):
        if key not in obj:
            return f"missing field: '{key}'"
        if obj[key] is None:
            return f"null field: '{key}'"
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


def read_lines(path: Location) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number from 1, raw bytes, error); a truncated/corrupt compressed tail is one error entry."""
    gz = (lambda: gzip_reader(_raw(path))) if path.name.endswith(".gz") else None
    for number, raw, error in recover_lines(lambda: open_binary(path), gz, STREAM_ERRORS):
        yield (
            number,
            raw if raw is None else raw.rstrip(b"\r\n"),
            (None if error is None else f"truncated or corrupt file: after line {number - 1}, {error}"),
        )


STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, isal_zlib.error)  # type: ignore[assignment]  # isal's stub types error loosely


def gzip_reader(raw: IO[bytes]) -> IO[bytes]:
    """The stdlib's gzip reader over ``raw``, which it closes when it is closed."""
    reader = gzip.GzipFile(fileobj=raw, mode="rb")
    reader.myfileobj = raw  # type: ignore[assignment]  # GzipFile closes myfileobj, its own file, on close
    return reader  # type: ignore[return-value]


def recover_lines(
    open_fast: Callable[[], IO[bytes]],
    open_gzip: Callable[[], IO[bytes]] | None,
    errors: tuple[type[BaseException], ...],
) -> Iterator[tuple[int, bytes | None, BaseException | None]]:
    """(line number from 1, raw line, None) for every line of a possibly damaged stream, then one
    (number, None, error) after the last good line if it broke. ISA-L inflates in large blocks and can
    stop short of lines that zlib still recovers from a damaged gzip tail, so ``open_gzip`` (the stdlib
    reader over the same bytes) reads on from where it stopped: both give the same lines."""
    number = 0
    try:
        with open_fast() as f:
            for number, raw in enumerate(f, start=1):  # noqa: B007 - number is used after the loop
                yield number, raw, None
        return
    except errors as e:
        error: BaseException = e
    if open_gzip is not None:
        try:
            with open_gzip() as f:
                for k, raw in enumerate(f, start=1):
                    if k > number:
                        number = k
                        yield number, raw, None
        except (EOFError, OSError, zlib.error) as e:
            error = e
    yield number + 1, None, error


def iter_documents(
    path: str | Path | Location,
    quarantine: Quarantine | None = None,
    seen_ids: set[str] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, document) for every usable line; the rest go to ``quarantine``.

    ``seen_ids``: ids already read (shared across shards) to quarantine duplicates.
    """
    path = location(path)
    q = quarantine if quarantine is not None else Quarantine()
    for number, raw, obj in iter_json_lines(path, q):
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


def iter_json_lines(path: str | Path | Location, quarantine: Quarantine) -> Iterator[tuple[int, bytes, Any]]:
    """(line number, raw bytes, JSON value) of every line that parses; the rest go to ``quarantine``
    with their file, line and reason. The one reader of user JSONL that quarantines: corpus shards
    (:func:`iter_documents`) and adaptation sets (``adapt/formats.py``) both read through it."""
    path = location(path)
    for number, raw, error in read_lines(path):
        if error is not None or raw is None:
            quarantine.add(path, number, error or "unreadable", b"")
            continue
        if not raw.strip():
            quarantine.add(path, number, "empty line", raw)
            continue
        obj, reason = parse_line(raw)
        if reason is not None:
            quarantine.add(path, number, reason, raw)
            continue
        yield number, raw, obj


def parse_line(raw: bytes) -> tuple[Any, str | None]:
    """(the JSON value of one input line, None), or (None, why it has none); never raises.

    The value is safe for every later step: valid UTF-8 inside (no lone surrogates) and at most
    ``MAX_DEPTH`` levels deep.
    """
    obj = loads_fast(raw)
    if obj is _NOT_FAST:  # anything unusual takes the stdlib path, which words the quarantine reasons
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"invalid UTF-8: {e}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return None, f"malformed JSON: {e}"
        except RecursionError:
            return None, _TOO_DEEP
        # orjson refuses lone surrogate escapes, so only this path can produce them; a pair is fine.
        if _SURROGATE_ESCAPE.search(raw):
            try:
                dumps(obj).encode("utf-8")
            except UnicodeEncodeError as e:
                return None, f"lone surrogate: {e.object[e.start : e.end]!a} cannot be written as UTF-8"
            except RecursionError:
                return None, _TOO_DEEP
    # Deeper than MAX_DEPTH needs more than MAX_DEPTH opening brackets: the byte count (C speed)
    # spares the walk for almost every line.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        return None, _TOO_DEEP
    return obj, None


_TOO_DEEP = f"nested too deeply: JSON deeper than {MAX_DEPTH} levels"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:  # enough to refuse it; the rest need not be walked
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# orjson is 3-4x faster than the stdlib json on our documents both ways, but it is not the same
# function: it parses integers beyond 64 bits as floats, rejects NaN/Infinity and lone-surrogate
# escapes, formats floats differently (1e16 vs 1e+16) and serialises types json refuses. So it is
# used only where it gives what json gives. Parsing: any line orjson accepts, unless it holds a run
# of 19+ digits beside a float (a possible integer outside int64/uint64, which orjson makes a float);
# floats parse to the same value (both round correctly). Writing: values made of dict (str keys),
# list, str, int within 64 bits, bool and None; anything else (floats included) goes through json.
_NOT_FAST = object()
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _orjson_exact(obj: Any) -> bool:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return True
    if t is int:
        return _INT_MIN <= obj <= _INT_MAX
    if t is dict:
        for k, v in obj.items():  # noqa: SIM110 - a loop, not all(genexpr): 1.3-2x faster, runs per line
            if type(k) is not str or not _orjson_exact(v):
                return False
        return True
    if t is list or t is tuple:
        for v in obj:  # noqa: SIM110 - as above
            if not _orjson_exact(v):
                return False
        return True
    return False


def loads_fast(raw: bytes) -> Any:
    """``json.loads(raw.decode("utf-8"))`` when orjson gives exactly that, else ``_NOT_FAST``.

    orjson rejects invalid UTF-8 (surrogates included), so a line it accepts also decodes."""
    try:
        obj = orjson.loads(raw)
        # Only a float can be a mis-parsed big integer; the digit search is slow, so it runs only then.
        return obj if _orjson_exact(obj) or not _LONG_DIGITS.search(raw) else _NOT_FAST
    except (orjson.JSONDecodeError, RecursionError):  # orjson nests 1,024 deep, _orjson_exact recurses
        return _NOT_FAST


def dumps_bytes(obj: Any) -> bytes:
    """``dumps(obj).encode("utf-8")``, byte for byte (orjson where it is exact, see above)."""
    if _orjson_exact(obj):
        try:
            return orjson.dumps(obj)
        except orjson.JSONEncodeError:  # lone surrogates, deep nesting: json decides (and words the error)
            pass
    return dumps(obj).encode("utf-8")


_WRITE_CHUNK = 1 << 20


def write_jsonl(
    path: str | Path,
    records: Iterable[Any],
    compress: bool | None = None,
    compresslevel: int = 6,
    isal_level: int | None = None,
) -> int:
    """Write records atomically (temp file + rename); gzip when the name ends in .gz. Returns count.

    ``compresslevel`` is zlib's; ``isal_level`` (0-3) compresses with ISA-L instead (level 1: ~5x
    faster than zlib level 1 on our text, and slightly smaller).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = path.name.endswith(".gz") if compress is None else compress
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    try:
        with open(tmp, "wb") as raw:
            # mtime=0 and no file name in the header (it would be the temp name, which holds this
            # process's id): identical content gives identical bytes, so artifact hashes reproduce.
            stream: IO[bytes] = raw
            if compress and isal_level is not None:
                stream = igzip.GzipFile(
                    filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=isal_level
                )  # type: ignore[assignment]
            elif compress:
                stream = gzip.GzipFile(
                    filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=compresslevel
                )  # type: ignore[assignment]
            with stream if stream is not raw else contextlib.nullcontext(raw) as f:
                pending: list[bytes] = []
                size = 0
                for record in records:
                    line = dumps_bytes(record)
                    pending.append(line)
                    size += len(line) + 1
                    n += 1
                    if size >= _WRITE_CHUNK:  # few large writes: the compressor's per-call cost adds up
                        pending.append(b"")
                        f.write(b"\n".join(pending))
                        pending, size = [], 0
                if pending:
                    pending.append(b"")
                    f.write(b"\n".join(pending))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def loads(raw: bytes) -> Any:
    """``json.loads(raw)``, through orjson where it gives the same value (see ``loads_fast``)."""
    obj = loads_fast(raw)
    return json.loads(raw) if obj is _NOT_FAST else obj


def read_jsonl(path: str | Path | Location) -> Iterator[Any]:
    """Plain JSONL reading for files we wrote ourselves (attributes, indexes): errors are bugs."""
    with open_binary(location(path)) as f:
        for line in f:
            if line.strip():
                yield loads(line)


def json_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a user-given JSONL file (plain or gzip).

    For inputs that are all-or-nothing (task files, evaluation documents): the first line that is not a
    JSON object raises ``error`` naming ``path:line`` — unlike corpus shards, which quarantine and go on.
    """
    with open_binary(Path(path)) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise error(f"{path}:{number}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def shard_names(documents_root: str | Path | Location) -> list[tuple[str, Location]]:
    """(name, path) of every shard of a ``documents`` artifact, in the defined order (sorted names).

    ``name`` is the path relative to ``<artifact>/documents``; an ``attributes`` artifact stores the
    attributes of that shard under the same relative name.
    """
    root = location(documents_root)
    base = root / "documents" if (root / "documents").is_dir() else root
    return [(p.relative_to(base).as_posix() if p != base else p.name, p) for p in list_shards(base)]  # type: ignore[arg-type]


def attributes_path(attributes_root: str | Path, name: str) -> Path:
    """Where an ``attributes`` artifact keeps the attributes of shard ``name``."""
    return Path(attributes_root) / name
