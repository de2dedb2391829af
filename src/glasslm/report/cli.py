"""``glasslm report RUN [--compare OTHER_RUN …]``: a report a person wants to read."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.clitools import add_out, local_path


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN/report/index.html and report.md with plots of every stage",
        description="Write a self-contained HTML report (and Markdown) for a run directory; "
        "--compare overlays other runs' curves and tables.",
    )
    p.add_argument("run", type=local_path, help="run directory (runs/NAME)")
    p.add_argument(
        "--compare", type=local_path, nargs="*", default=[], help="other run directories to overlay"
    )
    add_out(p, required=False, help="report directory (default RUN/report)")
    p.set_defaults(func=_report, out_kind="report")


def make_report(run: Path, compare: list[Path], out: Path) -> Path:
    # matplotlib and the model code load only when a report is made, not whenever the CLI starts.
    from glasslm.report.build import SECTION_BUILDERS, Run
    from glasslm.report.render import render

    if not run.is_dir():
        raise artifacts.ArtifactError(f"{run}: no such run directory")
    runs = [Run(p, name) for p, name in zip([run, *compare], run_labels([run, *compare]), strict=True)]
    for r in runs[1:]:
        if not r.path.is_dir():
            raise artifacts.ArtifactError(f"{r.path}: no such run directory (given to --compare)")
    sections = [build(runs) for build in SECTION_BUILDERS]
    inputs = []
    for r in runs:
        for child in sorted(r.path.rglob(artifacts.MANIFEST)):
            d = child.parent
            if d == out or out in d.parents or d.name.startswith("."):
                continue
            if d.parent != r.path and d.parent.parent != r.path:  # only the run's stage artifacts
                continue
            if artifacts.read_manifest(d).get("kind") in (
                "report",
                "release",
            ):  # made from the report, not its source
                continue
            inputs.append(d)
    title = f"glasslm run {run.name}" + (
        f" compared with {', '.join(r.name for r in runs[1:])}" if compare else ""
    )
    with artifacts.create_artifact(
        out, "report", config={"run": str(run), "compare": [str(c) for c in compare]}, inputs=inputs
    ) as art:
        figures = render(sections, title, art.path)
        art.metrics.update({"sections": [s.title for s in sections], "figures": figures})
    return out


def _report(args: argparse.Namespace) -> int:
    out = make_report(args.run, list(args.compare), args.out or args.run / "report")
    print(f"wrote {out / 'index.html'} and {out / 'report.md'}")
    return 0


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's directory name, with as many parent folders as it takes to tell the runs apart
    (`runs/tiny` and `other/tiny` → `runs/tiny`, `other/tiny`)."""
    resolved = [p.resolve() for p in paths]
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        labels = [Path(*p.parts[-depth:]).as_posix() for p in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same run twice: the paths as given
