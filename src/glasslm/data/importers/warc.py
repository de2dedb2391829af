"""WARC / WARC.gz (Common Crawl, warcio-written): HTML responses → main text (html.py).

A record is a document candidate when it is a ``response`` (or ``resource``) record; ``warcinfo``,
``request``, ``metadata`` and ``revisit`` records carry no page and are counted per file
(``other_records``). Candidates that are not 2xx, not HTML, undecodable, truncated, or whose HTML
yields no text are quarantined with their reason. Metadata keeps the URL, the WARC date, record id
and content type; the WARC-Record-ID is the document id (as FineWeb does) and the WARC-Date its
``created``.

Reading is warcio's: it decodes chunked transfer and Content-Encoding itself. FastWARC would parse
faster, but parsing is a few percent of the time next to extraction, and FastWARC 2 needs seekable
streams (it panics on a plain stream). Gzip is inflated here, with the stdlib, one block at a time
(``read1``), so a truncated file still yields every complete record before the damage and the damage
is reported — warcio on its own stops silently at a truncated gzip member.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from glasslm.data.importers.records import Item, ReadOptions, bad, content_id
from glasslm.data.importers.sources import SourceFile

SUFFIXES = (".warc", ".warc.gz", ".arc.gz")
PAGE_TYPES = ("response", "resource")
HTML_TYPES = ("text/html", "application/xhtml+xml")
_RAW_HEAD = 4096  # bytes of a non-HTML payload kept in quarantine (enough to see what it was)


class _Guarded(io.RawIOBase):
    """Decompressed bytes until the stream breaks; the break is remembered instead of raised."""

    def __init__(self, stream: Any, compressed: bool) -> None:
        self.inner: Any = gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream
        self.compressed = compressed
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.error is not None:
            return 0
        try:
            data = self.inner.read1(len(buffer)) if self.compressed else self.inner.read(len(buffer))
        except (EOFError, OSError, zlib.error) as e:
            self.error = e
            return 0
        buffer[: len(data)] = data
        return len(data)


def _content_type(record: Any) -> str:
    if record.http_headers is not None:
        return str(record.http_headers.get_header("Content-Type") or "")
    return str(record.rec_headers.get_header("Content-Type") or "")


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ")
    return None


def _looks_like_html(content_type: str, body: bytes) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    if mime:
        return mime in HTML_TYPES
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def page_item(index: int, record: Any, body: bytes, options: ReadOptions) -> Item:
    """One response/resource record (payload already read) → a document or a quarantine entry."""
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI")
    status = record.http_headers.get_statuscode() if record.http_headers is not None else None
    content_type = _content_type(record)
    if status is not None and not str(status).startswith("2"):
        return bad(index, f"HTTP status: {status}", body[:_RAW_HEAD])
    if not _looks_like_html(content_type, body):
        return bad(
            index, f"not HTML: {content_type.split(';')[0].strip() or 'no content type'}", body[:_RAW_HEAD]
        )
    from glasslm.data.importers.html import extract_main_text  # resiliparse: loaded by WARC imports only

    try:
        text = extract_main_text(body, _charset(content_type))
    except Exception as e:  # noqa: BLE001 - a page the extractor cannot handle is one bad record
        return bad(index, f"HTML extraction failed: {type(e).__name__}: {e}", body)
    if not text.strip():
        return bad(index, "HTML yields no text", body)
    record_id = headers.get_header("WARC-Record-ID")
    date = headers.get_header("WARC-Date")
    return Item(
        index,
        {
            "id": record_id or content_id(url or "", text),
            "text": text,
            "added": options.date,
            "created": date or options.date,
            "metadata": {
                "url": url,
                "warc_date": date,
                "warc_record_id": record_id,
                "content_type": content_type,
                "license": page_license(body),
                **options.extra,
            },
        },
        None,
        b"",
    )


_LICENSE_META = re.compile(
    rb"""<meta\s+name=["']license["']\s+content=["']([^"'<>]{1,200})["']""", re.IGNORECASE
)
_LICENSE_LINK = re.compile(
    rb"""<link\s+[^>]*rel=["']license["'][^>]*href=["']([^"'<>]{1,300})["']""", re.IGNORECASE
)
_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)/(\d\.\d)", re.IGNORECASE)


def page_license(body: bytes) -> str | None:
    """The licence a page declares in its head: ``<meta name="license" content="SPDX">`` or the HTML
    ``rel="license"`` link (Creative Commons URLs become their SPDX ids, e.g. CC-BY-SA-4.0; another
    URL is kept as is). None when the page says nothing."""
    head = body[:65536]
    meta = _LICENSE_META.search(head)
    if meta:
        return meta.group(1).decode("utf-8", "replace").strip()
    link = _LICENSE_LINK.search(head)
    if not link:
        return None
    url = link.group(1).decode("utf-8", "replace").strip()
    cc = _CC_URL.search(url)
    if cc:
        kind, name, version = cc.groups()
        return "CC0-1.0" if kind.lower() == "publicdomain" else f"CC-{name.upper()}-{version}"
    return url


def read_warc(src: SourceFile, options: ReadOptions) -> Iterator[Item]:
    from warcio.archiveiterator import ArchiveIterator

    stream = _Guarded(src.open(), compressed=src.name.endswith(".gz"))
    other: Counter[str] = Counter()
    index = -1
    blamed = False
    try:
        for index, record in enumerate(ArchiveIterator(io.BufferedReader(stream), arc2warc=True)):  # noqa: B007
            if record.rec_type not in PAGE_TYPES:
                other[record.rec_type] += 1
                continue
            try:
                body = record.content_stream().read()
            except Exception as e:  # noqa: BLE001 - chunked/gzip/brotli payload damage: one bad record
                yield bad(index, f"undecodable payload: {type(e).__name__}: {e}")
                continue
            if (
                record.raw_stream.limit
            ):  # the file ended inside this record (read-ahead sets stream.error early)
                blamed = True
                yield bad(
                    index, f"truncated record (stream ended inside it: {stream.error or 'short read'})", body
                )
                continue
            yield page_item(index, record, body, options)
    except Exception as e:  # noqa: BLE001 - warcio's parse errors are several types: one entry, reading stops
        blamed = True
        yield bad(index + 1, f"unreadable WARC: after record {index}, {type(e).__name__}: {e}")
    if stream.error is not None and not blamed:
        yield bad(index + 1, f"truncated or corrupt compressed stream: after record {index}, {stream.error}")
    src.counts["other_records"] = sum(other.values())
