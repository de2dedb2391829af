"""``glasslm release RUN --out DIR``: package a run as a Hugging Face-style git repository.

Layout of DIR (``main`` branch; each revision branch holds the model files and a short README):

    README.md  DATASHEET.md  config.json  generation_config.json  model.safetensors  tokenizer.json
    tokenizer_config.json  special_tokens_map.json  chat_template.jinja
    glasslm/manifest.json            the release artifact (kind "release": hashes of everything, revisions)
    glasslm/manifests/<artifact>/    every manifest of the run, byte for byte (relative lineage)
    glasslm/logs/<stage>/            metrics.jsonl, eval results, TensorBoard / W&B files when present
    glasslm/data/                    ledger summary, per-rule and licence figures, unlicensed documents
    glasslm/report/                  the run's report, when made
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glasslm import artifacts
from glasslm.artifacts import ArtifactError
from glasslm.config import ConfigError, did_you_mean
from glasslm.release import licenses, repo
from glasslm.release.card import CardInputs, Revision, rounded_tokens, write_card
from glasslm.release.datasheet import write_datasheet
from glasslm.release.facts import data_facts

RELEASE = "release"
META = "glasslm"  # the folder of glasslm's own files: Hugging Face tools ignore it
# (stage name in revision names, directory in the run), in training order
MODEL_RUNS = [("train", "train"), ("sft", "adapt/sft"), ("dpo", "adapt/dpo"), ("rl", "adapt/rl")]
LOG_FILES = (
    "metrics.jsonl",
    "config.yaml",
    "eval_before.json",
    "eval_after.json",
    "results.json",
    "perplexity.json",
    "summary.md",
)
LOG_DIRS = ("tensorboard", "wandb", "predictions")


@dataclass
class ReleaseConfig:
    license: str = "apache-2.0"  # the model's licence (a Hugging Face licence id)
    repo_id: str = ""  # the Hub repository the card names (default glasslm/<run name>)
    language: list[str] = field(default_factory=list)  # default: the recipe's language filters, else en
    # Release even when a trained-on source has no licence or one that does not allow this licence;
    # recorded in the manifest and stated in the card and datasheet.
    allow_license_issues: bool = False

    def validate(self) -> None:
        known = licenses.PERMISSIVE | licenses.SHARE_ALIKE | {"other"}
        if self.license.lower() not in known:  # a typo would be printed in the card as the licence
            raise ConfigError(
                f"release.license {self.license!r} is not a licence id glasslm knows"
                + did_you_mean(self.license.lower(), sorted(known))
                + f"; use one of {', '.join(sorted(known))} ('other': describe it in the card yourself)"
            )


def revisions(run: Path) -> list[Revision]:
    """Every kept checkpoint of pretraining and of each adaptation stage, in training order."""
    out: list[Revision] = []
    for stage, rel in MODEL_RUNS:
        for ckpt in sorted((run / rel / "checkpoints").glob("step*")):
            if not (ckpt / artifacts.MANIFEST).is_file():
                continue  # a checkpoint being written when the run stopped
            m = artifacts.read_manifest(ckpt)
            step, tokens = (
                int((m.get("metrics") or {}).get("step", m.get("step", 0))),
                (m.get("metrics") or {}).get("tokens"),
            )
            name = (
                f"stage1-step{step}" + (f"-tokens{rounded_tokens(tokens)}" if tokens else "")
                if stage == "train"
                else f"{stage}-step{step}"
            )
            out.append(
                Revision(name, stage, step, tokens, f"{rel}/checkpoints/{ckpt.name}", m.get("created"))
            )
    if not out:
        raise ArtifactError(f"{run}: no checkpoints in train/ or adapt/*/ — nothing to release")
    return out


def run_manifests(run: Path, exclude: Path) -> list[str]:
    """Every artifact below the run (stages and checkpoints), relative, hidden folders and ``exclude`` left out."""
    found = []
    # an earlier release inside the run (the pipeline's RUN/release) ships copies of the run's manifests:
    # they are not artifacts of the run, and listing them would give every stage twice
    releases = [m.parent.parent.resolve() for m in run.rglob(f"{META}/{artifacts.MANIFEST}")]
    for manifest in sorted(run.rglob(artifacts.MANIFEST)):
        d = manifest.parent
        rel = d.relative_to(run)
        where = d.resolve()
        if (
            any(p.startswith(".") for p in rel.parts)
            or where in (exclude, run.resolve())
            or exclude in where.parents
            or any(where == r or r in where.parents for r in releases)
        ):
            continue
        found.append(rel.as_posix())
    return found


def _stage_artifacts(run: Path, manifests: list[str]) -> list[str]:
    """The stage artifacts (not checkpoints) in the order they were made."""
    stages = [r for r in manifests if "/checkpoints/" not in f"/{r}/"]
    return sorted(stages, key=lambda r: (artifacts.read_manifest(run / r).get("created") or "", r))


def _language(config: ReleaseConfig, recipe: dict[str, Any]) -> list[str]:
    if config.language:
        return list(config.language)
    found = sorted({s["language"] for s in recipe.get("sources", []) if s.get("language")})
    return found or ["en"]


def _model_files(checkpoint: Path, dest: Path, scratch: Path) -> None:
    """The Hugging Face files of a checkpoint (``convert to-hf``) into ``dest``, without their manifest."""
    from glasslm.model.hf import export_hf

    folder = scratch / f"hf-{len(list(scratch.iterdir()))}"
    export_hf(checkpoint, folder)
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.name != artifacts.MANIFEST:
            shutil.copyfile(f, dest / f.name)


def _revision_readme(rev: Revision, c_license: str, repo_id: str) -> str:
    return (
        f"---\nlicense: {c_license}\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        f"# {repo_id} at revision {rev.name}\n\nThe {rev.stage} checkpoint at step {rev.step}"
        + (f" ({rev.tokens:,} tokens)" if rev.tokens else "")
        + f", from `{rev.source}`. The model card, datasheet "
        "and lineage are on the main branch.\n"
    )


def _copy_meta(run: Path, meta: Path, manifests: list[str]) -> None:
    for rel in manifests:
        dest = meta / "manifests" / rel
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / rel / artifacts.MANIFEST, dest / artifacts.MANIFEST)
    for _, rel in [*MODEL_RUNS, ("eval", "eval")]:
        src = run / rel
        for name in LOG_FILES:
            if (src / name).is_file():
                (meta / "logs" / rel).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, meta / "logs" / rel / name)
        for name in LOG_DIRS:
            if (src / name).is_dir():
                shutil.copytree(src / name, meta / "logs" / rel / name, symlinks=False)
    if (run / "report" / artifacts.MANIFEST).is_file():
        shutil.copytree(run / "report", meta / "report", ignore=shutil.ignore_patterns(artifacts.MANIFEST))
    if (run / "pipeline.json").is_file():
        shutil.copyfile(run / "pipeline.json", meta / "pipeline.json")
    if (run / ".pipeline" / "config.yaml").is_file():
        shutil.copyfile(run / ".pipeline" / "config.yaml", meta / "pipeline-config.yaml")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def check_release_out(out: Path, run: Path) -> None:
    """``--out`` is new, empty, or an earlier glasslm release (its main branch holds a release manifest);
    never the run itself or a folder holding it."""
    if str(out) in ("", "."):
        raise ArtifactError("--out is empty or '.': name a new directory for the release")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ArtifactError(
            f"{out}: exists and is not a directory; choose another --out (nothing was changed)"
        )
    target = out.resolve()
    if target == run.resolve() or target in run.resolve().parents:
        raise ArtifactError(f"--out {out} would replace the run {run}; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        committed = (
            repo.committed_file(out, repo.MAIN, f"{META}/{artifacts.MANIFEST}")
            if (out / ".git").is_dir()
            else None
        )
        if committed is None or json.loads(committed).get("kind") != RELEASE:
            raise ArtifactError(
                f"{out}: exists, is not empty and is not a glasslm release; refusing to replace it "
                "(nothing was deleted). Choose a new --out"
            )


def make_release(run: Path, out: Path, config: ReleaseConfig) -> dict[str, Any]:
    run = Path(run)
    if not run.is_dir():
        raise ArtifactError(f"{run}: no such run directory")
    check_release_out(out, run)
    facts = data_facts(run)
    check = licenses.check(facts.trained_licenses, config.license, config.allow_license_issues)
    if not check.ok and not config.allow_license_issues:
        raise ArtifactError(
            f"licence check failed for a model licence of '{config.license}': {check.message()}. "
            "Fix the documents' metadata.license, choose another --license=ID, or release "
            "anyway with --allow-license-issues (recorded in the card and the manifest)"
        )
    revs = revisions(run)
    final = next(r for r in reversed(revs) if r.stage == revs[-1].stage)  # last checkpoint of the last stage
    repo_id = config.repo_id or f"glasslm/{run.resolve().name}"
    manifests = run_manifests(run, out.resolve())
    stages = _stage_artifacts(run, manifests)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        repo.init(tmp)
        with tempfile.TemporaryDirectory(prefix="glasslm-release-") as scratch_dir:
            scratch = Path(scratch_dir)
            for rev in revs:
                folder = scratch / "revisions" / rev.name
                _model_files(run / rev.source, folder, scratch)
                (folder / "README.md").write_text(_revision_readme(rev, config.license, repo_id))
                rev.files = artifacts.hash_tree(folder)
                rev.commit = repo.commit_folder(
                    tmp, folder, rev.name, f"{rev.name}: {rev.source}", rev.created
                )
            _model_files(run / final.source, tmp, scratch)
        meta = tmp / META
        _copy_meta(run, meta, manifests)
        _write_json(meta / "data" / "ledger_summary.json", facts.summary)
        _write_json(meta / "data" / "facts.json", facts.to_json())
        (meta / "data" / "unlicensed_documents.jsonl").write_text(
            "".join(json.dumps(d, sort_keys=True) + "\n" for d in facts.unlicensed)
        )
        shipped = sorted(f"{META}/{p}" for p in [*artifacts.walk_tree(meta)[0], artifacts.MANIFEST])
        lineage = [
            {
                "artifact": rel,
                "kind": (m := artifacts.read_manifest(run / rel)).get("kind"),
                "manifest_sha256": artifacts.manifest_hash(run / rel),
                "command": m.get("command"),
            }
            for rel in stages
        ]
        card = CardInputs(
            run=run,
            name=run.resolve().name,
            repo_id=repo_id,
            license=config.license,
            language=_language(config, facts.recipe),
            facts=facts,
            license_check=check.to_json(),
            revisions=revs,
            final=final,
            hf_config=json.loads((tmp / "config.json").read_text()),
            lineage=lineage,
        )
        (tmp / "README.md").write_text(write_card(card, shipped))
        (tmp / "DATASHEET.md").write_text(write_datasheet(facts, card.name, check.to_json()))
        main_files = {
            rel: info
            for rel, info in artifacts.hash_tree(tmp).items()
            if not rel.startswith((".git/", f"{META}/"))
        }
        extra = {
            "release": {
                "repo_id": repo_id,
                "license": config.license,
                "final": final.name,
                "revisions": {
                    r.name: {
                        "stage": r.stage,
                        "step": r.step,
                        "tokens": r.tokens,
                        "source": r.source,
                        "commit": r.commit,
                        "files": r.files,
                    }
                    for r in revs
                },
                "main_files": main_files,
                "shipped_manifests": {rel: artifacts.manifest_hash(run / rel) for rel in manifests},
                "license_check": check.to_json(),
            },
        }
        metrics = {
            "revisions": len(revs),
            "documents": facts.summary["input"]["docs"],
            "unlicensed_documents": len(facts.unlicensed),
            "license_ok": check.ok,
            "license_overridden": bool(check.problems and config.allow_license_issues),
            "rules": facts.rules,
        }
        artifacts.write_manifest(
            meta, RELEASE, config=config, inputs=[run / s for s in stages], metrics=metrics, extra=extra
        )
        repo.commit_folder(tmp, tmp, repo.MAIN, f"{repo_id}: release of {card.name}", final.created)
        artifacts.fsync_tree(tmp)
        artifacts.publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "revisions": [r.name for r in revs], "license_check": check.to_json()}
