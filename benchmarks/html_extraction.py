"""HTML → main text: resiliparse against trafilatura on real pages, speed and quality in one run.

Pages: documentation sites that happen to be on the machine (real HTML written by other projects'
generators, with navigation, sidebars, search boxes and footers around the content), each with a
known main-content container that serves as the reference:

- the Rust Book and Cargo book (mdBook, ``<main>``) under ~/.rustup/…/share/doc/rust/html,
- the Node.js API docs (``#apicontent``) under /usr/share/doc/nodejs/api,
- the Valgrind manual (DocBook, ``div.chapter``) under /usr/share/doc/valgrind/html.

Quality is bag-of-words precision / recall / F1 of the extracted text against the text of that
container (the measure of the article-extraction benchmarks: words the extractor kept that belong to
the content, and content words it found). Speed is pages and MB per second on one core, parsing from
bytes as an import does. Usage: ``.venv/bin/python benchmarks/html_extraction.py [--max-pages 80]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

RUST = next(Path("/root/.rustup/toolchains").glob("*/share/doc/rust/html"), Path("/nonexistent"))
SETS: list[tuple[str, Path, str, str]] = [  # name, folder, glob, XPath of the main content
    ("rust-book (mdBook)", RUST / "book", "ch*.html", "//main"),
    ("cargo (mdBook)", RUST / "cargo", "**/*.html", "//main"),
    ("nodejs api", Path("/usr/share/doc/nodejs/api"), "*.html", "//*[@id='apicontent']"),
    ("valgrind (DocBook)", Path("/usr/share/doc/valgrind/html"), "*.html", "//div[@class='chapter']"),
]
_WORD = re.compile(r"\w+")


def reference(html: bytes, xpath: str) -> str | None:
    import lxml.html

    found = lxml.html.fromstring(html).xpath(xpath)
    return "\n".join(e.text_content() for e in found) if found else None


def f1(extracted: str, ref: str) -> tuple[float, float, float]:
    got, want = Counter(_WORD.findall(extracted.lower())), Counter(_WORD.findall(ref.lower()))
    common = sum((got & want).values())
    p = common / max(1, sum(got.values()))
    r = common / max(1, sum(want.values()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def extractors() -> dict[str, Callable[[bytes], str]]:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    def resiliparse_main(body: bytes) -> str:
        return extract_plain_text(
            HTMLTree.parse(bytes_to_str(body, detect_encoding(body))), main_content=True
        )

    def trafilatura_default(body: bytes) -> str:
        return trafilatura.extract(body) or ""

    def trafilatura_datatrove(body: bytes) -> str:  # datatrove's Trafilatura() settings
        return (
            trafilatura.extract(body, favor_precision=True, include_comments=False, deduplicate=False) or ""
        )

    return {
        "resiliparse (main_content)": resiliparse_main,
        "trafilatura (default)": trafilatura_default,
        "trafilatura (favor_precision)": trafilatura_datatrove,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-pages", type=int, default=60, help="pages per set")
    args = ap.parse_args()
    pages: list[tuple[str, bytes, str]] = []
    for name, folder, pattern, xpath in SETS:
        files = sorted(folder.glob(pattern))[: args.max_pages] if folder.is_dir() else []
        for path in files:
            body = path.read_bytes()
            ref = reference(body, xpath)
            if ref and len(_WORD.findall(ref)) >= 50:
                pages.append((name, body, ref))
    if not pages:
        raise SystemExit("no reference pages found on this machine")
    total_mb = sum(len(b) for _, b, _ in pages) / 1e6
    print(
        f"{len(pages)} pages, {total_mb:.1f} MB of HTML, sets: "
        + ", ".join(f"{n} {sum(1 for p in pages if p[0] == n)}" for n, *_ in SETS)
    )
    print(f"{'extractor':<30} {'pages/s':>8} {'MB/s':>7} {'P':>6} {'R':>6} {'F1':>6}  F1 per set")
    for label, fn in extractors().items():
        start = time.perf_counter()
        texts = [fn(body) for _, body, _ in pages]
        seconds = time.perf_counter() - start
        scores = [f1(t, ref) for t, (_, _, ref) in zip(texts, pages, strict=True)]
        per_set = {
            n: statistics.mean(s[2] for s, p in zip(scores, pages, strict=True) if p[0] == n)
            for n, *_ in SETS
            if any(p[0] == n for p in pages)
        }
        print(
            f"{label:<30} {len(pages) / seconds:8.1f} {total_mb / seconds:7.2f} "
            f"{statistics.mean(s[0] for s in scores):6.3f} {statistics.mean(s[1] for s in scores):6.3f} "
            f"{statistics.mean(s[2] for s in scores):6.3f}  "
            + ", ".join(f"{n.split(' ')[0]} {v:.3f}" for n, v in per_set.items())
        )


if __name__ == "__main__":
    main()
