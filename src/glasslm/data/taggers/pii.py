"""PII: e-mail addresses, phone numbers and IP addresses, with Dolma's ``pii_regex_v1`` rules.

The three regular expressions and the post-processing are dolma 1.2.1's (``dolma/taggers/pii.py``):
an e-mail match is dropped when the part before "@" is only "(" or the domain has no "."; a phone
number or IP address is dropped when the 100 characters around it contain "isbn", "doi" or "#"
(case-sensitive, as in dolma). Dolma also drops phone numbers when the document contains a URL,
but its URL pattern is written as a non-raw string whose ``\\b`` is a backspace character, so that
check never fires; we keep its effective behaviour (no URL check) rather than its intent.

Differences, on purpose: a span covers the address or number itself (dolma's span is the whole
regex match, which includes the delimiters and whitespace around it), so the mixer can mask
exactly the PII; and next to dolma's attribute names (``EMAIL_ADDRESS``, ``PHONE_NUMBER``,
``IP_ADDRESS``, ``doc`` = matches per whitespace word) we add document-level counts.

Phone numbers (option ``phone_pattern``): dolma's pattern only knows North American numbers written
3-3-4 after whitespace, so it misses international ones (``+1 (555) 0100-2004``, ``+44 20 7946 0958``)
and flags any 10-digit run (a Unix timestamp such as 1700000000). The default, ``"glasslm"``
(``PHONE``), takes a number with a ``+`` country code and 8-15 digits in groups, or one without a
country code written 3-3/4-4 with an area code in parentheses or a separator after it; dates, times,
versions, amounts and bare digit runs are not phones (tested). ``"dolma"`` keeps dolma's
(``PHONE_DOLMA``), for comparisons with dolma.
"""

from __future__ import annotations

import re
from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, doc_span, register

EMAIL = re.compile("[.\\s@,?!;:)(]*([^\\s@]+@[^\\s@,?!;:)(]+?)[.\\s@,?!;:)(]?[\\s\n\r]")
PHONE_DOLMA = re.compile("\\s+\\(?(\\d{3})\\)?[-\\. ]*(\\d{3})[-. ]?(\\d{4})")
PHONE = re.compile(
    r"""
    (?<![\w+])                          # starts a number: not inside a word or another number
    (?:
        \+[1-9]\d{0,2}                   # a country code (never starts with 0): +1, +44, +353
        (?:[ .-]?\(\d{1,4}\))?            #   an area code in parentheses: +1 (555)
        [ .-]?\d++                        #   groups: 0100-2004, 20 7946 0958, 1 23 45 67 89;
        (?:[ .-]?\d{2,}+){0,4}            #   after the first, 2+ digits (+3.5 is no phone), each
                                          #   possessive (a digit run is one group: no backtracking)
    |
        (?:\(\d{3}\)[ .-]?|\d{3}[ .-])     # no country code: (555) or 555 followed by - . or space
        \d{3,4}[ .-]?\d{4}                #   then 010-2004 or 0100 2004
    )
    (?!\w|[.-]\d)                        # and ends it: not followed by more of a word or number
    """,
    re.VERBOSE,
)
PHONE_DIGITS = (8, 15)  # E.164: at most 15 digits with the country code; fewer than 8 is not a phone
PHONE_PATTERNS = ("glasslm", "dolma")
IP = re.compile("(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)")
WINDOW = 100
_CONTEXT_STOP = ("isbn", "doi", "#")


def _context_ok(text: str, start: int, end: int) -> bool:
    context = text[max(0, start - WINDOW) : end + WINDOW]
    return not any(s in context for s in _CONTEXT_STOP)


def find_emails(text: str) -> list[tuple[int, int]]:
    if "@" not in text:  # every match contains "@": skip the regex scan (most documents)
        return []
    spans = []
    for m in EMAIL.finditer(text):
        mention = m.group(0)
        addressee, domain = mention.split("@")[0], mention.split("@")[1]
        if addressee.strip() == "(" or "." not in domain:
            continue
        spans.append(m.span(1))
    return spans


def find_phones(text: str, pattern: str = "glasslm") -> list[tuple[int, int]]:
    """Spans of phone numbers (``pattern``: see the module docstring)."""
    spans = []
    for m in (PHONE_DOLMA if pattern == "dolma" else PHONE).finditer(text):
        if not _context_ok(text, m.start(), m.end()):
            continue
        start = m.start()
        if pattern == "dolma":
            while text[start].isspace():  # the match starts with the whitespace before the number
                start += 1
        elif not PHONE_DIGITS[0] <= sum(c.isdigit() for c in m.group()) <= PHONE_DIGITS[1]:
            continue
        spans.append((start, m.end()))
    return spans


def find_ips(text: str) -> list[tuple[int, int]]:
    if "." not in text:
        return []
    return [m.span() for m in IP.finditer(text) if _context_ok(text, m.start(), m.end())]


@register("pii")
class PiiTagger(Tagger):
    """Spans of e-mail addresses, phone numbers and IP addresses, counts, and dolma's doc score."""

    version = 2  # 2: international phone numbers, no bare digit runs (phone_pattern="glasslm")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["phone_pattern"] not in PHONE_PATTERNS:
            raise ValueError(
                f"tagger 'pii': option phone_pattern must be one of {list(PHONE_PATTERNS)}, "
                f"got {self.options['phone_pattern']!r}"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"phone_pattern": "glasslm"}

    def tag(self, text: str) -> Attributes:
        found = {
            "EMAIL_ADDRESS": find_emails(text),
            "PHONE_NUMBER": find_phones(text, self.options["phone_pattern"]),
            "IP_ADDRESS": find_ips(text),
        }
        attrs: Attributes = {name: [[s, e, 1.0] for s, e in spans] for name, spans in found.items() if spans}
        total = sum(len(s) for s in found.values())
        words = len(text.split())
        attrs["doc"] = doc_span(text, total / words if words else 0.0)
        attrs["email_count"] = doc_span(text, len(found["EMAIL_ADDRESS"]))
        attrs["phone_count"] = doc_span(text, len(found["PHONE_NUMBER"]))
        attrs["ip_count"] = doc_span(text, len(found["IP_ADDRESS"]))
        return attrs
