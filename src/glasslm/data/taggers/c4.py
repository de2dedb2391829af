"""C4 cleaning signals (Raffel et al. 2020, section 2.2), as Dolma's ``c4_v1`` tagger computes them,
with the same attribute names.

Per line (``text.split("\\n")``, span including the line's newline except for the last line):
``lines_with_no_ending_punctuation`` (the stripped line does not end in . ? ! or "),
``lines_with_too_few_words`` (fewer than 3 words — Dolma's choice; C4 itself kept lines of at
least 5 words). Per document, present only when true: ``has_naughty_word`` (a word or phrase of
the "List of Dirty, Naughty, Obscene, and Otherwise Bad Words", LDNOOBW, CC BY 4.0 — the same
file dolma ships, ``naughty_words_en.txt`` here), ``has_javascript`` (a word equal to
"javascript"), ``has_lorem_ipsum``, ``has_curly_brace``; always ``line_count``.

Dolma tests each line's words and phrases against the list; a word of any line is a word of the
document and the phrases contain no newline, so one lower-cased pass over the whole text gives the
same answers (except for the context-dependent lower-casing of a final Greek sigma) and is much
faster: one set intersection and one compiled alternation instead of ~120 substring scans per line.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, register

MIN_WORDS_PER_LINE = 3
EOL_PUNCTUATION = (".", "?", "!", '"')
NAUGHTY_FILE = Path(__file__).with_name("naughty_words_en.txt")


@cache
def naughty_lists() -> tuple[frozenset[str], re.Pattern[str] | None]:
    entries = [w for w in NAUGHTY_FILE.read_text(encoding="utf-8").splitlines() if w]
    words = frozenset(w for w in entries if " " not in w)
    phrases = sorted((w for w in entries if " " in w), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, phrases))) if phrases else None
    return words, pattern


def has_naughty_word(lowered: str) -> bool:
    words, phrases = naughty_lists()
    if not words.isdisjoint(lowered.split()):
        return True
    return phrases is not None and phrases.search(lowered) is not None


@register("c4")
class C4Tagger(Tagger):
    """Dolma c4_v1 signals: per-line spans plus document-level flags."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    def tag(self, text: str) -> Attributes:
        n = len(text)
        no_punct: list[list[float]] = []
        few_words: list[list[float]] = []
        lines = text.split("\n")
        last = len(lines) - 1
        offset = 0
        for i, line in enumerate(lines):
            end = offset + len(line) + (1 if i < last else 0)
            stripped = line.strip()
            # str.lower() cannot create or remove the final . ? ! " so endswith on the raw line is exact
            if not stripped.endswith(EOL_PUNCTUATION):
                no_punct.append([offset, end, 1.0])
            if len(stripped.split(None, MIN_WORDS_PER_LINE - 1)) < MIN_WORDS_PER_LINE:
                few_words.append([offset, end, 1.0])
            offset = end
        attrs: Attributes = {}
        if no_punct:
            attrs["lines_with_no_ending_punctuation"] = no_punct
        if few_words:
            attrs["lines_with_too_few_words"] = few_words
        lowered = text.lower()
        if has_naughty_word(lowered):
            attrs["has_naughty_word"] = [[0, n, 1.0]]
        if "javascript" in lowered and "javascript" in lowered.split():
            attrs["has_javascript"] = [[0, n, 1.0]]
        if "lorem ipsum" in lowered:
            attrs["has_lorem_ipsum"] = [[0, n, 1.0]]
        if "{" in text:
            attrs["has_curly_brace"] = [[0, n, 1.0]]
        attrs["line_count"] = [[0, n, float(len(lines))]]
        return attrs
