"""The default corpus's ``web`` domain: a small crawl of documentation pages, made offline.

The pages are HTML rendered from the distributions glasslm depends on (its pinned requirements and
theirs, extras left out, glasslm itself excluded: text nobody on this project wrote): one project page
per distribution from its long description (Markdown through markdown-it-py, reST and plain text as
paragraphs), and one API page per Python module from its docstrings. Each page wears a site's
navigation bar, sidebar and footer, and every distribution's licence file is served as text/plain,
so the run exercises what a real crawl needs: main-content extraction, and quarantine of non-HTML
responses. The pages are written to a WARC with warcio, fixed dates and name-derived record ids
(byte-identical for the same versions), and imported through the same WARC → text path a user's
crawl takes (importers/warc.py). Project pages come first, then API pages in the order of the hash
of their URL, so a byte cap samples every distribution rather than the alphabetically first.
"""

from __future__ import annotations

import ast
import hashlib
import html
import io
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

SITE = "https://docs.glasslm.invalid"  # .invalid (RFC 2606): never a real address
MAX_MODULE_BYTES = 256_000  # larger modules (generated tables, vendored code) cost parse time, give few pages
_SKIP_PARTS = {"tests", "test", "testing", "_vendor", "vendored", "__pycache__", "benchmarks"}


@dataclass(frozen=True)
class Dist:
    """What the pages need of a distribution, read once (``Distribution.metadata`` re-parses per call)."""

    name: str
    version: str
    description: str
    content_type: str
    license: str
    files: tuple[Any, ...]


def _dist(d: Distribution) -> Dist:
    meta: Any = d.metadata  # an email.message.Message: get_payload() is the long description
    description = meta.get_payload() or meta.get("Description") or ""
    if not isinstance(description, str) or not description.strip():
        description = str(meta.get("Summary") or "")
    return Dist(
        str(meta["Name"]),
        d.version,
        description,
        str(meta.get("Description-Content-Type") or "").lower(),
        distribution_license(d),
        tuple(d.files or ()),
    )


# Trove classifiers → SPDX ids.
_CLASSIFIERS = {
    "MIT License": "MIT",
    "Apache Software License": "Apache-2.0",
    "ISC License (ISCL)": "ISC",
    "Python Software Foundation License": "PSF-2.0",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0",
    "Zope Public License": "ZPL-2.1",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0",
    "BSD License": "BSD",  # the family (2- or 3-clause): every member permits redistribution with notice
}
_BARE_IDS = {"MIT", "ISC", "BSD", "0BSD", "Unlicense", "Zlib", "WTFPL", "PostgreSQL"}
_SPDX_ID = re.compile(r"^[A-Za-z0-9.+-]+(?: (?:AND|OR|WITH) [A-Za-z0-9.+()-]+)*$")


def distribution_license(d: Distribution) -> str:
    """The distribution's licence as an SPDX expression ("" when nothing says): its License-Expression
    (PEP 639); else a License field that is an SPDX id ("MIT", "MIT License"); else its trove classifiers;
    else its licence file's text (or a License field holding a licence text) recognised by the import's
    fingerprints (importers/text.py). Pages carry it, so the release's licence check can read it."""
    from glasslm.data.importers.text import LICENSE_FILES, identify_license

    meta: Any = d.metadata
    if meta.get("License-Expression"):
        return str(meta["License-Expression"]).strip()
    found = sorted(
        {
            _CLASSIFIERS[c.split(" :: ")[-1]]
            for c in meta.get_all("Classifier") or []
            if c.startswith("License ::") and c.split(" :: ")[-1] in _CLASSIFIERS
        }
    )
    if found:
        return " OR ".join(found)  # several licence classifiers: a choice of licences (dual licensing)
    field_value = str(meta.get("License") or "").strip()
    short = field_value.removesuffix(" License").removesuffix(" license")
    # an SPDX-looking License field ("MIT", "BSD-3-Clause"), not a word such as "Dual" or "Other"
    if (
        short
        and _SPDX_ID.match(short)
        and len(short) < 60
        and (short in _BARE_IDS or any(c.isdigit() for c in short))
    ):
        return short
    licence_files = [Path(f.locate()) for f in d.files or () if LICENSE_FILES.match(f.name)]
    texts = [field_value] + [p.read_text(errors="replace") for p in licence_files if p.is_file()]
    return next((spdx for text in texts if text and (spdx := identify_license(text))), "")


