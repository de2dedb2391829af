"""The one entry point: ``glasslm <stage> <verb> INPUT… --out DIR [--config FILE] [--key=value …]``.

Each top-level group (``data``, ``train``, ``trace`` …) is registered by exactly one command-line
module: the ``cli.py`` of the package that implements it, or ``<module>_cli.py`` beside a top-level
module (``tokenizer_cli``, ``reproduce_cli``, ``artifacts_cli``). One module registers several groups
only when they are all its folder's (``serve/cli.py``: generate, chat, serve; ``model/cli.py``: model,
convert; ``trace/cli.py``: trace, energy). A group's verbs may live in helper modules beside it
(``data/cli_*.py``), added by the group's module. ``GROUPS`` below is the one list; this file only
assembles it and turns known errors into one clear line and a non-zero exit status. Library modules
never import command-line modules: what they need from the command line (``run_pipeline``'s verb
runner, ``reproduce``'s parser) is passed to them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from glasslm import __version__
from glasslm.artifacts import (
    ArtifactError,
    check_not_an_input,
    check_out,
    check_run_out,
    forcing,
    is_url,
    recording_command,
    writing,
)
from glasslm.clitools import split_overrides
from glasslm.config import ConfigError

# The top-level groups, in the order `glasslm --help` lists them, and the one function that registers
# each ("module" means "module:register"). A command imports only the module it needs, so
# `glasslm data corpus` does not pay for importing torch and matplotlib.
GROUPS: list[tuple[tuple[str, ...], str]] = [
    (("data",), "glasslm.data.cli"),  # data corpus|import|tag|dedupe|decon|mix|why|stats|tokenize
    (("tokenizer",), "glasslm.tokenizer_cli"),  # tokenizer train|encode|import
    (("trace",), "glasslm.trace.cli"),  # trace batch|doc|index|count|span
    (("model", "convert"), "glasslm.model.cli"),  # model init|info, convert to-hf|from-hf
    (("train",), "glasslm.train.cli"),
    (("eval",), "glasslm.eval.cli"),
    (("generate", "chat", "serve"), "glasslm.serve.cli"),
    (("adapt",), "glasslm.adapt.cli"),  # adapt data|sft|dpo|rl
    (("energy",), "glasslm.trace.cli:register_energy"),
    (("reproduce",), "glasslm.reproduce_cli"),
    (("report",), "glasslm.report.cli"),
    (("release",), "glasslm.release.cli"),  # release RUN, release verify DIR
    (("pipeline",), "glasslm.pipeline.cli"),
    (("manifest",), "glasslm.artifacts_cli"),  # manifest show|verify
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a top-level name), only the module that registers it."""
    parser = argparse.ArgumentParser(
        prog="glasslm",
        description="Build language models in the open: data, tokenizer, pretraining, evaluation, "
        "adaptation, serving, and a manifest for every artifact.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"glasslm {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    known = {name for names, _ in GROUPS for name in names}
    for names, target in GROUPS:
        if command in known and command not in names:
            continue
        module, _, function = target.partition(":")
        # A group that is not built yet is simply not listed (only verbs that work appear);
        # an import error inside an existing module still fails loudly.
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), function or "register")(sub)
    return parser


def check_out_early(args: argparse.Namespace) -> None:
    """The ``--out`` rule before any work (create_artifact checks it again, with the artifact's kind)."""
    out = getattr(args, "out", None) or getattr(args, "out_pos", None)
    if args.stage == "pipeline":  # the pipeline checks its run directory
        return
    if is_url(out):  # a data stage's object-store --out: the inputs and the bucket root now, the rest later
        from glasslm.data import storage

        check_not_an_input(str(out), _input_paths(args))
        try:
            storage.check_out(
                str(out), getattr(args, "out_kind", None), getattr(args, "force", False) is True
            )
        except storage.StorageError as e:
            raise ArtifactError(str(e)) from None
        return
    if not isinstance(out, Path):
        return
    if hasattr(args, "resume"):  # a run continues in place: its own config.yaml may be the config given
        check_run_out(out, _input_paths(args, skip=("config", "config_pos")))
    else:
        check_out(out, getattr(args, "out_kind", None), _input_paths(args))


# Dotted overrides that name a training verb's inputs (`train --data.tokens=…`).
_INPUT_KEYS = ("data.tokens", "data.path", "data.heldout", "model.init_from")


def _input_paths(args: argparse.Namespace, skip: Sequence[str] = ()) -> list[Path | str]:
    """The paths a verb was given besides ``--out`` (inputs, configs): ``--out`` must not be or hold one."""
    found: list[Path | str] = []
    for name, value in vars(args).items():
        if name in ("out", "out_pos", *skip):
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path) or is_url(item):  # a UPath (s3://…) is not a Path
                found.append(item if isinstance(item, Path) else str(item))
    for override in getattr(args, "overrides", []) or []:
        key, _, value = override.removeprefix("--").partition("=")
        if key in _INPUT_KEYS and value:
            found.append(value if is_url(value) else Path(value))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)  # what the manifest records: every argument, the spaced overrides included
    # argparse takes "--key=value with spaces" for a positional argument; unless the key is a flag's,
    # such an argument can only be a config override ("--rl.train_families=[a, b]"): it bypasses argparse.
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    flags = _option_strings(parser)  # "--taggers=langid, gopher" is a flag's value: argparse's to parse
    spaced = [
        a
        for a in argv
        if a.startswith("--") and " " in a.partition("=")[2] and a.partition("=")[0] not in flags
    ]
    argv = [a for a in argv if a not in spaced]
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
        with recording_command(["glasslm", *given]), forcing(getattr(args, "force", False) is True):
            check_out_early(args)
            with contextlib.ExitStack() as scope:
                out = getattr(args, "out", None) or getattr(args, "out_pos", None)
                # a local --out: one writer at a time (under torchrun, rank 0 holds it for all ranks)
                if isinstance(out, Path) and os.environ.get("RANK", "0") in ("0", ""):
                    scope.enter_context(writing(out))
                if getattr(args, "no_progress", False):
                    from glasslm.data.progress import quiet

                    scope.enter_context(quiet())
                return int(args.func(args) or 0)
    except (ConfigError, ArtifactError) as e:
        print(f"glasslm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `glasslm … --json | head`: the reader left; end quietly, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 128 + signal.SIGPIPE
    except OSError as e:  # a read-only --out, a full disk, a file removed under us: one line, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"glasslm: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glasslm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _from_object_store(e):
            raise
        # an unreachable endpoint, a missing bucket, bad credentials: the store's words, not a traceback
        print(f"glasslm: error: object store: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its sub-commands, however deep."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


# The packages whose exceptions are the object store's (s3fs, gcsfs, adlfs through fsspec).
_STORE_PACKAGES = frozenset({"botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure"})


def _from_object_store(error: BaseException) -> bool:
    chain = (error, error.__cause__, error.__context__)
    return any(type(e).__module__.split(".")[0] in _STORE_PACKAGES for e in chain if e is not None)


if __name__ == "__main__":
    raise SystemExit(main())
