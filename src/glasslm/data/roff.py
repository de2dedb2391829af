"""Man pages (roff source with the ``man`` macros) to readable plain text, without groff.

Calling ``groff``/``man`` would make the corpus depend on which formatter and version a machine has
and costs a process per page; the man macros that carry text are few, so we keep the text of
headings, paragraphs and font macros, turn paragraph macros into blank lines, drop every other
request, comments and macro definitions, and translate the common escapes (fonts, sizes, named
characters, hyphens, non-breaking spaces). Tables (tbl) keep their raw cell text. The result is
close to what ``man`` prints, without the layout.
"""

from __future__ import annotations

import re
import unicodedata

# Named glyphs: \(xx and \[xx]
_GLYPHS = {
    "em": "\u2014",
    "en": "\u2013",
    "hy": "-",
    "aq": "'",
    "dq": '"',
    "lq": "\u201c",
    "rq": "\u201d",
    "oq": "\u2018",
    "cq": "\u2019",
    "bu": "\u2022",
    "co": "\u00a9",
    "rg": "\u00ae",
    "tm": "\u2122",
    "mu": "\u00d7",
    "->": "\u2192",
    "<-": "\u2190",
    "de": "\u00b0",
    "ga": "`",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "sl": "/",
    "ba": "|",
    "bv": "|",
    "pl": "+",
    "mi": "-",
    "eq": "=",
    "lh": "\u261c",
    "rh": "\u261e",
    "Fo": "\u00ab",
    "Fc": "\u00bb",
    "fo": "\u2039",
    "fc": "\u203a",
    "ss": "\u00df",
    "Bq": "\u201e",
    "bq": "\u201a",
    "AE": "\u00c6",
    "ae": "\u00e6",
    "/o": "\u00f8",
    "/O": "\u00d8",
}
# Accented letters are written as accent + letter (\(:u is ü, \('e is é): compose them.
_ACCENTS = {
    ":": "\u0308",
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    "~": "\u0303",
    ",": "\u0327",
    "o": "\u030a",
}


def _glyph(name: str) -> str:
    if name in _GLYPHS:
        return _GLYPHS[name]
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


_STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122", "S": "", "aq": "'"}

_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font change
    r"|s[+-]?(?:\d+|\(\d\d|\[\d+\])"  # size change
    r"|\((?P<g2>..)"  # named glyph, 2 chars
    r"|\[(?P<gl>[^\]]*)\]"  # named glyph, long
    r"|\*(?:\((?P<s2>..)|\[(?P<sl>[^\]]*)\]|(?P<s1>.))"  # string interpolation
    r"|[nkg](?:\(..|\[[^\]]*\]|.)"  # number registers, marks
    r"|[hvwlLDoxXbZAC]'[^']*'"  # motions, widths, drawing: drop
    r"|(?P<one>.)"  # single-character escapes
    r")",
    re.DOTALL,
)
_SINGLE = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "t": "\t",
    "'": "'",
    "`": "`",
    ".": ".",
}
_PARAGRAPH = {"PP", "LP", "P", "sp", "HP", "TP", "SH", "SS", "IP", "RS", "RE", "Sh", "Ss", "Pp", "Bl", "El"}
_JOIN_NO_SPACE = {"BR", "BI", "IB", "RB", "RI", "IR"}
_JOIN_SPACE = {"B", "I", "SM", "SB", "SH", "SS", "UR", "MT", "Nm", "Nd", "Ar", "Fl", "Xr", "Dq", "Pa", "It"}


def _escape(m: re.Match[str]) -> str:
    if m.group("g2") is not None:
        return _glyph(m.group("g2"))
    if m.group("gl") is not None:
        name = m.group("gl")
        if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
            return chr(int(name[1:], 16))
        return _glyph(name)
    for group in ("s2", "sl", "s1"):
        if m.group(group) is not None:
            return _STRINGS.get(m.group(group), "")
    if m.group("one") is not None:
        return _SINGLE.get(m.group("one"), "")
    return ""


def inline(text: str) -> str:
    return _ESCAPE.sub(_escape, text) if "\\" in text else text


_ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def _args(rest: str) -> list[str]:
    """Macro arguments: blank-separated, "quoted" with "" for a quote; escapes left for ``inline``."""
    return [
        m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2) for m in _ARG.finditer(rest)
    ]


def roff_to_text(source: str) -> str:
    out: list[str] = []
    skipping_definition = False
    for line in source.split("\n"):
        if skipping_definition:
            skipping_definition = not line.startswith("..")
            continue
        if line.startswith(('.\\"', "'\\\"", ".\\#", '\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            body = line[1:].lstrip()
            macro, _, rest = body.partition(" ")
            macro = macro.strip()
            if macro in ("de", "de1", "am", "ig"):
                skipping_definition = True
                continue
            if macro in _PARAGRAPH:
                out.append("")
            if macro in _JOIN_NO_SPACE:
                out.append(inline("".join(_args(rest))))
            elif macro in _JOIN_SPACE or (macro == "IP" and rest.strip()):
                text = inline(" ".join(_args(rest)))
                if text:
                    out.append(text)
            elif macro == "br":
                out.append("")
            continue
        out.append(inline(line))
    text = "\n".join(out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"
