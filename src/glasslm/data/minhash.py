"""Vectorised word hashing, n-gram shingles, MinHash signatures and LSH band keys.

Word and n-gram hashing works on whole batches of documents with numpy, never one word at a time
in Python (decontamination needs it, with byte offsets). For MinHash itself we measured three
implementations end to end (shingling included) on 11 MB of Python stdlib source on the 2-core dev
box: `rensa` 0.5 (Rust, fed lists of shingle strings) 32.9 and 40.8 MB/s in two runs, our numpy
multiply-shift version 15.2 and 40.1 MB/s, `datasketch` 10.4 MB/s. `rensa` was never slower, so it is
the default backend; the numpy backend is kept for machines without a `rensa` wheel and as an
independent check in the tests.

Normalisation (shared with decontamination): text is taken as UTF-8 bytes, ASCII letters are
lower-cased, and a *word* is a maximal run of ASCII letters/digits or non-ASCII bytes (so letters of
other scripts stay inside words); everything else separates words. Doing it on bytes keeps byte
offsets exact, which decontamination turns into character spans.

Word hashes are polynomial hashes of the word's bytes modulo 2**64 computed from prefix sums, then
passed through the splitmix64 finaliser so that all 64 bits are well mixed. MinHash uses the
multiply-shift family h_j(x) = (a_j * x + b_j) mod 2**64 >> 32 (Dietzfelbinger et al. 1997), which
is 2-universal for 32-bit outputs and needs only two vector operations per permutation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
_BASE = _U64(0x100000001B3)  # odd, so it is invertible modulo 2**64
_BASE_INV = _U64(pow(0x100000001B3, -1, 1 << 64))
_NGRAM_MUL = _U64(0x9E3779B97F4A7C15)

# byte -> (is a word byte, lower-cased value)
_WORD = np.zeros(256, dtype=bool)
_WORD[ord("0") : ord("9") + 1] = True
_WORD[ord("a") : ord("z") + 1] = True
_WORD[ord("A") : ord("Z") + 1] = True
_WORD[0x80:] = True
# The same notion of a word for the per-document (rensa) path.
_WORD_RE = re.compile(r"[0-9a-z\x80-\U0010ffff]+")
_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[ord("A") : ord("Z") + 1] += 32


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection on uint64 that spreads every input bit over all outputs."""
    x = x.astype(_U64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


@dataclass
class Words:
    """The words of a batch of texts: hash, owning text, and byte span inside that text."""

    hashes: np.ndarray  # uint64, one per word
    doc: np.ndarray  # int64, index of the text in the batch
    start: np.ndarray  # int64, byte offset of the word inside its text
    end: np.ndarray  # int64, exclusive
    counts: np.ndarray  # int64, words per text


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=_U64)
    if n:
        out[0] = 1
        with np.errstate(over="ignore"):
            np.multiply.accumulate(out, out=out)
    return out


def words(texts: Sequence[str] | Sequence[bytes]) -> Words:
    """Normalised word hashes of every text in the batch, in order."""
    encoded = [t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    # A separator byte between texts guarantees no word spans two texts.
    joined = b"\n".join(encoded)
    offsets = np.zeros(len(encoded), dtype=np.int64)
    if len(encoded) > 1:
        offsets[1:] = np.cumsum(lengths[:-1] + 1)
    data = np.frombuffer(joined, dtype=np.uint8)
    is_word = _WORD[data]
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    # Polynomial hash of data[s:e] = (S[e] - S[s]) * BASE**(e-1), S = prefix sums of b[t] * BASE**-t.
    values = _LOWER[data]
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(data) + 1, dtype=_U64)
        np.cumsum(values * _powers(_BASE_INV, len(data)), out=prefix[1:])
        raw = (prefix[ends] - prefix[starts]) * _powers(_BASE, len(data))[ends - 1]
    hashes = mix64(raw ^ (ends - starts).astype(_U64))
    doc = np.searchsorted(offsets, starts, side="right") - 1
    counts = np.bincount(doc, minlength=len(encoded)).astype(np.int64)
    return Words(hashes=hashes, doc=doc, start=starts - offsets[doc], end=ends - offsets[doc], counts=counts)


