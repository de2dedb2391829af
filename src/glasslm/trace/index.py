"""A suffix-array index over a tokens artifact's training stream, and the map from offsets to documents.

The index (artifact kind ``trace_index``) holds:

- ``stream.bin``: the train token stream (all ``train/part-*.npy`` concatenated in part order), as
  big-endian fixed-width integers (2 bytes per token for uint16 tokens, 4 for uint32). Big-endian
  bytes compare (``memcmp``, Python ``bytes <``) in the same order as the token sequences, so a
  query is a binary search with byte-string comparisons and no per-token Python loop.
- ``sa.npy``: the suffix array — every token offset of the stream, sorted by the suffix starting there
  (int32 while the stream has < 2^31 tokens, else int64). Loaded memory-mapped.
- ``docs.parquet``: one row per document in stream order (doc_id, source, part, start, end, and
  ``offset``: where the document starts in the stream). Offset → document is a ``searchsorted``.
- ``tokenizer.json``: a copy of the tokenizer that made the tokens, so a query is tokenized exactly
  like the training data without any lookup elsewhere (and never from a hub).

The suffix array is built by ``pydivsufsort`` (libdivsufsort, Yuta Mori's induced-sorting SA
construction) on the big-endian bytes, keeping the suffixes at token boundaries. Chosen by
measurement (``benchmarks/trace_index.py``, ``benchmarks/RESULTS.md``, 20M tokens on 2 cores): 0.79 s
per million tokens against 4.9 s for infini-gram's Rust builder on the same token ids and 18.7 s for a
numpy prefix-doubling sort; it is a small pip wheel with no external executables (infini-gram's
builder shells out to a bundled binary), and its byte order equals the token order, so the same
stream file serves the queries. Its cost: ~24 MB of peak memory per million tokens (infini-gram ~10).

Staleness: the manifest names the tokens artifact by manifest hash; ``load_index`` compares it with
the tokens artifact as it is now and refuses a stale index.
"""

from __future__ import annotations

import mmap
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from glasslm import artifacts
from glasslm.artifacts import ArtifactError

KIND = "trace_index"
STREAM = "stream.bin"
SUFFIX_ARRAY = "sa.npy"
DOCS = "docs.parquet"
TOKENIZER = "tokenizer.json"


@dataclass
class IndexConfig:
    tokens: str = ""  # the tokens artifact indexed (resolved path)
    train_run: str | None = None  # the training run whose data order gives "steps" (optional)
    split: str = "train"


@dataclass
class TokenStream:
    """The train split of a tokens artifact, concatenated, with its document table."""

    tokens: np.ndarray  # 1-D uint16/uint32
    docs: dict[str, np.ndarray] = field(default_factory=dict)  # columns of docs.parquet
    eos_id: int | None = None


def resolve_sources(path: str | Path) -> tuple[Path, Path | None]:
    """(tokens artifact, training run or None) for a tokens artifact, a training run or a run directory."""
    path = Path(path)
    manifest = path / artifacts.MANIFEST
    if manifest.is_file():
        kind = artifacts.read_manifest(path).get("kind")
        if kind == "tokens":
            return path, None
        if kind == "train_run":
            return tokens_of_run(path), path
        raise ArtifactError(
            f"{path}: is a '{kind}' artifact; give a tokens artifact, a training run or a run directory"
        )
    if not path.is_dir():
        raise ArtifactError(
            f"{path}: no such directory (expected a tokens artifact, a training run or a run directory)"
        )
    run = path / "train"
    if (run / artifacts.MANIFEST).is_file() and artifacts.read_manifest(run).get("kind") == "train_run":
        return tokens_of_run(run), run
    return artifacts.find_artifact(path, "tokens"), None


