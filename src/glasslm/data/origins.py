"""Where each imported document came from: ``origins.jsonl`` of a documents artifact.

An import rewrites the user's records into Dolma shards (``documents/<source>-NNNN.jsonl.gz``), so every
later stage (the mix's ledger, ``data why``, ``trace doc``) locates a document by shard and line. This
file maps those back to the user's own files, so that "why was this document dropped?" ends at the
line someone can open: one JSON line per shard, ``{"shard": NAME, "runs": [[LINE, COUNT, URI, UNIT,
POSITION], ...]}`` — COUNT consecutive shard lines from LINE (from 1) are the records of URI from
POSITION on, in its UNIT (``line`` from 1 for JSONL, ``row`` from 0 for Parquet/Arrow, ``record`` from
0 for WARC, ``file`` for a text tree's whole file). A quarantined record ends a run, so runs stay few:
about one per input file plus one per quarantined record. A linked file (``--link``) is its own shard:
``{"shard": NAME, "same_as": URI}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

ORIGINS_FILE = "origins.jsonl"
UNITS = {"jsonl": "line", "parquet": "row", "arrow": "row", "hf": "row", "warc": "record", "text": "file"}

Origin = tuple[str, str, int]  # (uri, unit, position)


def runs_of(origins: Sequence[Origin]) -> list[list[Any]]:
    """Consecutive records of one file, as ``[line, count, uri, unit, position]`` runs."""
    runs: list[list[Any]] = []
    for line, (uri, unit, position) in enumerate(origins, start=1):
        last = runs[-1] if runs else None
        if last is not None and last[2] == uri and last[3] == unit and last[4] + last[1] == position:
            last[1] += 1
        else:
            runs.append([line, 1, uri, unit, position])
    return runs


class OriginsFile:
    """Appends one line per shard as the importer writes it (nothing is kept in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        return self._file

    def shard(self, name: str, origins: Sequence[Origin]) -> None:
        self._write({"shard": name, "runs": runs_of(origins)})

    def linked(self, name: str, uri: str) -> None:
        self._write({"shard": name, "same_as": uri})

    def _write(self, entry: dict[str, Any]) -> None:
        self._open().write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def origin_of(documents: Path, shard: str, line: int) -> str | None:
    """``URI:POSITION`` (with the unit when it is not a line) of line ``line`` of ``shard`` of the
    documents artifact ``documents``; None when the artifact records no origins (the default corpus's
    own sources, an artifact made before origins were recorded) or none for that line."""
    path = documents / ORIGINS_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        for text in f:
            entry = json.loads(text)
            if entry.get("shard") != shard:
                continue
            if "same_as" in entry:
                return f"{_located(documents, entry['same_as'])}:{line}"
            for first, count, uri, unit, position in entry.get("runs", []):
                if first <= line < first + count:
                    at = position + line - first
                    where = _located(documents, uri)
                    if unit == "file":
                        return where
                    return f"{where}:{at}" if unit == "line" else f"{where} ({unit} {at})"
    return None


def _located(documents: Path, uri: str) -> str:
    """A file inside the artifact (the default corpus's crawl) is recorded relative to it, so that it
    moves with it: shown where it is now."""
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str(documents / uri)
