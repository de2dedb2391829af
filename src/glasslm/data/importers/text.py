"""Trees of plain text, Markdown and source code: one document per file.

``metadata.path`` is the file's path below the tree's root; ``metadata.license`` is the licence the
file states in an SPDX header (``SPDX-License-Identifier:`` in its first lines) or, failing that, the
one its nearest enclosing licence file (LICENSE, COPYING, …) is recognised as, with
``metadata.license_from`` saying which. Gzip-compressed files are read decompressed, and man pages
(roff) are turned into text (roff.py), so a host's /usr/share/doc and /usr/share/man import as trees.
Binary files, invalid UTF-8, empty files and man-page redirects are quarantined with their reason.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from typing import Any

from glasslm.data.importers.records import Item, ReadOptions, bad, content_id
from glasslm.data.importers.sources import SourceFile
from glasslm.data.roff import roff_to_text

MAX_FILE_BYTES = 64 << 20  # one document is one file; larger files are quarantined, not held in memory
LICENSE_FILES = re.compile(r"^(LICEN[CS]E|COPYING|COPYRIGHT|UNLICENSE)([.-].*)?$", re.IGNORECASE)
_SPDX = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+\-() ]+?)\s*(?:\*/|-->|$)", re.MULTILINE)
_MAN_PAGE = re.compile(r"\.[1-9][a-z]*(\.gz)?$")
# (SPDX id, phrases that must all appear): the opening words of each licence's canonical text.
_FINGERPRINTS: list[tuple[str, tuple[str, ...]]] = [
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("AGPL-3.0", ("gnu affero general public license", "version 3")),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license", "version 2.1")),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("MIT", ("permission is hereby granted, free of charge",)),
    ("ISC", ("permission to use, copy, modify, and/or distribute this software for any purpose",)),
    ("Unlicense", ("this is free and unencumbered software released into the public domain",)),
    ("PSF-2.0", ("python software foundation license",)),
]


def identify_license(text: str) -> str | None:
    """The SPDX id of a licence text, from the phrases that open each licence (None if unknown)."""
    spdx = _SPDX.search(text[:4096])
    if spdx:
        return spdx.group(1).strip()
    head = " ".join(text[:20_000].lower().split())
    for spdx_id, phrases in _FINGERPRINTS:
        if all(p in head for p in phrases):
            return spdx_id
    return None


def _decode(path: str, raw: bytes) -> tuple[str | None, str | None]:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            return None, f"truncated or corrupt gzip file: {e}"
    if b"\x00" in raw[:8192]:
        return None, "binary file (NUL bytes)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8: {e}"
    if _MAN_PAGE.search(path) and text.lstrip().startswith((".", "'\\\"")):
        if text.lstrip().startswith(".so "):
            return None, "man page redirect (.so)"
        text = roff_to_text(text)
    if not text.strip():
        return None, "empty file"
    return text, None


class TextTree:
    """The files of one tree; licence files are read up front so each file finds its nearest one."""

    def __init__(self, fs: Any, root: str, paths: list[str]) -> None:
        self.root = root.rstrip("/")
        self.licenses: dict[str, tuple[str, str]] = {}  # directory -> (SPDX id, licence file)
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if LICENSE_FILES.match(name):
                try:
                    with fs.open(path, "rb") as f:
                        found = identify_license(f.read(64 << 10).decode("utf-8", "replace"))
                except OSError:
                    found = None
                directory = path.rsplit("/", 1)[0]
                if found and directory not in self.licenses:
                    self.licenses[directory] = (found, self.relative(path))

    def relative(self, path: str) -> str:
        return (
            path[len(self.root) :].lstrip("/")
            if path.startswith(self.root + "/")
            else path.rsplit("/", 1)[-1]
        )

    def nearest_license(self, path: str) -> tuple[str, str] | None:
        directory = path.rsplit("/", 1)[0]
        while True:
            if directory in self.licenses:
                return self.licenses[directory]
            if directory == self.root or "/" not in directory or not directory.startswith(self.root):
                return None
            directory = directory.rsplit("/", 1)[0]

    def read(self, src: SourceFile, options: ReadOptions) -> Iterator[Item]:
        if src.size > MAX_FILE_BYTES:
            yield bad(0, f"file too large for one document: {src.size} bytes > {MAX_FILE_BYTES}")
            return
        stream = src.open()
        raw = stream.read()
        text, reason = _decode(src.path, raw)
        if text is None:
            yield bad(0, reason or "unreadable", raw)
            return
        rel = self.relative(src.path)
        metadata: dict[str, Any] = {"path": rel, "license": None, "license_from": None}
        spdx = _SPDX.search(text[:4096])
        if spdx:
            metadata.update(license=spdx.group(1).strip(), license_from="SPDX header")
        elif LICENSE_FILES.match(rel.rsplit("/", 1)[-1]):
            metadata.update(license=identify_license(text), license_from="itself")
        elif (found := self.nearest_license(src.path)) is not None:
            metadata.update(license=found[0], license_from=found[1])
        yield Item(
            0,
            {
                "id": content_id(rel, text),
                "text": text,
                "added": options.date,
                "created": options.date,
                "metadata": {**metadata, **options.extra},
            },
            None,
            b"",
        )