def ngrams(w: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``n`` consecutive words inside one text, and the index of its first word.

    Texts with fewer than ``n`` words contribute nothing here (see :func:`shingles`).
    """
    total = len(w.hashes)
    if total < n:
        return np.empty(0, dtype=_U64), np.empty(0, dtype=np.int64)
    m = total - n + 1
    acc = np.zeros(m, dtype=_U64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _NGRAM_MUL + w.hashes[k : k + m]
    first = np.arange(m, dtype=np.int64)
    same_doc = w.doc[:m] == w.doc[n - 1 :]
    return mix64(acc[same_doc]), first[same_doc]


def shingles(w: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, owning text) for MinHash: word n-grams, or all words of a text shorter than n."""
    hashes, first = ngrams(w, n)
    doc = w.doc[first] if len(first) else np.empty(0, dtype=np.int64)
    short = np.flatnonzero((w.counts > 0) & (w.counts < n))
    if len(short):
        # Rare: a text with 1..n-1 words is one shingle of all its words (as datatrove does).
        starts = np.concatenate([[0], np.cumsum(w.counts)])[short]
        extra = np.zeros(len(short), dtype=_U64)
        with np.errstate(over="ignore"):
            for k in range(n - 1):
                take = k < w.counts[short]
                extra[take] = extra[take] * _NGRAM_MUL + w.hashes[starts[take] + k]
        hashes = np.concatenate([hashes, mix64(extra)])
        doc = np.concatenate([doc, short])
        order = np.argsort(doc, kind="stable")
        hashes, doc = hashes[order], doc[order]
    return hashes, doc


@dataclass(frozen=True)
class MinHasher:
    """MinHash with ``bands * rows`` permutations and LSH band keys (FineWeb: 5-grams, 14 × 8)."""

    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    backend: str = "rensa"  # "rensa" (fastest measured) or "numpy"
    block: int = 16_384  # shingles per vector block: 16k × 112 × 8 bytes ≈ 15 MB of scratch

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        k = self.bands * self.rows
        a = rng.integers(0, 2**63, size=k, dtype=np.uint64) * _U64(2) + _U64(1)  # odd multipliers
        b = rng.integers(0, 2**63, size=k, dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [n_texts, bands*rows], has_words bool [n_texts])."""
        if self.backend == "rensa":
            return self._signatures_rensa(texts)
        if self.backend != "numpy":
            raise ValueError(f"unknown MinHash backend '{self.backend}' (choose rensa or numpy)")
        a, b = self._params()
        sig = np.full((len(texts), len(a)), np.iinfo(np.uint32).max, dtype=np.uint32)
        w = words(texts)
        hashes, doc = shingles(w, self.ngram)
        for lo in range(0, len(hashes), self.block):
            h = hashes[lo : lo + self.block]
            d = doc[lo : lo + self.block]
            with np.errstate(over="ignore"):
                values = ((h[:, None] * a[None, :] + b[None, :]) >> _U64(32)).astype(np.uint32)
            starts = np.flatnonzero(np.diff(d, prepend=-1))
            reduced = np.minimum.reduceat(values, starts, axis=0)
            owners = d[starts]
            sig[owners] = np.minimum(sig[owners], reduced)
        return sig, w.counts > 0

    def _signatures_rensa(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        from rensa import RMinHash

        k = self.bands * self.rows
        sig = np.full((len(texts), k), np.iinfo(np.uint32).max, dtype=np.uint32)
        has_words = np.zeros(len(texts), dtype=bool)
        n = self.ngram
        for i, text in enumerate(texts):
            ws = _WORD_RE.findall(text.lower())
            if not ws:
                continue
            has_words[i] = True
            grams = (
                list(map(" ".join, zip(*(ws[j:] for j in range(n)), strict=False)))
                if len(ws) >= n
                else [" ".join(ws)]
            )
            m = RMinHash(num_perm=k, seed=self.seed)
            m.update(grams)
            sig[i] = m.digest()
        return sig, has_words

    def band_keys(self, texts: Sequence[str]) -> np.ndarray:
        """uint64 [n_texts, bands]: one key per band; texts without words get unique keys (never match)."""
        sig, has_words = self.signatures(texts)
        keys = np.zeros((len(texts), self.bands), dtype=_U64)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                acc = np.full(len(texts), _U64(band + 1), dtype=_U64)
                for r in range(self.rows):
                    acc = acc * _NGRAM_MUL + sig[:, band * self.rows + r].astype(_U64)
                keys[:, band] = mix64(acc)
        keys[~has_words] = 0
        return keys


def lsh_clusters(keys: np.ndarray) -> np.ndarray:
    """Connected components of documents sharing any band key; returns each document's root.

    ``keys`` is [n_docs, bands] in global document order; a key of 0 means "no signature". The root
    of a component is its smallest index, i.e. the first document in order, which survives.
    """
    n = len(keys)
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:  # path compression
            parent[x], x = root, int(parent[x])
        return root

    for band in range(keys.shape[1] if n else 0):
        column = keys[:, band]
        order = np.argsort(column, kind="stable")  # stable: equal keys stay in document order
        sorted_keys = column[order]
        same = (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_keys[1:] != 0)
        if not same.any():
            continue
        # Each document in a run of equal keys joins the run's first document.
        run_start = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]), np.arange(n), 0))
        for i in np.flatnonzero(same) + 1:
            x, y = find(int(order[i])), find(int(order[run_start[i]]))
            if x != y:
                parent[max(x, y)] = min(x, y)
    return np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
