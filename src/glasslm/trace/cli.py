"""``glasslm trace batch|doc|index|count|span`` and ``glasslm energy RUN``: the trace/ folder's verbs."""

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
    local_path,
    resolve_config,
    stage_verbs,
)
from glasslm.config import ConfigError
from glasslm.trace import energy as energy_mod
from glasslm.trace import index as index_mod
from glasslm.trace import span as span_mod


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "trace", "trace training data: data order, index and span search")
    for name, handler, text in (
        ("batch", _trace_batch, "the documents (id, source, token span) in one step's batch"),
        ("doc", _trace_doc, "every step in which a document's tokens were seen"),
    ):
        p = add_verb(verbs, name, handler, text)
        p.add_argument(
            "source",
            type=local_path,
            metavar="RUN_OR_TOKENS",
            help="training run, run directory or tokens artifact",
        )
        if name == "batch":
            p.add_argument(
                "--step",
                type=int,
                required=True,
                help="training step as in metrics.jsonl (from 1; it read the loader's batch N-1)",
            )
        else:
            p.add_argument("doc_id", help="document id as in the tokens index")
            p.add_argument(
                "--max-steps",
                type=int,
                default=None,
                help="search steps 1..N (default: the steps the run took, else one epoch)",
            )
        p.add_argument("--seq-len", type=int, default=None)
        p.add_argument("--global-batch-size", type=int, default=None)
        p.add_argument("--seed", type=int, default=None)
        add_json_flag(p)

    p = add_verb(
        verbs, "index", _index, "build a suffix-array index over a run's training token stream", "trace_index"
    )
    p.add_argument("source", type=local_path, help="tokens artifact, training run, or run directory")
    add_out(p, required=False)
    p.epilog = "Default --out for a run directory: RUN/trace_index."
    p = add_verb(verbs, "count", _count, "how often a text occurs (as tokens) in the training data")
    p.add_argument("index", type=local_path, help="trace index, or a run directory holding trace_index/")
    p.add_argument("text", help="the text ('-' reads standard input)")
    add_json_flag(p)
    p = add_verb(verbs, "span", _span, "maximal spans of a text found verbatim in the training data")
    p.add_argument("index", type=local_path, help="trace index, or a run directory holding trace_index/")
    p.add_argument("text", help="model output ('-' reads standard input)")
    p.add_argument("--min-len", type=int, default=span_mod.DEFAULT_MIN_LEN, help="shortest span, in tokens")
    p.add_argument("--max-docs", type=int, default=span_mod.MAX_DOCS, help="documents listed per span")
    add_json_flag(p)


def register_energy(sub: Any) -> None:
    p = sub.add_parser(
        "energy",
        help="energy (kWh) and carbon (kg CO2e) of a pipeline run or a training run",
        description="energy (kWh) and carbon (kg CO2e), with the method stated: of every stage of "
        "a pipeline run (RUN with pipeline.json; data stages included), or of one training run",
    )
    p.set_defaults(func=_energy)
    p.add_argument("run", type=local_path, help="pipeline run directory (every stage), or a training run")
    add_config_options(p)
    p.epilog = (
        (p.epilog or "") + "\nKeys: energy.pue, energy.grid_gco2e_per_kwh, energy.cpu_watts_per_core, "
        "energy.tdp_watts.<GPU name>"
    )
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

    text = _text(args.text)
    if not text:
        raise ConfigError("empty query: give the text to trace (or '-' to read it from standard input)")
    if args.max_docs < 1:
        raise ConfigError(f"--max-docs must be >= 1, got {args.max_docs}")
    index = _open(args.index)
    try:
        lookup, note = steps_lookup(index)
        data = span_mod.trace_spans(index, text, args.min_len, args.max_docs, steps=lookup)
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


def _trace_source(args: argparse.Namespace) -> Any:
    from glasslm.trace import order

    flags = {"seq_len": args.seq_len, "global_batch_size": args.global_batch_size, "seed": args.seed}
    return order.resolve(args.source, flags)


def _trace_batch(args: argparse.Namespace) -> int:
    from glasslm.trace import order

    source = _trace_source(args)
    if args.step < 1:
        raise ConfigError(f"--step counts from 1 (as in metrics.jsonl), got {args.step}")
    if source.run_steps is not None and args.step > source.run_steps:
        raise ConfigError(
            f"--step {args.step}: {source.run} took {source.run_steps} steps; its loader would give batch "
            f"{args.step - 1}, but no step trained on it (give a tokens artifact to ask about any batch)"
        )
    data = {
        "tokens": str(source.tokens),
        "run": str(source.run) if source.run else None,
        **order.batch_docs(order.open_loader(source), args.step),
    }

    def render(d: dict[str, Any]) -> str:
        head = (
            f"step {d['step']} (loader batch {d['batch_index']}, epoch {d['epoch']}): "
            f"{len(d['instances'])} instances, {len(d['documents'])} document spans"
        )
        cols = [
            "slot",
            "instance",
            "doc_id",
            "source",
            "doc_start",
            "doc_end",
            "doc_tokens",
            "instance_start",
            "instance_end",
        ]
        return head + "\n" + format_table(d["documents"], cols)

    emit(args, data, render)
    return 0


def _trace_doc(args: argparse.Namespace) -> int:
    from glasslm.trace import order

    source = _trace_source(args)
    loader = order.open_loader(source)
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {args.max_steps}")
    max_steps = args.max_steps if args.max_steps is not None else (source.run_steps or loader.steps_per_epoch)
    try:
        result = order.doc_steps(loader, args.doc_id, max_steps)
    except KeyError as e:
        raise ConfigError(
            f"{e.args[0]} (a document the mix removed or held out never reached the training tokens: "
            f"`glasslm data why {args.doc_id} RUN` says why)"
        ) from None
    data = {"tokens": str(source.tokens), "run": str(source.run) if source.run else None, **result}

    def render(d: dict[str, Any]) -> str:
        head = (
            f"{d['doc_id']} ({d['source']}, {d['tokens']} tokens, {d['tokens_in_instances']} in instances): "
            f"seen in {len(d['seen'])} batch slots within steps 1..{d['max_steps']}"
        )
        return (
            head
            + "\n"
            + format_table(d["seen"], ["step", "epoch", "slot", "instance", "doc_start", "doc_end"])
        )

    emit(args, data, render)
    return 0
