"""Shared pieces of the command line: config options, JSON-or-table output, friendly errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from glasslm import config as cfg
from glasslm.pipeline.stages import RUN_SECTIONS

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], int | None]


def add_config_options(
    parser: argparse.ArgumentParser, run_section: str | None = None, wrap: str | None = None
) -> None:
    """``--config FILE`` plus free dotted overrides (``--model.n_layers=4``) for this verb.

    ``run_section``: the section this verb reads when given a whole run config (configs/tiny.yaml),
    nested under ``wrap`` (see ``config.load``).
    """
    parser.add_argument("--config", type=local_path, default=None, help="YAML config file (or a run config)")
    parser.set_defaults(accepts_overrides=True, run_section=run_section, run_wrap=wrap)
    parser.epilog = (
        (parser.epilog or "") + "\nAny config key can be overridden: --section.key=value"
    ).strip()


def resolve_config(
    cls: type[T], args: argparse.Namespace, base: T | None = None, section: str | None = None
) -> T:
    return cfg.load(
        cls,
        getattr(args, "config", None),
        getattr(args, "overrides", []),
        base=base,
        section=section,
        run_section=getattr(args, "run_section", None),
        wrap=getattr(args, "run_wrap", None),
        run_sections=RUN_SECTIONS,
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else as the human rendering."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(data).rstrip("\n") + "\n")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table; numbers right-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows if r.get(c) is not None) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        )

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    return "\n".join(s.rstrip() for s in out)


def split_overrides(unknown: Sequence[str]) -> tuple[list[str], list[str]]:
    """Sort leftover arguments into ``key=value`` overrides and arguments nobody understood."""
    overrides, bad = [], []
    i = 0
    while i < len(unknown):
        tok = unknown[i]
        if tok.startswith("--") and "=" in tok:
            overrides.append(tok)
        elif tok.startswith("--") and i + 1 < len(unknown) and not unknown[i + 1].startswith("--"):
            overrides.append(f"{tok}={unknown[i + 1]}")
            i += 1
        else:
            bad.append(tok)
        i += 1
    return overrides, bad


def stage_verbs(sub: Any, name: str, help: str) -> Any:
    """The verb sub-parsers of stage ``name``, created on first use so several modules can add verbs."""
    groups: dict[str, Any] = sub.__dict__.setdefault("_glasslm_stages", {})
    if name not in groups:
        stage_parser = sub.add_parser(name, help=help, description=help)
        stage_parser.set_defaults(stage_parser=stage_parser)
        groups[name] = stage_parser.add_subparsers(dest="verb", metavar="<verb>")
    return groups[name]


def add_verb(
    verbs: Any, name: str, handler: Handler, help: str, makes: str | None = None
) -> argparse.ArgumentParser:
    """A verb's parser. ``makes``: the artifact kind it writes to ``--out``, so that the ``--out`` rule
    (kind, inputs) is checked in full before the verb does any work (``cli.check_out_early``)."""
    parser = verbs.add_parser(
        name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(func=handler, out_kind=makes)
    return parser


def out_path(text: str) -> Path:
    """``--out``'s type: ``--out ""`` (an unset shell variable) would otherwise mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--out is empty: name a new directory for the artifact")
    if _is_url(text):
        raise argparse.ArgumentTypeError(
            f"{text}: this verb writes to a local directory; object storage is for the data stages' outputs "
            "(data import|tag|dedupe|decon|mix|tokenize)"
        )
    return Path(text)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """A data verb's ``--no-progress`` (``cli.main`` applies it: ``data.progress.quiet``)."""
    parser.add_argument("--no-progress", action="store_true", help="print no progress lines on stderr")


def local_path(text: str) -> Path:
    """The type of a path argument that names a local file or directory: ``Path`` would fold an
    ``s3://`` URL into ``s3:/…`` and report that as missing (or fail later with a traceback)."""
    if _is_url(text):
        raise argparse.ArgumentTypeError(
            f"{text}: this argument is a local path; object storage is read and written by the data stages "
            "(data import|tag|dedupe|decon|mix|tokenize) and by manifest show|verify. Copy the artifact "
            "here first (e.g. `aws s3 sync URL DIR`)"
        )
    return Path(text)


def out_location(text: str) -> Path:
    """``--out`` of the data stages: a local directory or an fsspec URL (``s3://…``), which they stage
    locally and commit to the store (docs/scaling.md)."""
    if _is_url(text):  # Path() would fold the '//' away
        from glasslm.data.documents import location

        return location(text)  # type: ignore[return-value]  # a UPath: the data stages take both
    return out_path(text)


def _is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def add_out(
    parser: argparse.ArgumentParser,
    required: bool = True,
    help: str = "artifact directory to write",
    default: Path | None = None,
    urls: bool = False,
) -> None:
    """``--out DIR`` and ``--force``: the output rule of artifacts.check_out (docs/glass-box.md);
    ``urls``: the verb also writes to object storage."""
    kind = out_location if urls else out_path
    parser.add_argument("--out", type=kind, required=required, default=default, help=help)
    parser.add_argument(
        "--force",
        action="store_true",
        help="let --out replace an artifact of another kind, or one holding files its manifest does not "
        "list (a directory that is not an artifact is never replaced)",
    )
