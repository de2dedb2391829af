"""The default corpus: real text nobody on this project wrote, the same bytes on every machine.

It reads nothing from the host outside the Python installation and the distributions glasslm pins
(their versions, and Python's, are recorded in the manifest): the same versions give the same
shards wherever it is built. Outside text — a host's /usr/share/doc or man pages included — comes
in through ``glasslm data import`` (importers/), the one door for it.

Three sources (Dolma ``source`` field), named for what they are:

- ``code``: the Python standard library's ``.py`` files (sysconfig's ``stdlib`` path, without
  ``site-packages``/``dist-packages`` and the ``test``/``tests``/``idle_test`` packages, whose files
  are deliberately malformed fixtures), licence PSF-2.0.
- ``docs``: per stdlib module, its module, class and function docstrings (via ``ast``), one
  document per module; and every ``pydoc_data.topics`` help topic, one document each. PSF-2.0.
- ``web``: a crawl of documentation pages rendered as HTML from the pinned distributions (project
  pages from their READMEs, API pages from their docstrings, licence files as text/plain), written
  to ``warc/web.warc.gz`` with warcio and imported by the same WARC → main-text path as a user's
  crawl (corpus_web.py): extraction, and quarantine of the non-HTML responses, run in every build.

Determinism: an id is a hash of the document's *origin* (a logical path: ``stdlib/json/decoder.py``,
``pydoc_data.topics/assert``; a page's WARC record id is derived from its URL), so it is stable across
machines with the same versions. Candidates are visited in the order of the hash of their origin —
a fixed pseudo-random order, so a byte cap takes a sample spread over the whole source rather than
the alphabetically first modules — and written in that order; gzip shards have a zero mtime.
``added`` and ``created`` are both the configured ``date`` (default 2026-01-01): file modification
times change with every install, so they would make the corpus unreproducible. No absolute path
goes into a document (paths differ between installations; the origin is logical).

Sizes: each source stops at its byte cap (UTF-8 bytes of text); documents that would cross the cap
are skipped and the walk goes on until less than ``min_room`` bytes are left. Defaults (4 MB of code,
4 MB of docs, 8 MB of web) keep the whole pipeline within minutes on two cores; 0 means no cap.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm.config import ConfigError
from glasslm.data import corpus_web
from glasslm.data.importers.records import ImportInput
from glasslm.data.importers.run import Importer, ShardWriter

SOURCES = ("code", "docs", "web")
PSF = "PSF-2.0"
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


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
    # Outside text instead of the default corpus (`glasslm data import`; `glasslm pipeline` imports
    # these when given): [{path: crawl/*.warc.gz, source: web, format: warc}, ...]
    inputs: list[ImportInput] = field(default_factory=list)

    def validate(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ConfigError(f"config key 'corpus.sources': unknown {unknown}; choose from {list(SOURCES)}")
        for key in ("max_bytes_code", "max_bytes_docs", "max_bytes_web", "max_doc_bytes", "shard_bytes"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'corpus.{key}' must be >= 0, got {getattr(self, key)}")
        for spec in self.inputs:
            spec.validate()

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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "docs": self.docs,
            "bytes": self.bytes,
            "shards": self.shards,
            "candidates": self.candidates,
            "skipped": dict(sorted(self.skipped.items())),
            **self.extra,
        }


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
    return [
        (p.relative_to(root).as_posix(), p)
        for p in _walk_files(root, _STDLIB_SKIP_DIRS)
        if p.suffix == ".py" and p.is_file()
    ]


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


_CANDIDATES = {"code": code_candidates, "docs": docs_candidates}


# Reading a candidate ---------------------------------------------------------------------------


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
        raw = c.path.read_bytes()
    except OSError as e:
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
    if "\x00" in text:
        return None, "binary (NUL bytes)"
    if not text.strip():
        return None, "empty"
    return text, None


# Building --------------------------------------------------------------------------------------


def make_document(c: Candidate, source: str, text: str, config: CorpusConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"origin": c.origin, "license": c.license}
    metadata.update({k: v for k, v in c.extra.items() if v is not None})
    return {
        "id": doc_id(c.origin),
        "text": text,
        "source": source,
        "added": config.date,
        "created": config.date,
        "metadata": metadata,
    }


def build_source(source: str, config: CorpusConfig, out_dir: Path, notes: list[str]) -> SourceReport:
    if source == "web":
        return build_web(config, out_dir.parent, notes)
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


def build_web(config: CorpusConfig, root: Path, notes: list[str]) -> SourceReport:
    """Render the pinned distributions' pages into ``root/warc/web.warc.gz`` and import that crawl."""
    warc = root / "warc" / "web.warc.gz"
    made = corpus_web.write_warc(
        warc, config.max_bytes_web, config.max_doc_bytes, config.date, config.min_room
    )
    importer = Importer(root, config.shard_bytes, config.date)
    importer.run_input(ImportInput(path=str(warc), source="web", format="warc"))
    result = importer.finish()
    web = result.domains.get("web", {"docs": 0, "bytes": 0, "shards": 0})
    report = SourceReport(
        docs=web["docs"], bytes=web["bytes"], shards=web["shards"], candidates=sum(made["pages"].values())
    )
    report.skipped.update({f"quarantined: {k}": v for k, v in result.quarantined_by_reason.items()})
    report.skipped.update(
        {f"page {k}": v for k, v in made["pages"].items() if k in ("empty", "too large") and v}
    )
    report.extra = {
        "pages": made["pages"],
        "records": result.totals.records,
        "quarantined": result.totals.quarantined,
        "distributions": made["distributions"],
    }
    return report


def reader_versions() -> dict[str, str]:
    """Versions that decide the bytes of a corpus: Python's and the readers' and renderers'."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": f"{platform.python_implementation()} {platform.python_version()}"}
    for name in ("glasslm", "warcio", "resiliparse", "markdown-it-py", "pyarrow", "fsspec", "isal", "orjson"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_corpus(config: CorpusConfig, root: Path) -> tuple[dict[str, SourceReport], list[str]]:
    """Write ``root/documents/<source>-NNNN.jsonl.gz``; returns per-source reports and notes."""
    out_dir = root / "documents"
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    reports = {source: build_source(source, config, out_dir, notes) for source in config.sources}
    return reports, notes
