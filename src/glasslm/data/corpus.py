"""The embedded default corpus: real text nobody on this project wrote, built offline on any machine.

Three sources (Dolma ``source`` field):

- ``code``: the Python standard library's ``.py`` files (sysconfig's ``stdlib`` path, without
  ``site-packages``/``dist-packages`` and the ``test``/``tests``/``idle_test`` packages, whose files
  are deliberately malformed fixtures), licence PSF-2.0.
- ``docs``: per stdlib module, its module, class and function docstrings (via ``ast``), one
  document per module; and every ``pydoc_data.topics`` help topic, one document each. PSF-2.0.
- ``web``: what the machine has under ``/usr/share/doc`` (copyright files, changelogs and NEWS,
  gzip or not, READMEs), ``/usr/share/common-licenses`` and ``/usr/share/man`` (roff turned into
  text, every language directory included). Noisy on purpose: licence texts, e-mail addresses, many
  exact and near duplicates, non-English man pages. Licence: the ``License:`` lines of the
  package's Debian copyright file for ``/usr/share/doc/<pkg>/…``, the file's own name for
  ``common-licenses``, unknown for man pages.

Determinism: an id is a hash of the document's *origin* (a logical path: ``stdlib/json/decoder.py``,
``/usr/share/doc/bash/copyright``, ``pydoc_data.topics/assert``), so it is stable across machines
with the same files. Candidate files are visited in the order of the hash of their origin — a
fixed pseudo-random order, so a byte cap takes a sample spread over the whole source rather than
the alphabetically first modules — and written in that order; gzip shards have a zero mtime. The
same machine and config therefore give byte-identical shards. ``added`` and ``created`` are both
the configured ``date`` (default 2026-01-01): file modification times change with every package
reinstall, so they would make the corpus unreproducible.

Sizes: each source stops at its byte cap (UTF-8 bytes of text); documents that would cross the cap
are skipped and the walk goes on until less than ``min_room`` bytes are left. Defaults (4 MB of code,
4 MB of docs, 8 MB of web) keep the whole pipeline within minutes on two cores; 0 means no cap.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm.config import ConfigError
from glasslm.data.documents import write_jsonl
from glasslm.data.roff import roff_to_text

SOURCES = ("code", "docs", "web")
PSF = "PSF-2.0"
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_DOC_PREFIXES = ("copyright", "changelog", "news", "readme")


@dataclass
class CorpusConfig:
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    max_bytes_code: int = 4_000_000
    max_bytes_docs: int = 4_000_000
    max_bytes_web: int = 8_000_000
    max_doc_bytes: int = 1_000_000  # larger files (huge changelogs) are skipped
    min_room: int = 2_000  # stop a source once less than this is left under its cap
    shard_bytes: int = 2_000_000  # a new shard starts after this many bytes of text
    date: str = "2026-01-01T00:00:00Z"  # the `added` and `created` of every document (see module doc)
    stdlib_dir: str = ""  # "" = sysconfig.get_paths()["stdlib"] of the running Python
    doc_dirs: list[str] = field(default_factory=lambda: ["/usr/share/doc", "/usr/share/common-licenses"])
    man_dir: str = "/usr/share/man"

    def validate(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ConfigError(f"config key 'corpus.sources': unknown {unknown}; choose from {list(SOURCES)}")
        for key in ("max_bytes_code", "max_bytes_docs", "max_bytes_web", "max_doc_bytes", "shard_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'corpus.{key}' must be >= 0, got {getattr(self, key)}")

    def cap(self, source: str) -> int:
        return int(getattr(self, f"max_bytes_{source}"))


@dataclass
class CorpusRun:
    """The ``glasslm data corpus`` config: one ``corpus`` section (``--corpus.max_bytes_web=…``)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)


@dataclass
class Candidate:
    """A file (or part of one) that may become documents; read only when its turn comes."""

    origin: str  # logical path, hashed into the id
    path: Path | None
    kind: str  # how to read it: py, docstrings, topic, text, man
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def order_key(self) -> tuple[str, str]:
        return hashlib.sha256(self.origin.encode()).hexdigest(), self.origin


