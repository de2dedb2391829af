"""What every format reader hands the import: one ``Item`` per record, usable or not, and the rules
that make a record a Dolma document (shared by all formats, so a bad record gets the same reason
whatever file it came from)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from glasslm.config import ConfigError
from glasslm.data.documents import loads_fast, validate

FORMATS = ("auto", "jsonl", "parquet", "arrow", "hf", "text", "warc")
QUARANTINE_RAW_BYTES = 64 * 1024  # a binary file or an HTML page is kept in quarantine up to this much


@dataclass
class ImportInput:
    """One group of outside text: a file, directory, glob or URL, and the domain it becomes."""

    SHORTHAND: ClassVar[str] = "path"  # a bare string in a config is the path

    path: str = ""
    source: str = ""  # the Dolma `source` (domain) of its documents; "" = the records' own (JSONL)
    format: str = "auto"  # one of FORMATS; auto: by file suffix (a directory without data files: text)
    text_column: str = "text"  # Parquet/Arrow/HF: the column holding the text
    id_column: str = "id"  # Parquet/Arrow/HF: the column holding the id ("" or absent: derived ids)
    link: bool = False  # Dolma JSONL only: reference the files in place instead of copying them
    max_bytes: int = 0  # stop this input after this many bytes of imported text (0 = no cap)

    def validate(self) -> None:
        if not self.path:
            raise ConfigError(
                "config key 'corpus.inputs[].path' is required (a file, directory, glob or URL)"
            )
        if self.format not in FORMATS:
            raise ConfigError(
                f"config key 'corpus.inputs[].format': unknown {self.format!r}; choose from {list(FORMATS)}"
            )
        if self.link and self.format not in ("auto", "jsonl"):
            raise ConfigError("config key 'corpus.inputs[].link': only Dolma JSONL can be linked in place")
        if self.max_bytes < 0:
            raise ConfigError(f"config key 'corpus.inputs[].max_bytes' must be >= 0, got {self.max_bytes}")


class Item(NamedTuple):
    """A record as read: ``doc`` when usable, else ``reason`` (and the ``raw`` bytes for quarantine).

    ``position`` locates it in its file: line number from 1 (JSONL), row from 0 (Parquet, Arrow),
    record from 0 (WARC), 0 for a whole file (text trees)."""

    position: int
    doc: dict[str, Any] | None
    reason: str | None
    raw: bytes


@dataclass
class ReadOptions:
    """What a reader needs from its input group (formats ignore what they do not use)."""

    text_column: str = "text"
    id_column: str = "id"
    date: str = "2026-01-01T00:00:00Z"
    extra: dict[str, Any] = field(default_factory=dict)
    require_id: bool = False  # --link: files are used as they are, so an id cannot be derived


def content_id(*parts: str) -> str:
    """A stable id derived from content: the same text (and location parts) give the same id."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def bad(index: int, reason: str, raw: bytes = b"") -> Item:
    return Item(index, None, reason, raw[:QUARANTINE_RAW_BYTES])


def check_text(text: Any) -> str | None:
    """Why ``text`` cannot be a document's text, or None."""
    if text is None:
        return "null field: 'text'"
    if not isinstance(text, str):
        return f"non-string field: 'text' is {type(text).__name__}"
    if not text.strip():
        return "empty field: 'text'"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON escape: not writable as UTF-8
        return f"invalid UTF-8 in 'text': lone surrogate at {e.start}"
    return None


def as_document(obj: Any, require_id: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """A parsed record made a Dolma document: (doc, None) or (None, reason). A missing or null id
    becomes a content-derived one; every other field keeps Dolma's types (documents.validate)."""
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    if "text" not in obj:
        return None, "missing field: 'text'"
    reason = check_text(obj["text"])
    if reason is not None:
        return None, reason
    if obj.get("id") is None:
        if require_id:
            return (
                None,
                "missing field: 'id' (a linked file is used as it is: import without --link to derive ids)",
            )
        obj["id"] = content_id(obj["text"])
    reason = validate(obj)
    return (obj, None) if reason is None else (None, reason)


def parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    """(object, None) or (None, why the line is not JSON), with documents.py's fast path."""
    obj = loads_fast(raw)
    if isinstance(obj, dict):  # the common case; anything else takes the path that words the reasons
        return obj, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8: {e}"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e}"
    except RecursionError:
        return None, "malformed JSON: nested too deeply"
