"""Offensive-language probability with alt-profanity-check (a TF-IDF + calibrated linear SVM model
shipped inside the wheel, trained on human-labelled offensive/hateful posts; runs offline).

Moderation in the open: the tagger only scores; the threshold lives in the mixer recipe, so every
removal is a ledger row with its score. Attributes: document-level ``doc`` (probability that the
whole text is offensive) and one ``paragraph`` span per paragraph (blocks separated by blank lines)
with that paragraph's probability — a long document with one offensive paragraph has a low ``doc``
score but a high ``paragraph`` span.

One ``predict_prob`` call per batch of documents (all their paragraphs included): the model is a
sparse matrix product, so batching amortises scikit-learn's per-call overhead, and each row's score
does not depend on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, paragraphs, register, score


@cache
def _model() -> Any:
    import profanity_check  # loads the vectorizer and model from the package at import

    return profanity_check


@register("toxicity")
class ToxicityTagger(Tagger):
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"paragraphs": True}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._check = _model()

    def tag(self, text: str) -> Attributes:
        return self.tag_batch([text])[0]

    def tag_batch(self, texts: Sequence[str]) -> list[Attributes]:
        pieces: list[str] = []
        layout: list[list[tuple[int, int]]] = []
        for text in texts:
            paras = list(paragraphs(text)) if self.options["paragraphs"] else []
            layout.append(paras)
            pieces.append(text)
            pieces.extend(text[s:e] for s, e in paras)
        probs = self._check.predict_prob(pieces).tolist() if pieces else []
        out: list[Attributes] = []
        i = 0
        for text, paras in zip(texts, layout, strict=True):
            attrs: Attributes = {"doc": [[0, len(text), score(probs[i])]]}
            i += 1
            if paras:
                attrs["paragraph"] = [
                    [s, e, score(p)] for (s, e), p in zip(paras, probs[i : i + len(paras)], strict=True)
                ]
                i += len(paras)
            out.append(attrs)
        return out
