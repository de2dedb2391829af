"""What a pipeline stage is: one record from which the runner derives everything it does with it."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Call:
    """What a stage's command line is made from."""

    run: Path  # the run directory
    config_file: Path  # the run config every verb reads its own section of
    section: dict[str, Any]  # the stage's section, file keys included
    inputs: list[str]  # the artifacts (relative to the run) this stage reads, in the table's order

    def path(self, rel: str) -> str:
        return str(self.run / rel)


@dataclass(frozen=True)
class FileKey:
    """A key of a stage's section naming files outside the run.

    Relative values resolve against the config file's folder (a value given as a --key=value override:
    against the working directory), preflight checks the files exist, and the fingerprint may cover
    them so that an edited file re-runs the stage."""

    key: str  # dotted, inside the section; its value is a path, a list of paths or of {path: …} items
    what: str  # for messages: "a recipe file"
    fingerprint: Literal["none", "stat", "sha256"] = "none"  # stat: size and mtime of every file it names
    default: Path | None = None  # the file used when the key is absent
    argument: bool = False  # the pipeline passes it on the command line: not part of the verb's config
    hint: str = ""  # added to the preflight message when a file it names is missing: how to get one

    def values(self, section: Mapping[str, Any]) -> list[Any]:
        """The paths (or glob patterns) the key names in ``section``."""
        node: Any = section
        *parents, last = self.key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return []
        value = node.get(last, self.default)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [i.get("path") if isinstance(i, dict) else i for i in items]


# The artifacts a stage reads, when they depend on which stages run: (stage names, stages by name).
InputsOf = Callable[[Sequence[str], Mapping[str, "Stage"]], list[str]]


@dataclass(frozen=True)
class Stage:
    """One stage: the verb it runs, what it reads and writes, and how its config section is checked."""

    name: str  # also the name of its section in the run config
    out: str  # artifact path relative to the run directory
    inputs: tuple[str, ...] | InputsOf  # artifact paths (relative) this stage reads
    argv: Callable[[Call], list[str]]  # the `glasslm` command line
    # "module:Class" the verb reads the section as, checked before anything runs (None: no config).
    config: str | None = None
    nested: bool = False  # the verb reads the section under a key of the stage's name (CorpusRun.corpus)
    files: tuple[FileKey, ...] = ()
    checks: Callable[[dict[str, Any]], list[str]] | None = None  # more preflight problems (packages…)
    resumable: bool = False  # an interrupted run of this stage continues (--resume auto)
    model: bool = False  # writes a model: the most adapted one that runs is the one exported
    options: tuple[str, ...] = ()  # section keys the pipeline passes to the verb as --KEY VALUE

    def input_paths(self, names: Sequence[str], known: Mapping[str, Stage]) -> list[str]:
        return list(self.inputs) if isinstance(self.inputs, tuple) else self.inputs(names, known)

    def config_class(self) -> type | None:
        if self.config is None:
            return None
        module, _, cls = self.config.partition(":")
        found: type = getattr(importlib.import_module(module), cls)
        return found

    def arguments(self) -> set[str]:
        """Section keys that go to the command line rather than into the verb's config."""
        return {f.key for f in self.files if f.argument} | set(self.options)

    def verb_section(self, section: Mapping[str, Any]) -> dict[str, Any]:
        """The section as the verb's config reads it."""
        arguments = self.arguments()
        return {k: v for k, v in section.items() if k not in arguments}


def missing_package(module: str, why: str, install: str) -> list[str]:
    """A preflight problem when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        return [f"{why} needs the package '{module}' ({install})"]
    return []