def pinned_distributions(root: str = "glasslm") -> list[Dist]:
    """The installed distributions ``root`` requires, transitively, without extras (sorted, root left out)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    seen.pop(canonicalize_name(root), None)
    return [_dist(seen[k]) for k in sorted(seen)]


@dataclass
class Page:
    url: str
    dist: Dist
    kind: str  # project | api | license
    path: Path | None = None  # module or licence file

    @property
    def order_key(self) -> str:
        return hashlib.sha256(self.url.encode()).hexdigest()


def pages(dists: list[Dist]) -> list[Page]:
    out: list[Page] = []
    for dist in dists:
        base = f"{SITE}/{dist.name}/{dist.version}"
        out.append(Page(f"{base}/", dist, "project"))
        for f in dist.files:
            parts = set(f.parts)
            if (
                f.suffix == ".py"
                and not parts & _SKIP_PARTS
                and not f.name.startswith("test_")
                and (f.size is None or int(f.size) <= MAX_MODULE_BYTES)
            ):
                out.append(Page(f"{base}/api/{f.as_posix()}.html", dist, "api", Path(str(f.locate()))))
            elif re.match(r"^(LICEN[CS]E|COPYING)(\.txt|\.md|\.rst)?$", f.name, re.IGNORECASE):
                out.append(Page(f"{base}/{f.as_posix()}", dist, "license", Path(str(f.locate()))))
    # Project pages (READMEs: the most web-like prose) and licences first, then the API pages.
    return sorted(out, key=lambda p: (p.kind == "api", p.order_key, p.url))


# Rendering -------------------------------------------------------------------------------------


def _paragraphs(text: str) -> str:
    """Plain text / reST / docstrings as HTML: code-like blocks in <pre>, the rest as paragraphs."""
    blocks = re.split(r"\n\s*\n", text.strip())
    out = []
    for block in blocks:
        lines = block.splitlines()
        if lines and all(line.startswith(("    ", "\t", ">>>", "...")) for line in lines if line.strip()):
            out.append(f"<pre><code>{html.escape(block)}</code></pre>")
        elif lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
            out.append(
                "<ul>" + "".join(f"<li>{html.escape(line.lstrip()[2:])}</li>" for line in lines) + "</ul>"
            )
        elif len(lines) == 2 and set(lines[1].strip()) <= set("=-~^*#") and lines[1].strip():
            out.append(f"<h2>{html.escape(lines[0])}</h2>")
        else:
            out.append(f"<p>{html.escape(' '.join(s.strip() for s in lines))}</p>")
    return "\n".join(out)


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)  # type: ignore[no-any-return]


def project_body(dist: Dist) -> tuple[str, int]:
    body = _markdown(dist.description) if "markdown" in dist.content_type else _paragraphs(dist.description)
    return body, len(dist.description.encode("utf-8"))


def api_body(module: str, source: str) -> tuple[str, int]:
    """A module's API page: its docstring, then each class and function with signature and docstring."""
    tree = ast.parse(source)
    parts: list[str] = []
    size = 0
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(_paragraphs(doc))
        size += len(doc.encode("utf-8"))

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal size
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                text = ast.get_docstring(child)
                if text and not child.name.startswith("_"):
                    signature = f"({ast.unparse(child.args)})" if not isinstance(child, ast.ClassDef) else ""
                    parts.append(
                        f'<section id="{html.escape(name)}"><h3><code>{html.escape(name + signature)}'
                        f"</code></h3>\n{_paragraphs(text)}</section>"
                    )
                    size += len(text.encode("utf-8"))
                visit(child, name + ".")

    visit(tree, f"{module}.")
    return "\n".join(parts), size


