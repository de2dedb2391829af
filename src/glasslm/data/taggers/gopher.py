"""Gopher quality signals (Rae et al. 2021, "Scaling Language Models", appendix A), as Dolma's
``gopher_v1`` tagger computes them, with the same attribute names.

Same definitions as dolma 1.2.1 (``dolma/taggers/gopher.py``), including its choices:
words are ``text.split()``; "characters" in the n-gram and duplicate-line fractions means the sum of
word lengths; duplicate n-gram fractions count every occurrence of a repeated n-gram (overlapping
ones included), n-grams are only reported for n ≤ number of words; lines are ``text.split("\\n")``;
an ellipsis is only "…" (U+2026); required words are matched case-sensitively.

One exception by default, the option ``duplicate_lines``:

- ``"gopher"`` (default): the duplicate-line signals count non-empty lines only, as the Gopher
  repetition filter means them (Rae et al. 2021, appendix A; datatrove's ``GopherRepetitionFilter``
  splits lines on ``\\n+`` and so never sees an empty one). A blank line between paragraphs is layout,
  not repeated content.
- ``"dolma"``: every ``\\n``-separated line, blank and whitespace-only ones included (dolma 1.2.1
  ``gopher_v1``, our attribute values equal dolma's then). Every blank line of a multi-paragraph
  document is a "duplicate" of the others, so a clean three-paragraph document already has 2 of 5
  lines duplicated (0.4 > 0.3) and fails the rule: measured false positives in docs/data-tagging.md.

The computation is ours and vectorised: words are mapped to integer ids once, and for each n the
n-grams are 64-bit polynomial hashes of those ids counted with ``numpy.unique``, instead of
dolma's nine ``Counter``s of word tuples (the slowest part of dolma's tagger, measured in
benchmarks/tag_throughput.py). A 64-bit hash collision could merge two distinct n-grams; at the
n-gram counts of one document (< 10^6) the probability is below 10^-7.

``GOPHER_RULES`` are the thresholds Dolma applies to these signals (the Gopher rules in dolma's
statistics code for its v1 mix, the ``gopher_rules`` of its stats processors): a document fails a rule when its value is
outside [low, high]. A mixer recipe can use them as they are.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from glasslm.data.taggers.base import Attributes, Tagger, doc_span, register

REQUIRED_ENGLISH_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
SYMBOLS = ("#", "\u2026")
BULLET_POINTS = ("*", "-")
MOST_COMMON_N = (2, 3, 4)
DUPLICATE_N = (5, 6, 7, 8, 9, 10)

# attribute name -> (low, high): the document is kept when low <= value <= high (None: no bound).
# Rae et al. use 0.2 for characters in duplicate lines; Dolma's rules use 0.3 — we follow Dolma.
GOPHER_RULES: dict[str, tuple[float | None, float | None]] = {
    "word_count": (50, 100_000),
    "median_word_length": (3, 10),
    "symbol_to_word_ratio": (None, 0.1),
    "fraction_of_words_with_alpha_character": (0.8, None),
    "required_word_count": (2, None),
    "fraction_of_lines_starting_with_bullet_point": (None, 0.9),
    "fraction_of_lines_ending_with_ellipsis": (None, 0.3),
    "fraction_of_duplicate_lines": (None, 0.3),
    "fraction_of_characters_in_duplicate_lines": (None, 0.3),
    "fraction_of_characters_in_most_common_2grams": (None, 0.20),
    "fraction_of_characters_in_most_common_3grams": (None, 0.18),
    "fraction_of_characters_in_most_common_4grams": (None, 0.16),
    "fraction_of_characters_in_duplicate_5grams": (None, 0.15),
    "fraction_of_characters_in_duplicate_6grams": (None, 0.14),
    "fraction_of_characters_in_duplicate_7grams": (None, 0.13),
    "fraction_of_characters_in_duplicate_8grams": (None, 0.12),
    "fraction_of_characters_in_duplicate_9grams": (None, 0.11),
    "fraction_of_characters_in_duplicate_10grams": (None, 0.10),
}

# A letter or a non-decimal numeric character (² ½): str.isalnum minus decimal digits and "_".
_ALPHA_OR_NUMERIC = re.compile(r"[^\W\d_]")


def _has_alpha(word: str) -> bool:
    """``any(c.isalpha() for c in word)``, with one C-level regex scan for the common cases."""
    m = _ALPHA_OR_NUMERIC.search(word)
    if m is None:
        return False
    return m.group().isalpha() or any(c.isalpha() for c in word)


_PRIME = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the rolling product never loses low bits


def ngram_fractions(ids: np.ndarray, lengths: np.ndarray, total_chars: int) -> dict[str, float]:
    """Most-common (n = 2..4) and duplicate (n = 5..10) n-gram character fractions, dolma's way."""
    out: dict[str, float] = {}
    n_words = len(ids)
    hashes = ids.astype(np.uint64) + np.uint64(1)
    chars = lengths.astype(np.int64)
    # An n-gram can only repeat where its (n-1)-gram prefix repeats, so from n = 5 on only those
    # positions are counted; once nothing repeats, no longer n-gram repeats either.
    candidates: np.ndarray | None = None
    for n in range(2, 11):
        if n > n_words:
            break
        # hashes[i] / chars[i] describe the n-gram starting at word i (n-1 gram extended by one word)
        with np.errstate(over="ignore"):
            hashes = hashes[:-1] * _PRIME + (ids[n - 1 :].astype(np.uint64) + np.uint64(1))
        chars = chars[:-1] + lengths[n - 1 :]
        if n in MOST_COMMON_N:
            _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
            # Counter.most_common(1) returns, among the most frequent n-grams, the one seen first.
            top = counts.max()
            winner = first[counts == top].min()
            out[f"fraction_of_characters_in_most_common_{n}grams"] = (
                int(top) * int(chars[winner]) / max(total_chars, 1)
            )
            continue
        all_chars = max(int(chars.sum()), 1)
        candidates = np.arange(len(hashes)) if candidates is None else candidates[candidates < len(hashes)]
        if len(candidates) == 0:
            out[f"fraction_of_characters_in_duplicate_{n}grams"] = 0.0
            continue
        _, inverse, counts = np.unique(hashes[candidates], return_inverse=True, return_counts=True)
        candidates = candidates[counts[inverse] > 1]
        out[f"fraction_of_characters_in_duplicate_{n}grams"] = int(chars[candidates].sum()) / all_chars
    return out


