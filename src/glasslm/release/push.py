"""``glasslm release RUN --out DIR --push REPO_ID``: upload a release to the Hugging Face Hub.

Each revision branch is uploaded from a copy of its git branch onto a Hub branch of the same name, then
``main``. The branches are created from the repository's first commit (before ``main`` is uploaded), so a
revision holds only its own files, as in the local repository. The client is ``huggingface_hub.HfApi``
(token from ``HF_TOKEN`` or ``huggingface-cli login``); tests pass a fake with the same methods.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

from glasslm import artifacts
from glasslm.release import repo
from glasslm.release.build import META


class HubClient(Protocol):
    """The part of ``huggingface_hub.HfApi`` a push uses."""

    def create_repo(self, repo_id: str, *, private: bool | None = ..., exist_ok: bool = ...) -> Any: ...

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = ...) -> Any: ...

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        revision: str | None = ...,
        commit_message: str | None = ...,
        delete_patterns: list[str] | str | None = ...,
    ) -> Any: ...


def push_release(
    release: Path, repo_id: str, api: HubClient | None = None, private: bool = False
) -> list[str]:
    """Upload every revision, then main; returns the revisions pushed (main last)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = artifacts.read_manifest(Path(release) / META).get("release") or {}
    api.create_repo(repo_id, private=private, exist_ok=True)
    pushed: list[str] = []
    for name in [*(info.get("revisions") or {}), repo.MAIN]:
        if name != repo.MAIN:
            api.create_branch(repo_id, branch=name, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="glasslm-push-") as tmp:
            folder = repo.extract(Path(release), name, Path(tmp) / name)
            # delete_patterns "*": a re-push leaves no stale file behind (the Hub keeps .gitattributes)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=name,
                delete_patterns="*",
                commit_message=f"glasslm release: {name}",
            )
        pushed.append(name)
    return pushed
