"""``glasslm trace index|count|span``, ``glasslm energy RUN`` and ``glasslm reproduce DIR``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm.clitools import (
    add_config_options,
    add_json_flag,
    add_out,
    add_verb,
    emit,
    format_table,
    resolve_config,
    stage_verbs,
)
from glasslm.config import ConfigError
from glasslm.trace import energy as energy_mod
from glasslm.trace import index as index_mod
from glasslm.trace import span as span_mod


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "trace", "trace model outputs back to the training data")
    p = add_verb(verbs, "index", _index, "build a suffix-array index over a run's training token stream")
    p.add_argument("source", type=Path, help="tokens artifact, training run, or run directory")
    add_out(p, required=False)
    p.epilog = "Default --out for a run directory: RUN/trace_index."
    p = add_verb(verbs, "count", _count, "how often a text occurs (as tokens) in the training data")
    p.add_argument("index", type=Path, help="trace index, or a run directory holding trace_index/")
    p.add_argument("text", help="the text ('-' reads standard input)")
    add_json_flag(p)
    p = add_verb(verbs, "span", _span, "maximal spans of a text found verbatim in the training data")
    p.add_argument("index", type=Path, help="trace index, or a run directory holding trace_index/")
    p.add_argument("text", help="model output ('-' reads standard input)")
    p.add_argument("--min-len", type=int, default=span_mod.DEFAULT_MIN_LEN, help="shortest span, in tokens")
    p.add_argument("--max-docs", type=int, default=span_mod.MAX_DOCS, help="documents listed per span")
    add_json_flag(p)

    p = sub.add_parser(
        "energy",
        help="energy (kWh) and carbon (kg CO2e) of a pipeline run or a training run",
        description="energy (kWh) and carbon (kg CO2e), with the method stated: of every stage of "
        "a pipeline run (RUN with pipeline.json; data stages included), or of one training run",
    )
    p.set_defaults(func=_energy)
    p.add_argument("run", type=Path, help="pipeline run directory (every stage), or a training run")
    add_config_options(p)
    p.epilog = (
        (p.epilog or "") + "\nKeys: energy.pue, energy.grid_gco2e_per_kwh, energy.cpu_watts_per_core, "
        "energy.tdp_watts.<GPU name>"
    )
    add_json_flag(p)

    p = sub.add_parser(
        "reproduce",
        help="re-run the glasslm verb recorded for an artifact; compare outputs",
        description="re-run the glasslm verb recorded in DIR/manifest.json with its recorded "
        "config and inputs; exit 0 if every output file hashes identically, 1 otherwise",
    )
    p.set_defaults(func=_reproduce)
    p.add_argument("path", type=Path, help="artifact directory")
    p.add_argument("--keep", type=Path, default=None, help="keep the re-run's output in this directory")
    add_json_flag(p)


@dataclass
class _EnergySection:
    # The keys live under "energy." so that a pipeline config can hold them beside other sections.
    energy: energy_mod.EnergyConfig = field(default_factory=energy_mod.EnergyConfig)


def _text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _index(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:
        if (args.source / "manifest.json").is_file():
            raise ConfigError(f"{args.source} is an artifact: give --out DIR for the index")
        out = args.source / "trace_index"
    path = index_mod.build_index(args.source, out)
    index = index_mod.load_index(path)
    print(
        f"wrote {path}: {index.n_tokens:,} tokens, {len(index.doc_offset):,} documents "
        f"(suffix array built in {index.manifest['metrics']['sa_build_seconds']} s)"
    )
    index.close()
    return 0


def _open(path: Path) -> index_mod.SuffixIndex:
    return index_mod.load_index(index_mod.find_index(path))


def _count(args: argparse.Namespace) -> int:
    index = _open(args.index)
    try:
        data = span_mod.count_text(index, _text(args.text))
    except span_mod.QueryError as e:
        raise ConfigError(str(e)) from None
    finally:
        index.close()

    def render(d: dict[str, Any]) -> str:
        return f"{d['count']:,} occurrences of {d['n_tokens']} tokens in {d['index']}"

    emit(args, data, render)
    return 0


def _span(args: argparse.Namespace) -> int:
    from glasslm.trace.steps import steps_lookup

    index = _open(args.index)
    try:
        lookup, note = steps_lookup(index)
        data = span_mod.trace_spans(index, _text(args.text), args.min_len, args.max_docs, steps=lookup)
        data["steps_note"] = note
    except span_mod.QueryError as e:
        raise ConfigError(str(e)) from None
    finally:
        index.close()
    emit(args, data, _render_spans)
    return 0


def _render_spans(d: dict[str, Any]) -> str:
    lines = [
        f"{len(d['spans'])} span(s) of >= {d['min_len']} tokens; {d['covered_tokens']}/{d['n_tokens']} "
        f"output tokens occur verbatim in the training data"
    ]
    for s in d["spans"]:
        lines.append(
            f"\n[{s['start']}:{s['end']}] {s['length']} tokens, {s['count']:,} occurrence(s): {s['text']!r}"
        )
        rows = [
            {
                "doc_id": h["doc_id"],
                "source": h["source"],
                "steps": "-"
                if h["steps"] is None
                else (",".join(map(str, h["steps"][:8])) or "not trained on"),
                "snippet": h["snippet"].replace("\n", " ")[:160],
            }
            for h in s["docs"]
        ]
        lines.append(format_table(rows))
    if d.get("steps_note"):
        lines.append(f"\nsteps: {d['steps_note']}")
    return "\n".join(lines)


def _energy(args: argparse.Namespace) -> int:
    config = resolve_config(_EnergySection, args).energy
    if (args.run / "pipeline.json").is_file():  # a pipeline run: every stage, data stages included
        data = energy_mod.pipeline_energy(args.run, config)

        def render_all(d: dict[str, Any]) -> str:
            rows = [
                {k: s.get(k) for k in ("stage", "wall_s", "method", "kwh", "kg_co2e", "device")}
                for s in d["stages"]
            ]
            rows.append({"stage": "total", "wall_s": d["wall_s"], "kwh": d["kwh"], "kg_co2e": d["kg_co2e"]})
            text = f"{d['run']}: every stage of the pipeline\n" + format_table(rows)
            text += f"\nPUE {d['pue']}, grid {d['grid_gco2e_per_kwh']} gCO2e/kWh"
            return text + "".join(f"\nassumes: {a}" for a in d["assumptions"])

        emit(args, data, render_all)
        return 0
    report = energy_mod.run_energy(args.run, config)

    def render(d: dict[str, Any]) -> str:
        rows = [
            {"quantity": k, "value": d[k]}
            for k in (
                "device",
                "world_size",
                "wall_s",
                "device_hours",
                "method",
                "device_kwh",
                "pue",
                "kwh",
                "grid_gco2e_per_kwh",
                "kg_co2e",
            )
        ]
        rows += [{"quantity": f"measured kWh: {k}", "value": v} for k, v in d["sources_kwh"].items()]
        text = f"{d['run']}\n" + format_table(rows) + f"\nmethod: {d['method_detail']}"
        return text + "".join(f"\nassumes: {a}" for a in d["assumptions"])

    emit(args, report.to_json(), render)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from glasslm.cli import build_parser, main
    from glasslm.clitools import out_path
    from glasslm.reproduce import Commands, reproduce

    report = reproduce(args.path, Commands(build_parser, main, (Path, out_path)), keep=args.keep)
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
