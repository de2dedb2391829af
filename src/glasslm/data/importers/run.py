"""``glasslm data import``: outside text → a documents artifact, streaming, with nothing lost.

Each input group (``ImportInput``) is expanded to files (fsspec), each file is read by its format's
reader one record at a time, and every record ends in exactly one place: a Dolma shard of its
domain (``documents/<source>-NNNN.jsonl.gz``, the layout of ``data corpus``) or ``quarantine.jsonl``
with file, record index and reason. So ``records == imported + quarantined`` holds per file, per
input and in total, and is checked before the manifest is written.

Memory does not grow with the corpus: readers stream, each domain holds at most one pending shard
(``shard_bytes`` of text), quarantine entries go straight to disk. The one exception is the
duplicate-id check, which keeps 8 bytes per document (ids hashed to 64 bits; the rare collisions
are resolved exactly by re-reading the ids at the end).
"""

from __future__ import annotations

import array
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from glasslm.artifacts import read_manifest
from glasslm.config import ConfigError
from glasslm.data.documents import (
    Location,
    Quarantine,
    dumps_bytes,
    iter_documents,
    list_local_shards,
    write_jsonl,
)
from glasslm.data.importers import arrow, jsonl, text, warc
from glasslm.data.importers.records import ImportInput, Item, ReadOptions
from glasslm.data.importers.sources import SourceFile, expand, source_file
from glasslm.data.origins import ORIGINS_FILE, UNITS, Origin, OriginsFile
from glasslm.data.progress import StageProgress

Reader = Callable[[SourceFile, ReadOptions], Iterator[Item]]
READERS: dict[str, Reader] = {
    "jsonl": jsonl.read_jsonl,
    "parquet": arrow.read_parquet,
    "arrow": arrow.read_arrow,
    "warc": warc.read_warc,
}
SUFFIXES: dict[str, tuple[str, ...]] = {
    "jsonl": jsonl.SUFFIXES,
    "parquet": (".parquet", ".pq"),
    "arrow": (".arrow", ".feather"),
    "warc": warc.SUFFIXES,
}
DEFAULT_SOURCE = "imported"


class ShardWriter:
    """Writes ``<source>-NNNN.jsonl.gz`` shards of about ``shard_bytes`` of text each, and, given
    ``origins``, where each of their lines came from."""

    def __init__(
        self, out_dir: Path, source: str, shard_bytes: int, first: int = 0, origins: OriginsFile | None = None
    ) -> None:
        self.out_dir, self.source, self.shard_bytes = out_dir, source, shard_bytes
        self.pending: list[dict[str, Any]] = []
        self.pending_origins: list[Origin] = []
        self.pending_bytes = 0
        self.shards = first
        self.origins = origins

    def add(self, doc: dict[str, Any], nbytes: int, origin: Origin | None = None) -> None:
        self.pending.append(doc)
        if origin is not None:
            self.pending_origins.append(origin)
        self.pending_bytes += nbytes
        if self.shard_bytes and self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"{self.source}-{self.shards:04d}.jsonl.gz"
            # ISA-L level 1: ~5x zlib's speed on our text and slightly smaller (documents.write_jsonl);
            # deterministic, so the same documents still give the same bytes.
            write_jsonl(self.out_dir / name, self.pending, isal_level=1)
            if self.origins is not None and len(self.pending_origins) == len(self.pending):
                self.origins.shard(name, self.pending_origins)
            self.shards += 1
            self.pending, self.pending_origins, self.pending_bytes = [], [], 0


