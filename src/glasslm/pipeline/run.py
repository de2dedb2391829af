"""Run the stages of ``stages.STAGES`` in order, each skipped when up to date.

The pipeline is nothing but the stages' own verbs called in order, in-process, through the
``run_verb`` the caller gives (``glasslm.cli.main``). Each stage is skipped when its output artifact
exists and was made from the same inputs (by manifest hash) with the same stage config, so re-running
is cheap, an interrupted pipeline continues where it stopped, and changing one stage's config re-runs
only that stage and what depends on it. The fingerprints live in ``RUN/pipeline.json`` with each
stage's time. Everything stage-specific comes from the stage table.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm import config as cfg
from glasslm.config import ConfigError, closest
from glasslm.pipeline.stage import Call, Stage, missing_package
from glasslm.pipeline.stages import STAGES
from glasslm.trace.energy import this_cpu

RunVerb = Callable[[list[str]], int]


def config_class(stages: Iterable[Stage] = STAGES) -> type:
    """The run config's dataclass: which stages run, then one free-form section per stage (passed to
    the stage's verb as --config, and checked by ``check_sections`` against the stage's config class)."""
    fields: list[Any] = [("stages", list[str], field(default_factory=list))]  # empty: every stage
    fields += [(s.name, dict[str, Any], field(default_factory=dict)) for s in stages]
    return dataclasses.make_dataclass("PipelineConfig", fields)


PipelineConfig = config_class()


def _by_name(stages: Iterable[Stage]) -> dict[str, Stage]:
    return {s.name: s for s in stages}


def _section_checker(stage: Stage) -> type | None:
    """The class whose keys a section must match: the stage's config, nested under the stage's name
    when its verb reads it so (the verb's own wrapper, e.g. ``CorpusRun.corpus``)."""
    cls = stage.config_class()
    if cls is None or not stage.nested:
        return cls
    wrapper: type = dataclasses.make_dataclass(
        f"{cls.__name__}Section", [(stage.name, cls, field(default_factory=cls))]
    )
    return wrapper


def check_sections(config: Any, stages: Sequence[Stage] = STAGES) -> None:
    """Every section's keys and types against its stage's config class, before anything runs: a typo in
    the last stage's section fails in the first second, not the tenth minute."""
    for stage in stages:
        section = getattr(config, stage.name)
        checker = _section_checker(stage)
        if not section or checker is None:
            continue
        section = stage.verb_section(section)
        try:
            cfg.check_keys(checker, {stage.name: section} if stage.nested else section)
        except ConfigError as e:
            raise ConfigError(f"section '{stage.name}': {e}") from None
    # A stage without a config class reads nothing but its command-line keys.
    for stage in stages:
        section = getattr(config, stage.name)
        unknown = sorted(set(section or ()) - stage.arguments())
        if stage.config is None and stage.arguments() and unknown:
            allowed = [f"'{f.key}' ({f.what})" for f in stage.files if f.argument]
            allowed += [f"'{key}'" for key in stage.options]
            near = closest(unknown[0], sorted(stage.arguments()))
            hint = f"; did you mean '{near}'?" if near else ""
            raise ConfigError(
                f"section '{stage.name}': unknown key '{unknown[0]}'{hint} (allowed: {', '.join(allowed)})"
            )


def _is_url(value: str) -> bool:
    return "://" in value


def resolve_paths(
    config: Any, config_dir: Path, overridden: set[str], stages: Sequence[Stage] = STAGES
) -> None:
    """Make the run config's file paths (every stage's ``files`` keys) absolute, in place: relative to
    the config file, or to the working directory for a value given as a --key=value override."""

    def absolute(value: Any, base: Path) -> Any:
        if not isinstance(value, str) or not value or _is_url(value) or Path(value).is_absolute():
            return value
        return str((base / value).resolve())

    for stage in stages:
        for file_key in stage.files:
            node: Any = getattr(config, stage.name)
            *parents, key = file_key.key.split(".")
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or key not in node:
                continue
            top = f"{stage.name}.{file_key.key}"
            base = Path.cwd() if any(o == top or o.startswith(top + ".") for o in overridden) else config_dir
            value = node[key]
            if isinstance(value, list):
                node[key] = [
                    (
                        {**v, "path": absolute(v.get("path"), base)}
                        if isinstance(v, dict)
                        else absolute(v, base)
                    )
                    for v in value
                ]
            else:
                node[key] = absolute(value, base)


def override_keys(overrides: list[str]) -> set[str]:
    return {o[2:].split("=", 1)[0] for o in overrides}


def preflight(config: Any, names: list[str], stages: Sequence[Stage] = STAGES) -> None:
    """Check, before the first stage, that every stage can run: files named by the config, optional
    packages it needs. All problems in one error, so a missing file does not fail the tenth minute."""
    problems: list[str] = []
    for stage in stages:
        if stage.name not in names:
            continue
        section = getattr(config, stage.name)
        for file_key in stage.files:
            for value in file_key.values(section):
                if (
                    isinstance(value, str)
                    and not _is_url(value)
                    and not glob.glob(value)
                    and not Path(value).exists()
                ):
                    problems.append(
                        f"{stage.name}.{file_key.key}: {value} does not exist"
                        + (f" ({file_key.hint})" if file_key.hint else "")
                    )
        if stage.checks is not None:
            problems += stage.checks(section)
    if any(_mentions(getattr(config, n), "executor", "ray") for n in names if hasattr(config, n)):
        problems += missing_package("ray", "executor: ray", "pip install 'glasslm[ray]'")
    if problems:
        raise ConfigError("the pipeline cannot run:\n  " + "\n  ".join(problems))


def _mentions(node: Any, key: str, value: str) -> bool:
    if isinstance(node, dict):
        return any((k == key and v == value) or _mentions(v, key, value) for k, v in node.items())
    return False


def check_run_dir(run: Path) -> None:
    """A pipeline writes into a new or empty directory, or one of its own runs (pipeline.json)."""
    if run.exists() and (not run.is_dir() or (any(run.iterdir()) and not (run / "pipeline.json").is_file())):
        raise artifacts.ArtifactError(
            f"{run}: exists and is not a pipeline run (no pipeline.json); refusing to write into it "
            "(nothing was changed). Choose a new --out"
        )


def fingerprint(stage: Stage, inputs: list[str], run: Path, section: dict[str, Any]) -> str:
    """What a stage's output was made from: its name, its section, the outside files it reads (by
    content or by size and mtime, as its table entry says) and its input artifacts' manifests."""
    h = hashlib.sha256()
    h.update(stage.name.encode())
    h.update(json.dumps(section, sort_keys=True, default=str).encode())
    for file_key in stage.files:
        if file_key.fingerprint == "sha256":
            for value in file_key.values(section):
                h.update(artifacts.sha256_file(Path(value)).encode())
    # Files the stage reads outside the run: an edited task file or an added shard re-runs the stage.
    for file_key in stage.files:
        if file_key.fingerprint != "stat":
            continue
        for pattern in file_key.values(section):
            for path in sorted(glob.glob(str(pattern)) or [str(pattern)]):
                for file in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
                    if file.is_file():
                        st = file.stat()
                        h.update(f"{file}:{st.st_size}:{st.st_mtime_ns}".encode())
    for rel in inputs:
        manifest = run / rel / artifacts.MANIFEST
        h.update(rel.encode())
        h.update(artifacts.sha256_file(manifest).encode() if manifest.is_file() else b"missing")
    return h.hexdigest()


@dataclass
class Step:
    """A stage as this run will call it."""

    stage: Stage
    inputs: list[str]
    section: dict[str, Any]

    def argv(self, run: Path, config_file: Path) -> list[str]:
        return self.stage.argv(Call(run, config_file, self.section, self.inputs))


def plan(config: Any, stages: Sequence[Stage] = STAGES) -> list[Step]:
    """The stages this config runs, in order, with their inputs; checks the config first."""
    known = _by_name(stages)
    names = config.stages or list(known)
    for name in names:
        if name not in known:
            raise ConfigError(f"config key 'stages': unknown stage '{name}' (stages: {', '.join(known)})")
    check_sections(config, stages)
    preflight(config, names, stages)
    return [Step(known[n], known[n].input_paths(names, known), getattr(config, n)) for n in names]


def write_run_config(config: Any, path: Path, stages: Sequence[Stage] = STAGES) -> None:
    """The one file every verb reads its own section of (config.load's run_section); keys the pipeline
    turns into command-line arguments are not part of the verbs' configs."""
    known = _by_name(stages)
    sections = {k: v for k, v in cfg.to_dict(config).items() if k != "stages"}
    sections = {k: known[k].verb_section(v) if k in known else v for k, v in sections.items()}
    path.write_text(yaml.safe_dump(sections, sort_keys=False))


def _state(run: Path) -> dict[str, Any]:
    path = run / "pipeline.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(run: Path, state: dict[str, Any]) -> None:
    tmp = run / "pipeline.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(run / "pipeline.json")


def run_pipeline(
    config: Any,
    run: Path,
    run_verb: RunVerb,
    force: list[str] | None = None,
    stages: Sequence[Stage] = STAGES,
) -> dict[str, Any]:
    """Run (or skip) every stage of ``config``; ``run_verb`` runs one `glasslm` command line."""
    steps = plan(config, stages)
    check_run_dir(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / ".pipeline").mkdir(exist_ok=True)
    config_file = run / ".pipeline" / "config.yaml"
    write_run_config(config, config_file, stages)
    state = _state(run)
    total_start = time.perf_counter()
    ran: list[str] = []
    for step in steps:
        name, stage = step.stage.name, step.stage
        stamp = fingerprint(stage, step.inputs, run, step.section)
        out = run / stage.out
        previous = state.get(name, {})
        done = (out / artifacts.MANIFEST).is_file() and previous.get("status") == "done"
        if done and previous.get("fingerprint") == stamp and name not in (force or []):
            print(
                f"[pipeline] {name:<10} up to date ({previous.get('seconds', 0):.1f} s when it ran)",
                flush=True,
            )
            continue
        for rel in step.inputs:
            if not (run / rel / artifacts.MANIFEST).is_file():
                raise artifacts.ArtifactError(f"stage '{name}' needs {run / rel}, which does not exist yet")
        interrupted = previous.get("status") == "running" and previous.get("fingerprint") == stamp
        if out.exists() and not (stage.resumable and interrupted):
            shutil.rmtree(out)  # made from other inputs or another config: start again
        argv = step.argv(run, config_file)
        state[name] = {"fingerprint": stamp, "status": "running", "argv": argv}
        _save_state(run, state)
        print(f"[pipeline] {name:<10} glasslm {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        rc = run_verb(argv)
        seconds = time.perf_counter() - start
        if rc != 0:
            raise artifacts.ArtifactError(
                f"stage '{name}' failed (exit {rc}): glasslm {' '.join(argv)}; fix what it "
                f"said above and run the pipeline again (finished stages are kept)"
            )
        # the CPU it ran on: `glasslm energy RUN` estimates the non-training stages' energy from it
        state[name].update(status="done", seconds=round(seconds, 2), cpu=this_cpu())
        _save_state(run, state)
        ran.append(name)
        print(f"[pipeline] {name:<10} done in {seconds:.1f} s", flush=True)
    total = time.perf_counter() - total_start
    print(f"[pipeline] finished in {total:.1f} s ({len(ran)} stages ran); stage times:", flush=True)
    for step in steps:
        name = step.stage.name
        mark = "" if name in ran else " (earlier)"
        print(f"  {name:<10} {state.get(name, {}).get('seconds', 0):8.1f} s{mark}")
    return state
