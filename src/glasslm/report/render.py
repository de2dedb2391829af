"""Render report sections as a self-contained ``index.html`` (figures inlined) and ``report.md``."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from glasslm.report.base import Section

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f6f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .4rem; }
figure img { max-width: 520px; border: 1px solid #eee; }
.missing { color: #888; font-style: italic; }
mark { background: #ffe58a; }
code.sample { display: block; white-space: pre-wrap; background: #f8f8f8; padding: .5rem; margin: .3rem 0;
              max-height: 12rem; overflow: auto; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
pre { white-space: pre-wrap; background: #f8f8f8; padding: .6rem; border-radius: 4px; }
nav a { margin-right: .8rem; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def markdown_table(caption: str, rows: list[dict[str, Any]]) -> list[str]:
    """One table as Markdown lines (a bold caption, then the table): the report's and the model card's."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"**{caption}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return [*lines, ""]


def markdown_text(text: str) -> str:
    """Section text (a little HTML) as Markdown: marks in bold, code in backticks, breaks as lines."""
    text = re.sub(
        r"<code class='sample'>(.*?)</code>",
        lambda m: "\n\n    " + m.group(1).replace("\n", "\n    ") + "\n",
        text,
        flags=re.S,
    )
    for tag, md in (("mark", "**"), ("code", "`"), ("b", "**"), ("i", "*")):
        text = text.replace(f"<{tag}>", md).replace(f"</{tag}>", md)
    text = re.sub(r"<br\s*/?>", "\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower())


def render(sections: list[Section], title: str, out: Path) -> list[str]:
    """Write index.html, report.md and figures/*.png into ``out``; returns the figure file names."""
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    html_parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><nav>",
        *[f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections],
        "</nav>",
    ]
    md_parts = [f"# {title}", ""]
    written: list[str] = []
    for section in sections:
        html_parts.append(f"<h2 id='{_anchor(section.title)}'>{html.escape(section.title)}</h2>")
        md_parts += [f"## {section.title}", ""]
        if section.missing and not (section.tables or section.figures or section.text):
            html_parts.append(f"<p class='missing'>Not in this run: {html.escape(section.missing)}</p>")
            md_parts += [f"*Not in this run: {section.missing}*", ""]
            continue
        if section.text:
            # Section text may carry <mark>/<code>/<br>; everything else in it is escaped by its builder.
            html_parts.append(f"<div class='text'>{section.text}</div>")
            md_parts += [markdown_text(section.text), ""]
        for caption, rows in section.tables:
            if not rows:
                continue
            columns = list(dict.fromkeys(k for r in rows for k in r))
            html_parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>")
            html_parts += [f"<th>{html.escape(c)}</th>" for c in columns]
            html_parts.append("</tr>")
            for r in rows:
                html_parts.append("<tr>")
                for c in columns:
                    v = r.get(c)
                    cls = " class='num'" if isinstance(v, int | float) and not isinstance(v, bool) else ""
                    html_parts.append(f"<td{cls}>{html.escape(_cell(v))}</td>")
                html_parts.append("</tr>")
            html_parts.append("</table>")
            md_parts += markdown_table(caption, rows)
        for stem, fig in section.figures:
            data = _png(fig)
            name = f"{stem}.png"
            (figures_dir / name).write_bytes(data)
            written.append(name)
            b64 = base64.b64encode(data).decode("ascii")
            html_parts.append(
                f"<figure><img alt='{html.escape(stem)}' data-figure='{html.escape(stem)}' "
                f"src='data:image/png;base64,{b64}'></figure>"
            )
            md_parts += [f"![{stem}](figures/{name})", ""]
    html_parts.append("</body></html>")
    (out / "index.html").write_text("\n".join(html_parts))
    (out / "report.md").write_text("\n".join(md_parts) + "\n")
    return written
