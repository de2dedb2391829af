"""``glasslm release verify DIR``: check a release on its own, without the run it came from.

- ``glasslm/`` against its manifest (hashes), and the shipped manifests against the hashes recorded;
- the main branch's files (model, card, datasheet) against the manifest, and the working tree against
  the ``main`` commit;
- every revision branch: its commit, its files' hashes, and that transformers loads it (from a copy of
  the branch: ``from_pretrained(local_folder, revision=…)`` ignores the revision);
- the card's metadata header and sections, and the datasheet's sections, present and filled.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from glasslm import artifacts
from glasslm.release import repo
from glasslm.release.build import META, RELEASE
from glasslm.release.card import CARD_FIELDS, CARD_SECTIONS
from glasslm.release.datasheet import DATASHEET_SECTIONS


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def check_card(text: str) -> list[str]:
    problems = []
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    meta = yaml.safe_load(match.group(1)) if match else None
    if not isinstance(meta, dict):
        return ["README.md: no metadata header (--- YAML ---)"]
    problems += [f"README.md: metadata field '{k}' missing or empty" for k in CARD_FIELDS if not meta.get(k)]
    sections = _sections(text)
    problems += [f"README.md: section '{s}' missing or empty" for s in CARD_SECTIONS if not sections.get(s)]
    return problems


def check_datasheet(text: str) -> list[str]:
    sections = _sections(text)
    return [
        f"DATASHEET.md: section '{s}' missing or empty" for s in DATASHEET_SECTIONS if not sections.get(s)
    ]


def _compare(where: str, recorded: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    problems = [f"{where}: {rel} missing" for rel in recorded if rel not in actual]
    problems += [
        f"{where}: {rel} changed"
        for rel in recorded
        if rel in actual and actual[rel]["sha256"] != recorded[rel]["sha256"]
    ]
    return problems + [f"{where}: {rel} not in the release manifest" for rel in actual if rel not in recorded]


def load_folder(folder: Path) -> None:
    """Load a model folder with transformers alone (model and tokenizer) and run one forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("def main():", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    if not torch.isfinite(logits).all():
        raise ValueError("non-finite logits")


def verify_release(release: Path, load: bool = True) -> dict[str, Any]:
    release = Path(release)
    meta = release / META
    manifest = artifacts.read_manifest(meta)
    if manifest.get("kind") != RELEASE:
        raise artifacts.ArtifactError(f"{meta}: a '{manifest.get('kind')}' artifact, not a release")
    info = manifest.get("release") or {}
    own = artifacts.verify(meta, check_inputs=False)
    problems = [
        f"{META}/{rel}: {what}"
        for what in ("changed", "missing", "added", "irregular")
        for rel in getattr(own, what)
    ]
    for rel, sha in (info.get("shipped_manifests") or {}).items():
        copy = meta / "manifests" / rel / artifacts.MANIFEST
        if not copy.is_file() or artifacts.sha256_file(copy) != sha:
            problems.append(f"{META}/manifests/{rel}: missing or not the run's manifest")
    actual = {
        rel: v for rel, v in artifacts.hash_tree(release).items() if not rel.startswith((".git/", f"{META}/"))
    }
    problems += _compare("main", info.get("main_files") or {}, actual)
    problems += [f"working tree differs from the main commit: {p}" for p in repo.is_clean(release)]
    heads = repo.branches(release)
    loaded: dict[str, str] = {}
    if load:
        try:
            load_folder(release)
            loaded["main"] = "loaded"
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"main: transformers cannot load it ({type(e).__name__}: {e})")
    for name, rev in (info.get("revisions") or {}).items():
        if heads.get(name) != rev["commit"]:
            problems.append(f"revision {name}: branch {'missing' if name not in heads else 'moved'}")
            continue
        with tempfile.TemporaryDirectory(prefix="glasslm-verify-") as tmp:
            folder = repo.extract(release, name, Path(tmp) / name)
            problems += _compare(f"revision {name}", rev["files"], artifacts.hash_tree(folder))
            if load:
                try:
                    load_folder(folder)
                    loaded[name] = "loaded"
                except Exception as e:  # noqa: BLE001
                    problems.append(f"revision {name}: transformers cannot load it ({type(e).__name__}: {e})")
    card = release / "README.md"
    problems += check_card(card.read_text()) if card.is_file() else ["README.md missing"]
    sheet = release / "DATASHEET.md"
    problems += check_datasheet(sheet.read_text()) if sheet.is_file() else ["DATASHEET.md missing"]
    return {
        "path": str(release),
        "ok": not problems,
        "problems": problems,
        "revisions": sorted(info.get("revisions") or {}),
        "loaded": loaded,
    }