def tokens_of_run(run: Path) -> Path:
    """The tokens artifact a training run read. A finished run's manifest names it by a path relative to
    the run (so a moved or downloaded run finds its own copy, never the original's); a run still going
    has only its config.yaml (``data.tokens``, as it was given)."""
    if (run / artifacts.MANIFEST).is_file():
        recorded = artifacts.input_of_kind(run, "tokens")
        if recorded is not None:
            return artifacts.find_artifact(recorded, "tokens")
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise ArtifactError(
            f"{run}: training run without config.yaml; cannot tell which tokens it trained on"
        )
    config = yaml.safe_load(config_file.read_text()) or {}
    tokens = (config.get("data") or {}).get("tokens")
    if not tokens:
        raise ArtifactError(f"{config_file}: no data.tokens key; cannot tell which tokens the run trained on")
    candidate = Path(tokens)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = run / tokens  # a path written relative to the run directory
    return artifacts.find_artifact(candidate, "tokens", subdirs=["tokens"])


def read_stream(tokens_dir: Path, split: str = "train") -> TokenStream:
    """Concatenate ``<split>/part-*.npy`` in part order and give each document its stream offset."""
    split_dir = tokens_dir / split
    parts = sorted(split_dir.glob("part-*.npy"))
    if not parts:
        raise ArtifactError(f"{split_dir}: no part-*.npy files (is {tokens_dir} a tokens artifact?)")
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise ArtifactError(
            f"{split_dir}: parts must all be uint16 or all uint32, found {sorted(map(str, dtypes))}"
        )
    starts = np.cumsum([0] + [len(a) for a in arrays])[:-1]
    part_offset = {int(p.stem.split("-")[1]): int(off) for p, off in zip(parts, starts, strict=True)}
    tokens = np.concatenate(arrays) if len(arrays) > 1 else np.asarray(arrays[0])
    table = pq.read_table(split_dir / "index.parquet").to_pydict()
    part = np.asarray(table["part"], dtype=np.int64)
    missing = set(np.unique(part).tolist()) - set(part_offset)
    if missing:
        raise ArtifactError(
            f"{split_dir}/index.parquet: names parts {sorted(missing)} that have no .npy file"
        )
    start = np.asarray(table["start"], dtype=np.int64)
    offset = np.array([part_offset[p] for p in part.tolist()], dtype=np.int64) + start
    order = np.argsort(offset, kind="stable")
    docs = {
        "doc_id": np.asarray(table["doc_id"], dtype=object)[order],
        "source": np.asarray(table["source"], dtype=object)[order],
        "part": part[order],
        "start": start[order],
        "end": np.asarray(table["end"], dtype=np.int64)[order],
        "offset": offset[order],
    }
    eos = (artifacts.read_manifest(tokens_dir).get("metrics") or {}).get("eos_id")
    return TokenStream(tokens=tokens, docs=docs, eos_id=None if eos is None else int(eos))


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Token offsets sorted by suffix; int32 below 2^31 tokens."""
    from pydivsufsort import divsufsort

    if len(tokens) == 0:
        return np.zeros(0, dtype=np.int32)
    # pydivsufsort sorts the big-endian bytes of the ids and keeps the token-aligned suffixes.
    sa = divsufsort(np.ascontiguousarray(tokens))
    return sa.astype(np.int32 if len(tokens) < 2**31 else np.int64, copy=False)


def find_tokenizer(tokens_dir: Path) -> Path | None:
    """The tokenizer.json of the tokenizer artifact the tokens artifact names among its inputs."""
    tokenizer = artifacts.input_of_kind(tokens_dir, "tokenizer")
    if tokenizer is not None and (tokenizer / TOKENIZER).is_file():
        return tokenizer / TOKENIZER
    local = tokens_dir / TOKENIZER
    return local if local.is_file() else None


def build_index(source: str | Path, out: str | Path) -> Path:
    """Index the train stream of ``source`` (tokens artifact, training run or run dir) into ``out``."""
    tokens_dir, run = resolve_sources(source)
    tokenizer = find_tokenizer(tokens_dir)
    if tokenizer is None:
        raise ArtifactError(
            f"{tokens_dir}: its manifest names no tokenizer artifact with a tokenizer.json; "
            "queries could not be tokenized like the training data"
        )
    stream = read_stream(tokens_dir)
    config = IndexConfig(tokens=str(tokens_dir.resolve()), train_run=str(run.resolve()) if run else None)
    inputs: list[Path] = [tokens_dir, tokenizer.parent] + ([run] if run else [])
    with artifacts.create_artifact(out, KIND, config=config, inputs=inputs) as art:
        t0 = time.perf_counter()
        sa = suffix_array(stream.tokens)
        build_s = time.perf_counter() - t0
        big_endian = stream.tokens.astype(stream.tokens.dtype.newbyteorder(">"))
        big_endian.tofile(art.path / STREAM)
        np.save(art.path / SUFFIX_ARRAY, sa)
        pq.write_table(
            pa.table({k: list(v) if v.dtype == object else v for k, v in stream.docs.items()}),
            art.path / DOCS,
        )
        shutil.copyfile(tokenizer, art.path / TOKENIZER)
        art.metrics.update(
            n_tokens=int(len(stream.tokens)),
            n_docs=int(len(stream.docs["offset"])),
            token_bytes=int(stream.tokens.dtype.itemsize),
            eos_id=stream.eos_id,
            sa_build_seconds=round(build_s, 3),
            method="pydivsufsort (libdivsufsort) over big-endian token bytes",
        )
        art.extra["tokens_manifest_sha256"] = artifacts.manifest_hash(tokens_dir)
    return Path(out)


class StaleIndexError(ArtifactError):
    """The tokens an index was built from changed (or vanished) since."""


@dataclass
class Match:
    """Suffix-array rows ``[lo, hi)`` whose suffixes start with the query."""

    lo: int
    hi: int

    @property
    def count(self) -> int:
        return self.hi - self.lo


class SuffixIndex:
    """Queries over a ``trace_index`` artifact: counts, positions, longest matches, documents."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest = artifacts.read_manifest(path)
        if self.manifest.get("kind") != KIND:
            raise ArtifactError(f"{path}: is a '{self.manifest.get('kind')}' artifact, expected {KIND}")
        metrics = self.manifest.get("metrics") or {}
        self.width = int(metrics["token_bytes"])
        self.n_tokens = int(metrics["n_tokens"])
        self.eos_id = metrics.get("eos_id")
        self.sa = np.load(path / SUFFIX_ARRAY, mmap_mode="r")
        self._file = open(path / STREAM, "rb")  # noqa: SIM115 (lives as long as the mmap)
        size = (path / STREAM).stat().st_size
        self.stream: mmap.mmap | bytes = (
            mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        )
        if size != self.n_tokens * self.width or len(self.sa) != self.n_tokens:
            raise ArtifactError(
                f"{path}: {STREAM} or {SUFFIX_ARRAY} does not match n_tokens in the manifest; rebuild it"
            )
        docs = pq.read_table(path / DOCS).to_pydict()
        self.doc_offset = np.asarray(docs["offset"], dtype=np.int64)
        self.doc_len = np.asarray(docs["end"], dtype=np.int64) - np.asarray(docs["start"], dtype=np.int64)
        self.doc_id: list[str] = [str(d) for d in docs["doc_id"]]
        self.doc_source: list[str] = [str(s) for s in docs["source"]]
        self.dtype = np.dtype(">u2" if self.width == 2 else ">u4")

    def close(self) -> None:
        if isinstance(self.stream, mmap.mmap):
            self.stream.close()
        self._file.close()

    # -- the token stream ------------------------------------------------------------------------
    def encode_query(self, ids: list[int] | np.ndarray) -> bytes:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= 256**self.width):
            raise ValueError(f"token ids must lie in [0, {256**self.width}) for this index")
        return ids.astype(self.dtype).tobytes()

    def tokens(self, start: int, end: int) -> np.ndarray:
        start, end = max(0, start), min(self.n_tokens, end)
        if end <= start:
            return np.zeros(0, dtype=np.int64)
        raw = self.stream[start * self.width : end * self.width]
        return np.frombuffer(raw, dtype=self.dtype).astype(np.int64)

    def _suffix(self, row: int, n_bytes: int) -> bytes:
        start = int(self.sa[row]) * self.width
        return self.stream[start : start + n_bytes]

    # -- searches --------------------------------------------------------------------------------
    def _bound(self, key: bytes, lo: int, hi: int, upper: bool) -> int:
        """First row in [lo, hi) whose suffix prefix is > key (upper) or >= key (lower)."""
        n = len(key)
        while lo < hi:
            mid = (lo + hi) // 2
            s = self._suffix(mid, n)
            if s < key or (upper and s == key):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, ids: list[int] | np.ndarray) -> Match:
        """The suffix-array rows of every occurrence of ``ids`` (empty query: every position)."""
        key = self.encode_query(ids)
        if not key:
            return Match(0, self.n_tokens)
        lo = self._bound(key, 0, self.n_tokens, upper=False)
        hi = self._bound(key, lo, self.n_tokens, upper=True)
        return Match(lo, hi)

    def count(self, ids: list[int] | np.ndarray) -> int:
        return self.find(ids).count

    def positions(self, match: Match, limit: int | None = None) -> np.ndarray:
        """Stream offsets of a match (sorted), at most ``limit`` of them."""
        hi = match.hi if limit is None else min(match.hi, match.lo + limit)
        return np.sort(np.asarray(self.sa[match.lo : hi], dtype=np.int64))

    def longest_prefix(self, ids: list[int] | np.ndarray) -> int:
        """Length in tokens of the longest prefix of ``ids`` that occurs in the stream.

        The suffixes sharing the longest prefix with the query sort next to where the query would be
        inserted, so one binary search plus two common-prefix checks suffice.
        """
        key = self.encode_query(ids)
        if not key:
            return 0
        row = self._bound(key, 0, self.n_tokens, upper=False)
        best = 0
        for neighbour in (row - 1, row):
            if 0 <= neighbour < self.n_tokens:
                best = max(best, _common_prefix(self._suffix(neighbour, len(key)), key))
        return best // self.width

    # -- documents -------------------------------------------------------------------------------
    def doc_of(self, offset: int) -> int:
        """Row in docs.parquet of the document holding stream offset ``offset``."""
        return int(np.searchsorted(self.doc_offset, offset, side="right") - 1)

    def doc_info(self, row: int) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id[row],
            "source": self.doc_source[row],
            "offset": int(self.doc_offset[row]),
            "length": int(self.doc_len[row]),
        }


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    x = np.frombuffer(a[:n], dtype=np.uint8)
    y = np.frombuffer(b[:n], dtype=np.uint8)
    return int(np.argmax(x != y))


