"""The release folder as a git repository: one commit per revision, each on its own branch.

Commits are made with a fixed author, committer and date (the date of the artifact each revision comes
from), no hooks and no signing, so the same run gives the same commit ids on every machine. Each
revision is a root commit (its own history, as a Hugging Face revision branch reads), built from a
scratch folder through a separate index; ``main`` is the release folder itself.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import subprocess
import tarfile
from pathlib import Path

from glasslm.artifacts import ArtifactError

AUTHOR = ("glasslm release", "release@glasslm.invalid")
MAIN = "main"


def git(repo: Path, *args: str, env: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    """Run git on ``repo``'s .git with no user or system configuration (hooks, signing, filters, autocrlf
    would all change what is committed)."""
    repo = repo.resolve()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_DIR": str(repo / ".git"),
        "GIT_TERMINAL_PROMPT": "0",
        **(env or {}),
    }
    cmd = [
        "git",
        "-c",
        "core.hooksPath=" + os.devnull,
        "-c",
        "commit.gpgsign=false",
        "-c",
        "core.autocrlf=false",
        *args,
    ]
    try:
        done = subprocess.run(cmd, cwd=repo, env=full_env, input=data, capture_output=True, check=False)
    except FileNotFoundError:
        raise ArtifactError("git is not installed; a release is a git repository (install git)") from None
    if done.returncode != 0:
        raise ArtifactError(
            f"git {' '.join(args)} in {repo} failed: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def init(repo: Path) -> None:
    git(repo, "init", "-q", "--initial-branch", MAIN, str(repo))


def _date_env(created: str | None) -> dict[str, str]:
    """Author and committer dates: the artifact's creation time (fixed, so commits are reproducible)."""
    when = _dt.datetime.fromisoformat(created) if created else _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
    stamp = f"{int(when.timestamp())} +0000"
    return {
        "GIT_AUTHOR_NAME": AUTHOR[0],
        "GIT_AUTHOR_EMAIL": AUTHOR[1],
        "GIT_COMMITTER_NAME": AUTHOR[0],
        "GIT_COMMITTER_EMAIL": AUTHOR[1],
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }


def commit_folder(repo: Path, folder: Path, branch: str, message: str, created: str | None) -> str:
    """Commit every file of ``folder`` as a root commit on ``branch``; returns the commit id. ``folder`` is
    the release folder itself for ``main`` (its own index), a scratch folder for a revision."""
    env = {"GIT_WORK_TREE": str(folder.resolve()), **_date_env(created)}
    if folder != repo:
        env["GIT_INDEX_FILE"] = str(repo.resolve() / ".git" / f"index-{branch}")
    git(repo, "add", "-A", "--", ".", env=env)
    tree = git(repo, "write-tree", env=env).decode().strip()
    commit = git(repo, "commit-tree", tree, "-m", message, env=env).decode().strip()
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    if folder != repo:
        Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
    return commit


def branches(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads").decode()
    return dict(line.split(" ", 1) for line in out.splitlines() if line)  # type: ignore[misc]


def extract(repo: Path, revision: str, dest: Path) -> Path:
    """The files of ``revision`` written to ``dest`` (what a Hub download of that revision holds):
    transformers' ``from_pretrained(local_folder, revision=…)`` ignores the revision, so a local
    revision is loaded from such a copy."""
    data = git(repo, "archive", "--format=tar", revision)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def is_clean(repo: Path) -> list[str]:
    """Paths of the working tree that differ from ``main`` (empty when clean)."""
    env = {"GIT_WORK_TREE": str(repo.resolve())}
    out = git(repo, "status", "--porcelain", "--untracked-files=all", env=env).decode()
    return [line[3:] for line in out.splitlines() if line]


def committed_file(repo: Path, revision: str, path: str) -> bytes | None:
    try:
        return git(repo, "show", f"{revision}:{path}")
    except ArtifactError:
        return None