@dataclass
class SourceReport:
    docs: int = 0
    bytes: int = 0
    shards: int = 0
    candidates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"docs": self.docs, "bytes": self.bytes, "shards": self.shards, "candidates": self.candidates,
                "skipped": dict(sorted(self.skipped.items()))}


def doc_id(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()[:24]


# Candidates per source -------------------------------------------------------------------------


def stdlib_root(config: CorpusConfig) -> Path:
    return Path(config.stdlib_dir or sysconfig.get_paths()["stdlib"])


def _walk_files(root: Path, skip_dirs: frozenset[str] | set[str] = frozenset()) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def stdlib_files(root: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(root).as_posix(), p) for p in _walk_files(root, _STDLIB_SKIP_DIRS)
            if p.suffix == ".py" and p.is_file()]


def code_candidates(config: CorpusConfig, notes: list[str]) -> list[Candidate]:
    root = stdlib_root(config)
    if not root.is_dir():
        notes.append(f"code: {root} not found, source skipped")
        return []
    return [Candidate(f"stdlib/{rel}", p, "py", PSF) for rel, p in stdlib_files(root)]


def docs_candidates(config: CorpusConfig, notes: list[str]) -> list[Candidate]:
    root = stdlib_root(config)
    out: list[Candidate] = []
    if root.is_dir():
        out += [Candidate(f"stdlib-docstrings/{rel}", p, "docstrings", PSF) for rel, p in stdlib_files(root)]
    else:
        notes.append(f"docs: {root} not found, docstrings skipped")
    try:
        from pydoc_data import topics as pydoc_topics

        names = sorted(pydoc_topics.topics)
    except ImportError:
        notes.append("docs: pydoc_data.topics not importable, help topics skipped")
        names = []
    out += [Candidate(f"pydoc_data.topics/{name}", None, "topic", PSF, {"topic": name}) for name in names]
    return out


