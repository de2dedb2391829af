"""The licence check of a release: may a model trained on these documents be published under this licence?

A document's licence is its ``metadata.license`` (an SPDX id, as the default corpus and ``data import``
record it). The rule is deliberately conservative, because whether a model's weights are a derivative of
their training text is unsettled:

- permissive licences (MIT, BSD, Apache-2.0, PSF-2.0, CC0, CC-BY, …) allow any model licence;
- share-alike licences (GPL, LGPL, AGPL, CC-BY-SA, …) allow only the same licence for the model;
- a document without a licence, or with one not listed here, is *unknown*: nobody said it may be
  redistributed, so the release refuses unless ``allow_license_issues`` is set — and then says so in
  the card and the manifest.

Only documents the model was trained on count (ledger split ``train``): removed and held-out documents
never reach the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNKNOWN = "(none)"

PERMISSIVE = {
    "mit",
    "mit-0",
    "bsd-2-clause",
    "bsd-3-clause",
    "0bsd",
    "isc",
    "apache-2.0",
    "psf-2.0",
    "python-2.0",
    "unlicense",
    "cc0-1.0",
    "cc-by-4.0",
    "cc-by-3.0",
    "zlib",
    "mpl-2.0",
    "bsl-1.0",
    "odc-by",
    "mit-cmu",
    "cnri-python",
    "zpl-2.1",
    "hpnd",
    "bsd",  # a trove classifier's "BSD License": the family; every member permits redistribution with notice
}
SHARE_ALIKE = {
    "gpl-2.0",
    "gpl-2.0-only",
    "gpl-2.0-or-later",
    "gpl-3.0",
    "gpl-3.0-only",
    "gpl-3.0-or-later",
    "lgpl-2.1",
    "lgpl-3.0",
    "agpl-3.0",
    "cc-by-sa-4.0",
    "cc-by-sa-3.0",
    "odbl",
}


def _family(spdx: str) -> str:
    """GPL-3.0-only and GPL-3.0-or-later are the same licence for this purpose."""
    return spdx.lower().removesuffix("-only").removesuffix("-or-later")


def verdict(document_license: str, model_license: str) -> str | None:
    """None when documents under ``document_license`` — an SPDX id or expression ("MIT", "Apache-2.0 OR
    MIT", "MPL-2.0 AND (Apache-2.0 OR MIT)") — may train a model published under ``model_license``;
    otherwise why not. OR: one allowed choice is enough; AND: every part must be allowed."""
    if document_license == UNKNOWN:
        return "no licence recorded"
    if any(op in document_license for op in (" OR ", " AND ", " WITH ", "(")):
        return _expression_verdict(document_license, model_license)
    return _single_verdict(document_license, model_license)


def _expression_verdict(expression: str, model_license: str) -> str | None:
    tokens = expression.replace("(", " ( ").replace(")", " ) ").split()
    position = 0

    def term() -> str | None:  # an id (WITH an exception: the exception only adds permissions) or ( expr )
        nonlocal position
        if position >= len(tokens):
            return f"malformed licence expression '{expression}'"
        token = tokens[position]
        position += 1
        if token == "(":
            why = either()
            position += 1  # ")"
            return why
        if position < len(tokens) and tokens[position] == "WITH":
            position += 2
        return _single_verdict(token, model_license)

    def both() -> str | None:
        nonlocal position
        whys = [term()]
        while position < len(tokens) and tokens[position] == "AND":
            position += 1
            whys.append(term())
        return next((w for w in whys if w), None)

    def either() -> str | None:
        nonlocal position
        whys = [both()]
        while position < len(tokens) and tokens[position] == "OR":
            position += 1
            whys.append(both())
        return None if any(w is None for w in whys) else whys[0]

    return either()


def _single_verdict(document_license: str, model_license: str) -> str | None:
    lic = document_license.lower()
    if lic in PERMISSIVE:
        return None
    if lic in SHARE_ALIKE:
        if _family(lic) == _family(model_license):
            return None
        return f"share-alike licence: the model would have to be released under {document_license}"
    return f"licence '{document_license}' is not one glasslm knows to be redistributable"


@dataclass
class LicenseCheck:
    model_license: str
    allowed: bool  # allow_license_issues was given
    problems: list[dict[str, Any]] = field(default_factory=list)  # {source, license, docs, bytes, why}

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "model_license": self.model_license,
            "ok": self.ok,
            "overridden": bool(self.problems and self.allowed),
            "problems": self.problems,
        }

    def message(self) -> str:
        lines = [
            f"source '{p['source']}': {p['docs']:,} trained-on documents ({p['bytes']:,} bytes) with licence "
            f"{p['license']}: {p['why']}"
            for p in self.problems
        ]
        return "; ".join(lines)


def check(trained: dict[str, dict[str, dict[str, int]]], model_license: str, allow: bool) -> LicenseCheck:
    """``trained``: source -> licence -> {docs, bytes} of the documents the model was trained on."""
    result = LicenseCheck(model_license=model_license, allowed=allow)
    for source in sorted(trained):
        for lic, counts in sorted(trained[source].items()):
            why = verdict(lic, model_license)
            if why is not None and counts["docs"]:
                result.problems.append({"source": source, "license": lic, **counts, "why": why})
    return result
