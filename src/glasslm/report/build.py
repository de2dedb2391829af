"""Collect what a run directory holds into sections: tables, figures and text.

Each section reads one kind of artifact and says plainly when the run has none of it, so a report can
be made at any point of a run (and of a run made by an older glasslm). The sections live in
``data_sections``, ``model_sections`` and ``samples``; this module lists them in report order.
"""

from __future__ import annotations

from collections.abc import Callable

from glasslm.report.base import Run, Section, read_jsonl
from glasslm.report.data_sections import funnel_section, quality_section
from glasslm.report.model_sections import (
    adaptation_section,
    energy_section,
    evaluation_section,
    lineage_section,
    training_section,
    unigram_baseline,
)
from glasslm.report.samples import samples_section

__all__ = ["SECTION_BUILDERS", "Run", "Section", "read_jsonl", "unigram_baseline"]

SECTION_BUILDERS: list[Callable[[list[Run]], Section]] = [
    funnel_section,
    quality_section,
    training_section,
    evaluation_section,
    adaptation_section,
    samples_section,
    energy_section,
    lineage_section,
]
