"""``glasslm reproduce DIR``: re-run the verb recorded for an artifact (``glasslm/reproduce.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glasslm.clitools import add_json_flag, emit, format_table, local_path


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-run the glasslm verb recorded for an artifact; compare outputs",
        description="re-run the glasslm verb recorded in DIR/manifest.json with its recorded "
        "config and inputs; exit 0 if every output file hashes identically, 1 otherwise",
    )
    p.set_defaults(func=_reproduce)
    p.add_argument("path", type=local_path, help="artifact directory")
    p.add_argument("--keep", type=local_path, default=None, help="keep the re-run's output in this directory")
    add_json_flag(p)


def _reproduce(args: argparse.Namespace) -> int:
    from glasslm.cli import build_parser, main
    from glasslm.clitools import out_location, out_path
    from glasslm.data.documents import location
    from glasslm.reproduce import Commands, reproduce

    # Commands re-pointed when a run was moved: arguments read as paths (local or object-store).
    commands = Commands(build_parser, main, (Path, out_path, out_location, location))
    report = reproduce(args.path, commands, keep=args.keep)
    data = report.to_json()

    def render(d: dict[str, Any]) -> str:
        lines = [f"artifact: {d['artifact']} ({d['kind']})", f"recorded: {' '.join(d['command'])}"]
        if d["rerun"]:
            lines.append(f"re-ran:   {' '.join(d['rerun'])}")
        if d["recorded_code"] != d["code"]:
            lines.append(f"code:     made by {d['recorded_code']}, re-run by {d['code']}")
        lines += [f"problem:  {p}" for p in d["problems"]]
        if d["files"]:
            lines.append(format_table([{"file": f["path"], "status": f["status"]} for f in d["files"]]))
        if d["problems"] and d["output"]:
            lines.append("re-run output (tail):\n" + d["output"])
        lines.append(
            "IDENTICAL"
            if d["identical"]
            else f"NOT IDENTICAL: {', '.join(d['differing']) or 'see problems above'}"
        )
        return "\n".join(lines)

    emit(args, data, render)
    return 0 if report.identical else 1
