"""The pieces every report section is made of: sections, runs, metrics files and figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from glasslm import artifacts


@dataclass
class Section:
    title: str
    # Inserted into the HTML as is, so it may carry <mark>/<code>/<br>: its builder escapes everything else.
    text: str = ""
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (file stem, figure)
    missing: str | None = None  # why the section is empty


@dataclass
class Run:
    path: Path
    name: str

    def find(self, *candidates: str) -> Path | None:
        """The first of ``candidates`` (relative to the run) that is a finished artifact."""
        for rel in candidates:
            p = self.path / rel
            if (p / artifacts.MANIFEST).is_file():
                return p
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run is not worth failing a report for
    return rows


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def new_fig(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    """A figure outside pyplot's registry (no screen, no global state): a report holds dozens of
    figures until it renders them, which pyplot warns about after 20, and garbage collection frees them."""
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    return fig, ax


def with_run(run: Run, rows: list[dict[str, Any]], runs: list[Run]) -> list[dict[str, Any]]:
    """Rows prefixed by a ``run`` column when several runs are compared (one table, a row per run)."""
    if len(runs) == 1:
        return rows
    return [{"run": run.name, **r} for r in rows]


def curve_figures(
    section: Section,
    runs: list[Run],
    rel: str,
    keys: list[tuple[str, str]],
    stem: str,
    baselines: dict[str, list[tuple[str, str, float]]] | None = None,
) -> bool:
    """Add line plots of ``RUN/rel/metrics.jsonl`` keys against step to ``section``, one line per run
    (and a dashed horizontal line, in its run's colour, per (run name, label, value) baseline).
    Returns whether anything was plotted."""
    found = False
    for key, label in keys:
        fig, ax = new_fig()
        colours: dict[str, str] = {}
        for run in runs:
            rows = [r for r in read_jsonl(run.path / rel / "metrics.jsonl") if r.get(key) is not None]
            if rows:
                (line,) = ax.plot(
                    [r.get("step", i) for i, r in enumerate(rows)], [r[key] for r in rows], label=run.name
                )
                colours[run.name] = line.get_color()
        if not colours:
            continue
        found = True
        for run_name, name, value in (baselines or {}).get(key, []):
            ax.axhline(value, linestyle="--", color=colours.get(run_name, "grey"), linewidth=1, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{rel}: {label}")
        if len(runs) > 1 or (baselines or {}).get(key):
            ax.legend(fontsize="small")
        section.figures.append((f"{stem}_{key}", fig))
    return found