def page_html(title: str, dist: Dist, body: str, siblings: list[str]) -> str:
    name, version = html.escape(dist.name), html.escape(dist.version)
    nav = "".join(
        f'<li><a href="{html.escape(u)}">{html.escape(u.rsplit("/", 2)[-2 if u.endswith("/") else -1])}'
        "</a></li>"
        for u in siblings
    )
    license_name = html.escape(dist.license or "unknown")
    # <meta name="license">: the import records it as the page's licence (importers/warc.py)
    license_meta = f'<meta name="license" content="{license_name}">' if dist.license else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{license_meta}<title>{html.escape(title)} '
        f'— {name} {version}</title></head>\n<body><header><nav><a href="/">Package docs</a> | <a href="/search">'
        'Search</a> | <a href="/about">About</a> | <a href="/login">Sign in</a></nav></header>\n'
        f'<div class="layout"><aside class="sidebar"><h4>{name} {version}</h4><ul>{nav}</ul>'
        f"<h4>Meta</h4><p>License: {license_name}</p></aside>\n"
        f"<main><article><h1>{html.escape(title)}</h1>\n{body}\n</article></main></div>\n"
        "<footer><p>Rendered offline from the installed distribution; not an official site.</p>"
        '<nav><a href="/privacy">Privacy</a> · <a href="/terms">Terms</a> · <a href="/status">Status'
        "</a></nav></footer></body></html>\n"
    )


def render(page: Page, siblings: list[str]) -> tuple[bytes, str, int] | None:
    """(payload, content type, bytes of source text) of one page, or None when it has no text."""
    if page.kind == "license":
        assert page.path is not None
        raw = page.path.read_bytes()
        return raw, "text/plain; charset=utf-8", 0
    if page.kind == "project":
        body, size = project_body(page.dist)
        title = page.dist.name
    else:
        assert page.path is not None
        module = (
            page.url.rsplit("/api/", 1)[1]
            .removesuffix(".py.html")
            .replace("/", ".")
            .removesuffix(".__init__")
        )
        try:
            body, size = api_body(module, page.path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            return None
        title = module
    if not size:
        return None
    return page_html(title, page.dist, body, siblings).encode("utf-8"), "text/html; charset=utf-8", size


# The WARC --------------------------------------------------------------------------------------


def _record_id(url: str, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, kind + ' ' + url)}>"


def write_warc(path: Path, cap: int, max_doc_bytes: int, date: str, min_room: int = 0) -> dict[str, Any]:
    """Render pages in URL-hash order into ``path`` until ``cap`` bytes of source text (0 = all).

    Returns what went in: page counts per kind, the distributions and their versions."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    dists = pinned_distributions()
    all_pages = pages(dists)
    by_dist: dict[str, list[str]] = {}
    for p in all_pages:
        if p.kind == "api":
            by_dist.setdefault(p.dist.name, []).append(p.url)
    counts = {"project": 0, "api": 0, "license": 0, "empty": 0, "too large": 0}
    text_bytes = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        info = writer.create_warcinfo_record(
            path.name,
            {"software": "glasslm default corpus (corpus_web.py)", "format": "WARC File Format 1.1"},
        )
        info.rec_headers.replace_header("WARC-Date", date)
        info.rec_headers.replace_header("WARC-Record-ID", _record_id(path.name, "warcinfo"))
        writer.write_record(info)
        for page in all_pages:
            if cap and cap - text_bytes < max(min_room, 1):
                break
            siblings = sorted(by_dist.get(page.dist.name, []))[:12]
            rendered = render(page, siblings)
            if rendered is None:
                counts["empty"] += 1
                continue
            payload, content_type, size = rendered
            if max_doc_bytes and size > max_doc_bytes:
                counts["too large"] += 1
                continue
            if cap and size and text_bytes + size > cap:
                continue
            headers = StatusAndHeaders(
                "200 OK",
                [("Content-Type", content_type), ("Content-Length", str(len(payload)))],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                page.url,
                "response",
                payload=io.BytesIO(payload),
                length=len(payload),
                http_headers=headers,
                warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": _record_id(page.url, "response")},
            )
            writer.write_record(record)
            counts[page.kind] += 1
            text_bytes += size
    return {
        "pages": counts,
        "source_text_bytes": text_bytes,
        "distributions": {d.name: d.version for d in dists},
    }


def iter_urls(path: Path) -> Iterator[str]:  # for tests and inspection
    from warcio.archiveiterator import ArchiveIterator

    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response":
                yield str(record.rec_headers.get_header("WARC-Target-URI"))
