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
"""

from __future__ import annotations

import re
from typing import Any

from glasslm.data.taggers.base import Attributes, Tagger, doc_span, register

EMAIL = re.compile("[.\\s@,?!;:)(]*([^\\s@]+@[^\\s@,?!;:)(]+?)[.\\s@,?!;:)(]?[\\s\n\r]")
PHONE = re.compile("\\s+\\(?(\\d{3})\\)?[-\\. ]*(\\d{3})[-. ]?(\\d{4})")
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


def find_phones(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in PHONE.finditer(text):
        if not _context_ok(text, m.start(), m.end()):
            continue
        start = m.start()
        while text[start].isspace():  # the match starts with the whitespace before the number
            start += 1
        spans.append((start, m.end()))
    return spans


def find_ips(text: str) -> list[tuple[int, int]]:
    if "." not in text:
        return []
    return [m.span() for m in IP.finditer(text) if _context_ok(text, m.start(), m.end())]


@register("pii")
class PiiTagger(Tagger):
    """Spans of e-mail addresses, phone numbers and IP addresses, counts, and dolma's doc score."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    def tag(self, text: str) -> Attributes:
        found = {"EMAIL_ADDRESS": find_emails(text), "PHONE_NUMBER": find_phones(text), "IP_ADDRESS": find_ips(text)}
        attrs: Attributes = {name: [[s, e, 1.0] for s, e in spans] for name, spans in found.items() if spans}
        total = sum(len(s) for s in found.values())
        words = len(text.split())
        attrs["doc"] = doc_span(text, total / words if words else 0.0)
        attrs["email_count"] = doc_span(text, len(found["EMAIL_ADDRESS"]))
        attrs["phone_count"] = doc_span(text, len(found["PHONE_NUMBER"]))
        attrs["ip_count"] = doc_span(text, len(found["IP_ADDRESS"]))
        return attrs