def _package_licenses(pkg_dir: Path, cache: dict[Path, str | None]) -> str | None:
    """Licences named by ``License:`` lines of a Debian machine-readable copyright file."""
    if pkg_dir in cache:
        return cache[pkg_dir]
    found: list[str] = []
    try:
        with open(pkg_dir / "copyright", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("License:"):
                    name = line[len("License:"):].strip()
                    if name and name not in found:
                        found.append(name)
    except OSError:
        pass
    cache[pkg_dir] = ", ".join(found) if found else None
    return cache[pkg_dir]


def web_candidates(config: CorpusConfig, notes: list[str]) -> list[Candidate]:
    out: list[Candidate] = []
    licence_cache: dict[Path, str | None] = {}
    for directory in map(Path, config.doc_dirs):
        if not directory.is_dir():
            notes.append(f"web: {directory} not found, skipped")
            continue
        licenses_dir = directory.name == "common-licenses"
        for p in _walk_files(directory):
            if not p.is_file():
                continue
            if licenses_dir:
                out.append(Candidate(str(p), p, "text", p.name, {"kind": "license"}))
            elif p.name.lower().startswith(_DOC_PREFIXES):
                rel = p.relative_to(directory)
                pkg_dir = directory / rel.parts[0] if len(rel.parts) > 1 else None
                lic = _package_licenses(pkg_dir, licence_cache) if pkg_dir is not None else None
                out.append(Candidate(str(p), p, "text", lic, {"kind": p.name.lower().split(".")[0],
                                                             "package": rel.parts[0] if pkg_dir else None}))
    man = Path(config.man_dir)
    if not man.is_dir():
        notes.append(f"web: {man} not found, man pages skipped")
        return out
    for p in _walk_files(man):
        rel = p.relative_to(man)
        if not p.is_file() or len(rel.parts) < 2:
            continue
        lang = rel.parts[0] if not rel.parts[0].startswith("man") else "en"
        out.append(Candidate(str(p), p, "man", None, {"kind": "man", "man_lang": lang}))
    return out


_CANDIDATES = {"code": code_candidates, "docs": docs_candidates, "web": web_candidates}


# Reading a candidate ---------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def module_docstrings(source: str) -> str | None:
    """A module's docstrings in source order, each headed by the qualified name it documents."""
    tree = ast.parse(source)
    parts: list[str] = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(module_doc)

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    parts.append(f"{name}\n{doc}")
                visit(child, name + ".")

    visit(tree, "")
    return "\n\n".join(parts) if parts else None


def read_candidate(c: Candidate) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason it was skipped)."""
    if c.kind == "topic":
        from pydoc_data.topics import topics

        return topics[c.extra["topic"]], None
    assert c.path is not None
    try:
        raw = _read_bytes(c.path)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        return None, f"unreadable: {type(e).__name__}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if c.kind == "docstrings":
        try:
            text = module_docstrings(text) or ""
        except (SyntaxError, ValueError):
            return None, "not parseable Python"
    elif c.kind == "man":
        if text.lstrip().startswith(".so "):
            return None, "man page redirect (.so)"
        text = roff_to_text(text)
    if "\x00" in text:
        return None, "binary (NUL bytes)"
    if not text.strip():
        return None, "empty"
    return text, None


# Building --------------------------------------------------------------------------------------


class ShardWriter:
    """Writes ``<source>-NNNN.jsonl.gz`` shards of about ``shard_bytes`` of text each."""

    def __init__(self, out_dir: Path, source: str, shard_bytes: int) -> None:
        self.out_dir, self.source, self.shard_bytes = out_dir, source, shard_bytes
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.shards = 0

    def add(self, doc: dict[str, Any], nbytes: int) -> None:
        self.pending.append(doc)
        self.pending_bytes += nbytes
        if self.shard_bytes and self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            write_jsonl(self.out_dir / f"{self.source}-{self.shards:04d}.jsonl.gz", self.pending)
            self.shards += 1
            self.pending, self.pending_bytes = [], 0


def make_document(c: Candidate, source: str, text: str, config: CorpusConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"origin": c.origin, "license": c.license}
    if c.path is not None:
        metadata["path"] = str(c.path)
    metadata.update({k: v for k, v in c.extra.items() if v is not None})
    return {"id": doc_id(c.origin), "text": text, "source": source, "added": config.date,
            "created": config.date, "metadata": metadata}


def build_source(source: str, config: CorpusConfig, out_dir: Path, notes: list[str]) -> SourceReport:
    report = SourceReport()
    candidates = sorted(_CANDIDATES[source](config, notes), key=lambda c: c.order_key)
    report.candidates = len(candidates)
    cap = config.cap(source)
    writer = ShardWriter(out_dir, source, config.shard_bytes)
    for c in candidates:
        if cap and cap - report.bytes < config.min_room:
            report.skipped["cap reached"] += 1
            continue
        text, reason = read_candidate(c)
        if text is None:
            report.skipped[reason or "unknown"] += 1
            continue
        nbytes = len(text.encode("utf-8"))
        if config.max_doc_bytes and nbytes > config.max_doc_bytes:
            report.skipped["larger than max_doc_bytes"] += 1
            continue
        if cap and report.bytes + nbytes > cap:
            report.skipped["would cross the cap"] += 1
            continue
        writer.add(make_document(c, source, text, config), nbytes)
        report.docs += 1
        report.bytes += nbytes
    writer.flush()
    report.shards = writer.shards
    return report


def build_corpus(config: CorpusConfig, root: Path) -> tuple[dict[str, SourceReport], list[str]]:
    """Write ``root/documents/<source>-NNNN.jsonl.gz``; returns per-source reports and notes."""
    out_dir = root / "documents"
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    reports = {source: build_source(source, config, out_dir, notes) for source in config.sources}
    return reports, notes
