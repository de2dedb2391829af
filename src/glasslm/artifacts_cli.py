"""``glasslm manifest show|verify``: read and check artifact manifests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.clitools import add_json_flag, add_verb, emit, stage_verbs
from glasslm.data.documents import location


def register(sub: Any) -> None:
    verbs = stage_verbs(sub, "manifest", "inspect and verify artifact manifests")
    p = add_verb(verbs, "verify", _verify, "re-hash an artifact's files; exit 1 if anything changed")
    p.add_argument("path", type=location, help="artifact directory")
    p.add_argument(
        "--recursive", action="store_true", help="also verify every input artifact, back to the raw data"
    )
    p.add_argument(
        "--no-inputs",
        action="store_true",
        help="check only this artifact's own files (inputs that were not shipped with it are not errors)",
    )
    add_json_flag(p)
    p = add_verb(verbs, "show", _show, "print an artifact's manifest and its lineage")
    p.add_argument("path", type=location, help="artifact directory")
    add_json_flag(p)


def _walk(path: Path, seen: set[str]) -> list[Path]:
    key = str(path.resolve())
    if key in seen:
        return []
    seen.add(key)
    out = [path]
    for ref, parent in artifacts.inputs_of(path):
        if ref.get("kind") == artifacts.FILE_INPUT:
            continue  # a plain file: its bytes are checked by the verify of the artifact that names it
        out += _walk(parent, seen) if (parent / artifacts.MANIFEST).is_file() else [parent]
    return out


def _check_is_artifact(path: Path) -> None:
    """A directory the user named that is not an artifact gets a pointer, not a bare MISSING."""
    if (path / artifacts.MANIFEST).is_file() or not path.is_dir():
        return  # an artifact, or a path that is not there (reported MISSING)
    if (path / "glasslm" / artifacts.MANIFEST).is_file():
        raise artifacts.ArtifactError(
            f"{path}: a release (its manifest is glasslm/manifest.json); check it with `glasslm release verify {path}`"
        )
    below = sorted(m.parent.relative_to(path).as_posix() for m in path.glob(f"*/{artifacts.MANIFEST}"))
    hint = f"; artifacts in it: {', '.join(below[:12])}{' …' if len(below) > 12 else ''}" if below else ""
    raise artifacts.ArtifactError(
        f"{path}: not an artifact (no {artifacts.MANIFEST}){hint}. Verify one, or a whole lineage with "
        "--recursive from its last artifact (e.g. hf)"
    )


def _verify(args: argparse.Namespace) -> int:
    _check_is_artifact(args.path)
    paths = _walk(args.path, set()) if args.recursive else [args.path]
    reports = []
    for p in paths:
        if (p / artifacts.MANIFEST).is_file():
            reports.append(artifacts.verify(p, check_inputs=not args.no_inputs).to_json())
        else:  # an input named by a manifest on the walk is gone: that is a failure, never "OK"
            reports.append({"path": str(p), "ok": False, "gone": True})
    data = {"ok": all(r["ok"] for r in reports), "artifacts": reports}

    def render(d: dict[str, Any]) -> str:
        lines = []
        for r in d["artifacts"]:
            status = "OK     " if r["ok"] else "MISSING" if r.get("gone") else "CHANGED"
            lines.append(f"{status} {r['path']}")
            for what in (
                "changed",
                "missing",
                "added",
                "irregular",
                "inputs_changed",
                "inputs_missing",
                "sources_changed",
            ):
                lines += [f"    {what}: {name}" for name in r.get(what, [])]
        return "\n".join(lines)

    emit(args, data, render)
    return 0 if data["ok"] else 1


KEY_CONFIG_ITEMS = 8  # a lineage line stays readable; `--json` or the manifest has the rest


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(config, dict):
        return [kv for k, v in config.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), config)] if config not in (None, "", [], {}) else []


def _add_key_config(node: dict[str, Any]) -> None:
    """Each lineage node gets a one-line summary of its recorded config (scalars first)."""
    if not node.get("missing") and node.get("kind") != artifacts.FILE_INPUT:
        config = artifacts.read_manifest(node["path"]).get("config") or {}
        items = sorted(_flatten(config), key=lambda kv: (isinstance(kv[1], list | dict), kv[0].count(".")))
        text = " ".join(f"{k}={v}" for k, v in items[:KEY_CONFIG_ITEMS])
        more = len(items) - KEY_CONFIG_ITEMS
        node["key_config"] = text + (f" …(+{more})" if more > 0 else "")
    for child in node.get("inputs", []):
        _add_key_config(child)


def _show(args: argparse.Namespace) -> int:
    manifest = artifacts.read_manifest(args.path)
    tree = artifacts.lineage(args.path)
    _add_key_config(tree)
    data = {"manifest": manifest, "lineage": tree}

    def render(d: dict[str, Any]) -> str:
        m = d["manifest"]
        lines = [
            f"kind:    {m.get('kind')}",
            f"created: {m.get('created')}",
            f"command: {' '.join(m.get('command') or [])}",
            f"code:    {m.get('code')}",
            f"files:   {len(m.get('files', {}))} ({sum(f['bytes'] for f in m.get('files', {}).values()):,} bytes)",
        ]
        if m.get("metrics"):
            lines.append(f"metrics: {m['metrics']}")
        lines.append("lineage:")

        def walk(node: dict[str, Any], depth: int) -> None:
            mark = (
                " (MISSING)"
                if node.get("missing")
                else ("" if node.get("matches", True) else " (CHANGED since use)")
            )
            pad = "  " * depth
            lines.append(
                f"{pad}- {node.get('kind')}  {node.get('path')}  "
                f"sha256 {(node.get('manifest_sha256') or '')[:12]}  {node.get('created') or ''}{mark}"
            )
            if node.get("command"):
                lines.append(f"{pad}    command: {' '.join(node['command'])}")
            if node.get("key_config"):
                lines.append(f"{pad}    config:  {node['key_config']}")
            for child in node.get("inputs", []):
                walk(child, depth + 1)

        walk(d["lineage"], 1)
        return "\n".join(lines)

    emit(args, data, render)
    return 0