class QuarantineFile(Quarantine):
    """A quarantine that writes each entry as it comes (``Quarantine`` keeps them in memory)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path=path)
        self._file: Any = None

    def add(self, file: Location | str, line: int, reason: str, raw: bytes) -> None:
        super().add(file, line, reason, raw)
        self._open().write(dumps_bytes(self.records.pop()) + b"\n")

    def _open(self) -> Any:
        if self._file is None:
            assert self.path is not None
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        return self._file

    def copy_from(self, path: Path) -> None:
        """Entries of an earlier import (``--extend``) come first, as they are."""
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self._open())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass
class Plan:
    """The files of one input group and how each is read."""

    spec: ImportInput
    files: list[tuple[str, str, Reader, dict[str, Any]]] = field(
        default_factory=list
    )  # path, format, reader, metadata
    fs: Any = None
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it is not read


def format_of(path: str) -> str | None:
    name = path.lower()
    for fmt, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def plan(spec: ImportInput) -> Plan:
    """Expand ``spec.path`` and pick a reader per file (``format: auto`` goes by suffix)."""
    spec.validate()
    fs, root, paths = expand(spec.path)
    out = Plan(spec, fs=fs)
    fmt = spec.format
    is_dir = bool(paths) and (len(paths) > 1 or paths[0] != root) and fs.isdir(root)
    if fmt == "hf" or (fmt == "auto" and is_dir and arrow.is_hf_folder(fs, root)):
        out.files = [
            (p, "hf", arrow.read_arrow, {"split": split} if split else {})
            for p, split in arrow.hf_data_files(fs, root)
        ]
        return out
    known = {p: format_of(p) for p in paths}
    alone = len(paths) == 1 and fs.isfile(fs._strip_protocol(spec.path))  # one file named, not a tree
    for p in paths:  # .json: JSON Lines (as `datasets`' to_json writes it) when asked for, or given alone
        if known[p] is None and p.lower().endswith(".json") and (fmt == "jsonl" or (fmt == "auto" and alone)):
            known[p] = "jsonl"
    tabular = (".csv", ".tsv", ".xlsx")
    if fmt == "auto" and alone and paths[0].lower().endswith(tabular):
        raise ConfigError(
            f"{paths[0]}: CSV/TSV/Excel files are not read by data import: convert to Parquet or JSONL "
            "(e.g. pyarrow.parquet.write_table(pyarrow.csv.read_csv(path), 'data.parquet')), or give "
            "--format text to import the file as one document"
        )
    if fmt == "text" or (fmt == "auto" and not any(known.values())):
        tree = text.TextTree(fs, root, paths)
        out.files = [(p, "text", tree.read, {}) for p in paths]
        return out
    for p in paths:
        got = known[p]
        if got is None or (fmt != "auto" and got != fmt):
            out.skipped[p] = f"not a {fmt if fmt != 'auto' else 'known data'} file (by its suffix)"
        else:
            out.files.append((p, got, READERS[got], {}))
    if not out.files:
        raise ConfigError(
            f"{spec.path}: no {fmt if fmt != 'auto' else 'jsonl/parquet/arrow/warc'} files found "
            "(for a tree of text, Markdown or code give format text)"
        )
    return out


@dataclass
class Totals:
    records: int = 0
    imported: int = 0
    quarantined: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "records": self.records,
            "imported": self.imported,
            "quarantined": self.quarantined,
            "bytes": self.bytes,
        }


@dataclass
class ImportResult:
    totals: Totals
    inputs: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    domains: dict[str, dict[str, int]]
    quarantined_by_reason: dict[str, int]
    duplicate_ids: dict[str, Any]
    notes: list[str]

    def metrics(self) -> dict[str, Any]:
        return {
            **self.totals.to_json(),
            "docs": self.totals.imported,
            "domains": self.domains,
            "quarantined_by_reason": self.quarantined_by_reason,
            "inputs": self.inputs,
            "duplicate_ids": self.duplicate_ids,
            "notes": self.notes,
        }


class Importer:
    """Runs input groups into one artifact directory (``root``)."""

    def __init__(self, root: Path, shard_bytes: int, date: str) -> None:
        self.root = root
        self.docs_dir = root / "documents"
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.shard_bytes, self.date = shard_bytes, date
        self.writers: dict[str, ShardWriter] = {}
        self.quarantine = QuarantineFile(root / "quarantine.jsonl")
        self.origins = OriginsFile(root / ORIGINS_FILE)
        self.totals = Totals()
        self.domains: dict[str, Counter[str]] = {}
        self.sources: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.id_hashes = array.array("q")
        self.links = 0
        self.link_shards: Counter[str] = Counter()  # linked files per domain (not named after it)

    def writer(self, source: str) -> ShardWriter:
        if source not in self.writers:
            first = len([p for p in self.docs_dir.glob(f"{source}-*.jsonl.gz")])
            self.writers[source] = ShardWriter(self.docs_dir, source, self.shard_bytes, first, self.origins)
        return self.writers[source]

    def run_input(
        self, spec: ImportInput, p: Plan | None = None, report: StageProgress | None = None
    ) -> None:
        p = p or plan(spec)
        report = report or StageProgress("import", len(p.files), enabled=False, unit="files")
        if spec.link:
            self._check_linkable(spec, p)
        counts = Totals()
        capped = False
        unread: list[str] = []
        for path, fmt, reader, extra in p.files:
            if capped:
                unread.append(path)
                continue
            src = source_file(p.fs, path)
            if isinstance(p.fs, LocalFileSystem) and Path(path).is_relative_to(self.root.resolve()):
                src.uri = (
                    Path(path).relative_to(self.root.resolve()).as_posix()
                )  # part of the artifact: moves with it
            options = ReadOptions(spec.text_column, spec.id_column, self.date, extra, require_id=spec.link)
            capped = self.read_file(src, fmt, reader, options, spec, counts)
            report.update(src.size)
        if unread:  # one note, not one per file: a capped tree can leave tens of thousands unread
            self.notes.append(
                f"{spec.path}: {len(unread):,} file(s) not read, the input reached max_bytes={spec.max_bytes} "
                f"(first: {unread[0]})"
            )
        for path, why in p.skipped.items():
            self.notes.append(f"{path}: skipped, {why}")
        self.inputs.append(
            {
                "path": spec.path,
                "source": spec.source,
                "format": spec.format,
                "link": spec.link,
                "files": len(p.files),
                "capped": capped,
                "skipped_files": len(p.skipped),
                **counts.to_json(),
            }
        )

    def read_file(
        self,
        src: SourceFile,
        fmt: str,
        reader: Reader,
        options: ReadOptions,
        spec: ImportInput,
        counts: Totals,
    ) -> bool:
        """Read one file to the end (or the input's cap); True when the cap was reached."""
        file = Totals()
        capped = False
        items = reader(src, options)
        link_kept = 0
        file_domains: set[str] = set()
        try:
            for index, doc, reason, raw in items:
                file.records += 1
                if doc is None:
                    self.quarantine.add(src.uri, index, reason or "unusable", raw)
                    file.quarantined += 1
                    continue
                source = self._source_of(doc, spec)
                if spec.link and doc.get("source") != source:
                    link_kept += 1
                text_bytes = len(doc["text"].encode("utf-8"))
                if not spec.link:
                    doc["source"] = source
                    self.writer(source).add(doc, text_bytes, (src.uri, UNITS[fmt], index))
                self.id_hashes.append(hash(doc["id"]))
                domain_name = source if not spec.link else str(doc.get("source") or DEFAULT_SOURCE)
                file_domains.add(domain_name)
                domain = self.domains.setdefault(domain_name, Counter())
                domain["docs"] += 1
                domain["bytes"] += text_bytes
                file.imported += 1
                file.bytes += text_bytes
                if spec.max_bytes and counts.bytes + file.bytes >= spec.max_bytes:
                    capped = True
                    break
        finally:
            items.close()  # type: ignore[attr-defined]
        src.finish()
        if spec.link:
            self._link(src, spec)
            self.link_shards.update(file_domains)
            if link_kept:
                self.notes.append(
                    f"{src.uri}: {link_kept} documents keep their own 'source' (--link does not "
                    f"rewrite files; import without --link to set source {spec.source!r})"
                )
        assert file.records == file.imported + file.quarantined
        src.counts.update(records=file.records, imported=file.imported, quarantined=file.quarantined)
        entry = src.record()
        entry.update(format=fmt, source=spec.source or None, linked=spec.link, complete=not capped)
        self.sources.append(entry)
        for key in ("records", "imported", "quarantined", "bytes"):
            setattr(counts, key, getattr(counts, key) + getattr(file, key))
            setattr(self.totals, key, getattr(self.totals, key) + getattr(file, key))
        return capped

    def _source_of(self, doc: dict[str, Any], spec: ImportInput) -> str:
        return spec.source or str(doc.get("source") or DEFAULT_SOURCE)

    def _check_linkable(self, spec: ImportInput, p: Plan) -> None:
        """Before any file is read: --link makes hard links, so the files must be local and on the
        filesystem of ``--out``. A hard link is a regular file of the artifact (hashed, verified, read
        by every stage like a shard) that costs no copy; a symlink would be refused as irregular, and
        would let the artifact change under its manifest when the file is rewritten."""
        if not isinstance(p.fs, LocalFileSystem):
            raise ConfigError(
                f"{spec.path}: --link needs local files (a remote file cannot be referenced in place)"
            )
        here = os.stat(self.docs_dir).st_dev
        elsewhere = [path for path, *_ in p.files if os.stat(path).st_dev != here]
        if elsewhere:
            raise ConfigError(
                f"{elsewhere[0]}: --link makes hard links, so the files must be on the filesystem of "
                f"--out ({len(elsewhere)} file(s) are not); import without --link to copy them"
            )

    def _link(self, src: SourceFile, spec: ImportInput) -> None:
        suffix = next(s for s in jsonl.SUFFIXES if src.name.endswith(s))
        name = self.docs_dir / f"{spec.source or 'linked'}-link-{self.links:04d}{suffix}"
        os.link(src.path, name)
        self.origins.linked(name.name, src.uri)
        self.links += 1

    def extend(self, artifact: Path) -> None:
        """Start from an earlier import (or default corpus): its shards, sources and totals carry over."""
        manifest = read_manifest(artifact)
        if manifest.get("kind") != "documents":
            raise ConfigError(
                f"{artifact}: --extend needs a documents artifact, got {manifest.get('kind')!r}"
            )
        for shard in list_local_shards(artifact / "documents"):
            target = self.docs_dir / shard.relative_to(artifact / "documents")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(shard, target)
            except OSError:
                shutil.copy2(shard, target)
        metrics = manifest.get("metrics", {})
        for name, d in (metrics.get("domains") or metrics.get("sources") or {}).items():
            self.domains.setdefault(name, Counter()).update(
                {"docs": d.get("docs", 0), "bytes": d.get("bytes", 0)}
            )
        old_q = artifact / "quarantine.jsonl"
        if old_q.is_file():
            self.quarantine.copy_from(old_q)
        if (artifact / ORIGINS_FILE).is_file():  # before this import's shards, as the shards are
            shutil.copyfile(artifact / ORIGINS_FILE, self.origins.path)
        self.sources.extend(manifest.get("sources", []))
        for key in ("records", "imported", "quarantined", "bytes"):
            value = metrics.get(key, metrics.get("docs", 0) if key in ("records", "imported") else 0)
            setattr(self.totals, key, getattr(self.totals, key) + int(value or 0))
        self.links = len(list(self.docs_dir.glob("*-link-*")))
        for name, d in (metrics.get("domains") or {}).items():  # linked files keep their count
            self.link_shards[name] += max(0, int(d.get("shards", 0)) - self._written_shards(name))
        self.notes.append(f"extends {artifact}")

    def finish(self) -> ImportResult:
        for w in self.writers.values():
            w.flush()
        self.quarantine.close()
        self.origins.close()
        t = self.totals
        if t.records != t.imported + t.quarantined:
            raise AssertionError(
                f"import totals do not add up: {t.records} read != {t.imported} imported "
                f"+ {t.quarantined} quarantined"
            )
        domains = {}
        for name, c in sorted(self.domains.items()):
            domains[name] = {
                "docs": c["docs"],
                "bytes": c["bytes"],
                "shards": self._written_shards(name) + self.link_shards[name],
            }
        return ImportResult(
            t,
            self.inputs,
            self.sources,
            domains,
            dict(sorted(self.quarantine.counts.items())),
            self.duplicate_ids(),
            self.notes,
        )

    def _written_shards(self, domain: str) -> int:
        """Shards this importer wrote for ``domain`` (``<domain>-NNNN``; linked files are counted apart:
        their documents keep their own sources)."""
        return sum(
            1
            for p in list_local_shards(self.docs_dir)
            if p.name.startswith(f"{domain}-") and "-link-" not in p.name
        )

    def duplicate_ids(self) -> dict[str, Any]:
        """Ids given to more than one document, with where each copy is (shard:line)."""
        hashes = np.frombuffer(self.id_hashes, dtype=np.int64)
        if len(hashes) < 2:
            return {"count": 0, "examples": {}}
        values, counts = np.unique(hashes, return_counts=True)
        repeated_total = int((counts - 1).sum())
        if not repeated_total:
            return {"count": 0, "examples": {}}
        sample = set(values[counts > 1][:20].tolist())  # examples only: memory stays bounded
        where: dict[str, list[str]] = {}
        for shard in list_local_shards(self.docs_dir):  # exact ids and places, for the sampled hashes
            for line, doc in iter_documents(shard, Quarantine()):
                if hash(doc["id"]) in sample:
                    where.setdefault(doc["id"], []).append(f"{shard.relative_to(self.docs_dir)}:{line}")
        dups = {k: v[:10] for k, v in where.items() if len(v) > 1}
        return {"count": repeated_total, "examples": dict(sorted(dups.items()))}


def run_import(
    inputs: list[ImportInput],
    root: Path,
    *,
    shard_bytes: int = 2_000_000,
    date: str = "2026-01-01T00:00:00Z",
    extend: Path | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import every input group into ``root`` (an artifact being built); returns totals and lineage."""
    if not inputs:
        raise ConfigError("nothing to import: give SRC paths or corpus.inputs")
    importer = Importer(root, shard_bytes, date)
    if extend is not None:
        importer.extend(extend)
        clash = {s.source for s in inputs if s.source} & set(importer.domains)
        if clash:
            raise ConfigError(
                f"--extend {extend}: source(s) {sorted(clash)} already there; name the new domain "
                "differently (--source)"
            )
    plans = [(spec, plan(spec)) for spec in inputs]
    report = StageProgress("import", sum(len(p.files) for _, p in plans), enabled=progress, unit="files")
    for spec, p in plans:
        importer.run_input(spec, p, report)
    result = importer.finish()
    report.quarantined = Counter(result.quarantined_by_reason)  # by reason: known once all are read
    report.close()
    return result