def load_index(path: str | Path, check_stale: bool = True) -> SuffixIndex:
    """Open an index; refuse it when the tokens it was built from changed since."""
    path = Path(path)
    index = SuffixIndex(path)
    if check_stale:
        # The input reference is relative to the index (a moved run still finds its tokens); the config's
        # absolute path is the fallback for indexes built before inputs were stored so.
        tokens = artifacts.input_of_kind(path, "tokens") or Path(
            index.manifest.get("config", {}).get("tokens", "")
        )
        recorded = index.manifest.get("tokens_manifest_sha256")
        if not (tokens / artifacts.MANIFEST).is_file():
            index.close()
            raise StaleIndexError(
                f"{path}: the tokens artifact it indexes ({tokens}) is gone; rebuild or move it back"
            )
        if artifacts.manifest_hash(tokens) != recorded:
            index.close()
            raise StaleIndexError(
                f"{path}: stale index — the tokens artifact {tokens} changed since the index was built "
                f"(manifest hash differs); rebuild it with: glasslm trace index {tokens} --out {path}"
            )
    return index


def find_index(path: str | Path) -> Path:
    """A trace_index artifact given itself, a directory holding one (``runs/NAME``), or the one beside
    a training run (``runs/NAME/train`` → ``runs/NAME/trace_index``). Nothing else: a tokens or eval
    artifact is not a way to name its run's index."""
    path = Path(path)

    def kind_of(where: Path) -> str | None:
        return artifacts.read_manifest(where).get("kind") if (where / artifacts.MANIFEST).is_file() else None

    if kind_of(path) == KIND:
        return path
    candidates = [path / "trace_index"]
    if kind_of(path) == "train_run":
        candidates.append(path.parent / "trace_index")
    for candidate in candidates:
        if kind_of(candidate) == KIND:
            return candidate
    raise ArtifactError(
        f"{path}: no trace index here (looked for a '{KIND}' artifact, in {path / 'trace_index'}, and beside "
        f"a training run); build one with: glasslm trace index RUN --out RUN/trace_index"
    )
