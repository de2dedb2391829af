"""What a tagger is, and the registry that finds taggers by name.

A tagger reads a document's text and returns Dolma-style attributes: a mapping from an attribute
name to spans ``[start, end, score]`` (character offsets into the text, end exclusive). A
document-level value is one span over the whole text, ``[0, len(text), value]``. The stage runner
prefixes names with ``<experiment>__<tagger>__`` when it writes them, as ``dolma tag`` does.

Adding a tagger is adding one module to this package that defines a subclass of :class:`Tagger`
decorated with ``@register("name")``; :func:`load_all` imports every module here, so the CLI and
the registry see it without further wiring.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

Spans = list[list[float]]
Attributes = dict[str, Spans]

# Dolma rounds every score to 5 decimals (dolma.core.taggers.TAGGER_SCORE_PRECISION); we do the
# same so attribute files compare with dolma's and stay small.
SCORE_PRECISION = 5

_REGISTRY: dict[str, type[Tagger]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")

T = TypeVar("T", bound="type[Tagger]")


class Tagger(ABC):
    """One family of signals. Subclasses set ``name`` (via ``@register``) and ``version``."""

    name: ClassVar[str] = ""
    # Bump when the output for the same text and options changes, so manifests tell runs apart.
    version: ClassVar[int] = 1

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.defaults())
        if unknown:
            raise ValueError(
                f"tagger '{self.name}': unknown option(s) {sorted(unknown)}; valid: {sorted(self.defaults())}"
            )
        self.options: dict[str, Any] = {**self.defaults(), **options}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The tagger's options and their default values (recorded in the manifest)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What goes into the attributes manifest to say exactly what produced the attributes."""
        return {
            "name": self.name,
            "version": self.version,
            "class": type(self).__qualname__,
            "module": type(self).__module__,
            "options": dict(self.options),
        }

    @abstractmethod
    def tag(self, text: str) -> Attributes:
        """Attributes of one document (``text`` is non-empty)."""

    def tag_batch(self, texts: Sequence[str]) -> list[Attributes]:
        """Attributes of several documents; taggers with a vectorised model override this."""
        return [self.tag(t) for t in texts]


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a tagger available under ``name``."""
    if not _NAME.match(name):
        raise ValueError(f"tagger name '{name}' must be lower-case letters, digits and '_' (a variable name)")

    def wrap(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"tagger name '{name}' is taken by {existing.__module__}.{existing.__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def load_all() -> None:
    """Import every module of this package so that their ``@register`` decorators run."""
    package = importlib.import_module(__package__ or "glasslm.data.taggers")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def available() -> list[str]:
    load_all()
    return sorted(_REGISTRY)


def get_tagger(name: str, options: Mapping[str, Any] | None = None) -> Tagger:
    """An instance of the tagger registered as ``name``."""
    load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown tagger '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**dict(options or {}))


# Helpers shared by several taggers -------------------------------------------------------------


def score(value: float) -> float:
    """A span score as dolma writes it: a float rounded to 5 decimals."""
    return round(float(value), SCORE_PRECISION)


def doc_span(text: str, value: float) -> Spans:
    """A document-level attribute: one span over the whole text."""
    return [[0, len(text), score(value)]]


def paragraphs(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the non-blank paragraphs of ``text``: blocks separated by blank lines.

    Dolma's ``split_paragraphs`` cuts at every newline; for language ID and toxicity a single line
    of a man page or a changelog is too short to classify, so here a paragraph is a block of
    consecutive non-blank lines. Spans exclude the separating blank lines.
    """
    start = 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        if text[start : m.start()].strip():
            yield start, m.start()
        start = m.end()
    if text[start:].strip():
        yield start, len(text)
