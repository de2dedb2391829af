"""``glasslm release RUN --out DIR [--push REPO_ID]`` and ``glasslm release verify DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glasslm.clitools import add_config_options, add_json_flag, emit, out_path, resolve_config


def register(sub: Any) -> None:
    p = sub.add_parser(
        "release",
        usage="%(prog)s RUN [--out DIR] [--push REPO_ID] [options]\n       %(prog)s verify DIR [--no-load] [--json]",
        help="package a run as a Hugging Face-style git repository (card, datasheet, revisions, logs, lineage)",
        description="glasslm release RUN --out DIR: the final model on main, every kept checkpoint as a revision "
        "branch, README.md (model card), DATASHEET.md, logs and manifests; refuses when a trained-on source's "
        "licence is unknown or does not allow the model licence (--license=ID), unless --allow-license-issues. "
        "glasslm release verify DIR: check a release on its own. See docs/release.md.",
    )
    p.add_argument(
        "target", nargs="+", metavar="RUN | verify DIR", help="a run directory, or 'verify' and a release"
    )
    # Not `--out`: a release folder is a git repository with its manifest in glasslm/, so the generic --out
    # rule (a manifest at the top) does not apply; build.check_release_out applies the same rule to it.
    p.add_argument(
        "--out", dest="release_out", type=out_path, default=None, help="release folder (default RUN/release)"
    )
    p.add_argument("--push", metavar="REPO_ID", default=None, help="then upload to the Hugging Face Hub")
    p.add_argument("--private", action="store_true", help="with --push: create the Hub repository private")
    p.add_argument(
        "--allow-license-issues",
        action="store_true",
        help="release although a source's licence is unknown or incompatible (recorded)",
    )
    p.add_argument(
        "--no-load", action="store_true", help="verify: skip loading each revision with transformers"
    )
    add_json_flag(p)
    add_config_options(p, run_section="release")
    p.set_defaults(func=_release)


def _release(args: argparse.Namespace) -> int:
    from glasslm.artifacts import ArtifactError

    if args.target[0] == "verify":
        if len(args.target) != 2:
            raise ArtifactError("usage: glasslm release verify DIR")
        return _verify(args, Path(args.target[1]))
    if len(args.target) != 1:
        raise ArtifactError(f"expected one run directory, got {' '.join(args.target)}")
    from glasslm.release.build import ReleaseConfig, make_release

    config = resolve_config(ReleaseConfig, args)
    if args.allow_license_issues:
        config.allow_license_issues = True
    run = Path(args.target[0])
    out = args.release_out or run / "release"
    result = make_release(run, out, config)
    print(
        f"wrote {out}: main + {len(result['revisions'])} revisions ({', '.join(result['revisions'])}); "
        f"card {out / 'README.md'}, datasheet {out / 'DATASHEET.md'}"
    )
    if not result["license_check"]["ok"]:
        print(
            "licence check OVERRIDDEN (--allow-license-issues): "
            + "; ".join(
                f"{p['source']}: {p['docs']} documents, {p['license']}"
                for p in result["license_check"]["problems"]
            )
        )
    if args.push:
        from glasslm.release.push import push_release

        pushed = push_release(out, args.push, private=args.private)
        print(f"pushed {', '.join(pushed)} to https://huggingface.co/{args.push}")
    return 0


def _verify(args: argparse.Namespace, release: Path) -> int:
    from glasslm.release.verify import verify_release

    result = verify_release(release, load=not args.no_load)
    emit(
        args,
        result,
        lambda r: "\n".join(
            [
                f"{r['path']}: {'OK' if r['ok'] else 'FAILED'} ({len(r['revisions'])} revisions"
                f"{', all loaded with transformers' if r['loaded'] else ''})",
                *[f"  {p}" for p in r["problems"]],
            ]
        ),
    )
    return 0 if result["ok"] else 1
