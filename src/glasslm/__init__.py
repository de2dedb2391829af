"""glasslm: build language models in the open, end to end, with every step recorded."""

__version__ = "0.1.0"
