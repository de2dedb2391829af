"""Size statistics: ``char_length`` (Dolma's ``char_length_v1``) and ``stats`` (a few more counts).

``stats`` gives, document-level: ``chars``, ``bytes`` (UTF-8), ``words`` (whitespace-separated),
``lines`` (``text.split("\\n")``, as Gopher and C4 count them), ``paragraphs`` (blocks separated by
blank lines), ``mean_word_length``, ``mean_line_length``, ``max_line_length``, ``whitespace_fraction``
and ``non_ascii_fraction`` — plus one ``paragraph`` span per paragraph scored with its length in
characters. Repeated n-gram fractions are Gopher signals (``gopher`` tagger), not repeated here.
"""

from __future__ import annotations

from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, doc_span, paragraphs, register


@register("char_length")
class CharLengthTagger(Tagger):
    """The document's length in characters, as dolma's char_length_v1 (attribute ``length``)."""

    def tag(self, text: str) -> Attributes:
        return {"length": doc_span(text, len(text))}


@register("stats")
class StatsTagger(Tagger):
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"paragraph_spans": True}

    def tag(self, text: str) -> Attributes:
        n = len(text)
        encoded = text.encode("utf-8")
        words = text.split()
        lines = text.split("\n")
        line_lengths = [len(line) for line in lines]
        paras = list(paragraphs(text))
        word_chars = sum(map(len, words))
        # every non-whitespace character belongs to a word; every ASCII character encodes to one byte
        whitespace = n - word_chars
        non_ascii = n - len(text.encode("ascii", "ignore"))
        attrs: Attributes = {
            "chars": doc_span(text, n),
            "bytes": doc_span(text, len(encoded)),
            "words": doc_span(text, len(words)),
            "lines": doc_span(text, len(lines)),
            "paragraphs": doc_span(text, len(paras)),
            "mean_word_length": doc_span(text, word_chars / len(words) if words else 0.0),
            "mean_line_length": doc_span(text, sum(line_lengths) / len(lines)),
            "max_line_length": doc_span(text, max(line_lengths)),
            "whitespace_fraction": doc_span(text, whitespace / n),
            "non_ascii_fraction": doc_span(text, non_ascii / n),
        }
        if self.options["paragraph_spans"] and paras:
            attrs["paragraph"] = [[s, e, float(e - s)] for s, e in paras]
        return attrs
