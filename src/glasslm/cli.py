"""The one entry point: ``glasslm <stage> <verb> INPUT… --out DIR [--config FILE] [--key=value …]``.

Each stage module registers its own verbs; this file only assembles them and turns known errors
into one clear line and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from glasslm import __version__
from glasslm.artifacts import ArtifactError, check_out, check_run_out, forcing, recording_command
from glasslm.clitools import split_overrides
from glasslm.config import ConfigError

# Stage modules, in pipeline order, each with ``register(subparsers)``, and the top-level names
# each registers: a command imports only the modules it needs, so `glasslm data corpus` does not
# pay for importing torch and matplotlib.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("glasslm.data.cli_curate", ("data",)),  # data corpus, data tag
    ("glasslm.data.cli_mix", ("data",)),  # data dedupe|decon|mix|why|stats
    (
        "glasslm.data.cli_tokens",
        ("tokenizer", "data", "trace"),
    ),  # tokenizer train|encode, data tokenize, trace batch|doc
    ("glasslm.model.cli", ("model", "convert")),  # model init|info, convert to-hf|from-hf
    ("glasslm.train.cli", ("train",)),
    ("glasslm.eval.cli", ("eval",)),
    ("glasslm.serve.cli", ("generate", "chat", "serve")),
    ("glasslm.adapt.cli", ("adapt",)),  # adapt data|sft|dpo|rl
    ("glasslm.trace.cli", ("trace", "energy", "reproduce")),  # trace index|count|span
    ("glasslm.report.cli", ("report",)),
    ("glasslm.release.cli", ("release",)),  # release RUN, release verify DIR
    ("glasslm.pipeline.cli", ("pipeline",)),
    ("glasslm.artifacts_cli", ("manifest",)),  # manifest show|verify
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a top-level name), only the stage modules that define it."""
    parser = argparse.ArgumentParser(
        prog="glasslm",
        description="Build language models in the open: data, tokenizer, pretraining, evaluation, "
        "adaptation, serving, and a manifest for every artifact.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"glasslm {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    known = {name for _, names in STAGES for name in names}
    for module, names in STAGES:
        if command in known and command not in names:
            continue
        # A stage that is not built yet is simply not listed (only verbs that work appear);
        # an import error inside an existing stage module still fails loudly.
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(sub)
    return parser


def check_out_early(args: argparse.Namespace) -> None:
    """The ``--out`` rule before any work (create_artifact checks it again, with the artifact's kind)."""
    out = getattr(args, "out", None) or getattr(args, "out_pos", None)
    if not isinstance(out, Path) or args.stage == "pipeline":  # the pipeline checks its run directory
        return
    if hasattr(args, "resume"):
        check_run_out(out)
    else:
        check_out(out, None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "--key=value with spaces" for a positional argument; such an argument can only
    # be a config override ("--rl.train_families=[a, b]"), so it bypasses argparse.
    spaced = [a for a in argv if a.startswith("--") and "=" in a and " " in a.split("=", 1)[1]]
    argv = [a for a in argv if a not in spaced]
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args, unknown = parser.parse_known_args(argv)
    unknown += spaced
    if not hasattr(args, "func"):
        # A stage without a verb: show that stage's help (or the top-level help).
        target = getattr(args, "stage_parser", parser)
        target.print_help()
        return 0 if args.stage is None and not unknown else 2
    overrides, bad = split_overrides(unknown)
    if bad or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(bad or overrides)}")
    args.overrides = overrides
    try:
        with recording_command(["glasslm", *argv]), forcing(getattr(args, "force", False) is True):
            check_out_early(args)
            return int(args.func(args) or 0)
    except (ConfigError, ArtifactError) as e:
        print(f"glasslm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only --out, a full disk, a file removed under us: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"glasslm: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glasslm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
