"""``glasslm data …``: the data group; its verbs live beside it by kind of work.

``cli_curate``: corpus, import, tag. ``cli_mix``: dedupe, decon, mix, why, stats. ``cli_tokens``: tokenize.
"""

from __future__ import annotations

from typing import Any

from glasslm.clitools import stage_verbs
from glasslm.data import cli_curate, cli_mix, cli_tokens


def register(sub: Any) -> None:
    verbs = stage_verbs(
        sub, "data", "curate data: corpus, import, tag, dedupe, decon, mix, why, stats, tokenize"
    )
    for module in (cli_curate, cli_mix, cli_tokens):
        module.add_verbs(verbs)
