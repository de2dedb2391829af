"""Dolma JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) as a stream: one line at a time, hashed as read.

The same reasons as ``documents.iter_documents`` (bad JSON, invalid UTF-8, missing or wrong-typed
fields); a missing id becomes a content-derived one instead of a quarantine, and a truncated or
corrupt compressed tail is one quarantine entry after the last good line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

from isal import igzip

from glasslm.data.documents import STREAM_ERRORS, gzip_reader, recover_lines
from glasslm.data.importers.records import Item, ReadOptions, as_document, bad, parse_json_line
from glasslm.data.importers.sources import SourceFile

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
_BUFFER = 1 << 20


def decompressed(name: str, stream: Any) -> IO[bytes]:
    """A line-iterable view of ``stream``, decompressed by the file's suffix."""
    if name.endswith(".gz"):
        return igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return io.BufferedReader(reader, _BUFFER)
    return io.BufferedReader(stream, _BUFFER)


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors = STREAM_ERRORS
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def read_jsonl(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    # A damaged .gz tail is read on with the stdlib (recover_lines), over a second, unhashed handle:
    # the hash still comes from the first stream, drained to the end by ``SourceFile.finish``.
    gz = (lambda: gzip_reader(src.open_random())) if src.name.endswith(".gz") else None
    for number, raw, error in recover_lines(lambda: decompressed(src.name, src.open()), gz, _stream_errors()):
        if raw is None:
            yield bad(number, f"truncated or corrupt compressed stream: after line {number - 1}, {error}")
            continue
        line = raw.rstrip(b"\r\n")
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows tools)
            line = line[3:]
        if not line.strip():
            yield bad(number, "empty line", line)
            continue
        obj, reason = parse_json_line(line)
        doc, reason = (None, reason) if reason is not None else as_document(obj, options.require_id)
        yield Item(number, doc, None, b"") if doc is not None else bad(number, reason or "unusable", line)