DUPLICATE_LINES = ("gopher", "dolma")  # the choices of the option, explained in the module docstring


def gopher_attributes(text: str, duplicate_lines: str = "gopher") -> dict[str, float]:
    """All gopher_v1 signals of ``text`` by name, in dolma's order (``duplicate_lines``: see module doc)."""
    words = text.split()
    word_count = len(words)
    # Per distinct word: computed once, then weighted by how often the word occurs.
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=word_count)
    occurrences = np.bincount(ids, minlength=len(vocab)) if word_count else np.zeros(0, np.int64)
    uniq = list(vocab)
    word_len = np.fromiter(map(len, uniq), dtype=np.int64, count=len(uniq))
    lengths = word_len[ids]
    total_chars = int(lengths.sum())

    def weighted(flags: list[bool]) -> int:
        return int(occurrences[np.fromiter(flags, dtype=bool, count=len(flags))].sum()) if flags else 0

    symbol_words = weighted(["#" in w or "\u2026" in w for w in uniq])
    alpha_words = weighted([w.isalpha() or _has_alpha(w) for w in uniq])
    required = weighted([w in REQUIRED_ENGLISH_WORDS for w in uniq])

    attrs: dict[str, float] = {}
    attrs.update(ngram_fractions(ids, lengths, total_chars))
    attrs["character_count"] = len(text)
    attrs["word_count"] = word_count
    attrs["median_word_length"] = float(np.median(lengths)) if word_count else 0.0
    attrs["symbol_to_word_ratio"] = symbol_words / max(word_count, 1)
    attrs["fraction_of_words_with_alpha_character"] = alpha_words / max(word_count, 1)
    attrs["required_word_count"] = required

    lines = text.split("\n")
    line_count = len(lines)
    bullets = sum(1 for line in lines if line.startswith(BULLET_POINTS))
    ellipsis = sum(1 for line in lines if line.endswith("\u2026"))
    attrs["fraction_of_lines_starting_with_bullet_point"] = bullets / line_count
    attrs["fraction_of_lines_ending_with_ellipsis"] = ellipsis / line_count
    counted = lines if duplicate_lines == "dolma" else [line for line in lines if line.strip()]
    line_counts: dict[str, int] = {}
    for line in counted:
        line_counts[line] = line_counts.get(line, 0) + 1
    dup_lines = dup_chars = 0
    for line, count in line_counts.items():
        if count > 1:
            dup_lines += count
            dup_chars += len(line) * count
    attrs["fraction_of_duplicate_lines"] = dup_lines / max(len(counted), 1)
    attrs["fraction_of_characters_in_duplicate_lines"] = dup_chars / max(total_chars, 1)
    return attrs


def failed_gopher_rules(attrs: dict[str, float]) -> list[str]:
    """Names of the Gopher rules ``attrs`` fails (empty: the document passes)."""
    failed = []
    for name, (low, high) in GOPHER_RULES.items():
        if name not in attrs:
            continue
        value = attrs[name]
        if (low is not None and value < low) or (high is not None and value > high):
            failed.append(name)
    return failed


@register("gopher")
class GopherTagger(Tagger):
    """Dolma gopher_v1 signals, one document-level span each."""

    version = 2  # 2: duplicate lines are non-empty lines by default (duplicate_lines="gopher")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["duplicate_lines"] not in DUPLICATE_LINES:
            raise ValueError(
                f"tagger 'gopher': option duplicate_lines must be one of {list(DUPLICATE_LINES)}, "
                f"got {self.options['duplicate_lines']!r}"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"duplicate_lines": "gopher"}

    def tag(self, text: str) -> Attributes:
        attrs = gopher_attributes(text, self.options["duplicate_lines"])
        return {name: doc_span(text, value) for name, value in attrs.items()}
