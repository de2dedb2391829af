"""Taggers: one module per family, registered by name (see ``base``)."""

from glasslm.data.taggers.base import Attributes, Tagger, available, get_tagger, load_all, register

__all__ = ["Attributes", "Tagger", "available", "get_tagger", "load_all", "register"]
