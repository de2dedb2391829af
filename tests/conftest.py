from __future__ import annotations

import os

import pytest
import torch

# Tests are small; two threads keep them fast on CI's two cores without oversubscription.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def run_cli():
    """Run the real CLI in-process; returns (exit code, stdout, stderr)."""
    from glasslm.cli import main

    def _run(*args: str, capsys: pytest.CaptureFixture[str] | None = None) -> int:
        return main([str(a) for a in args])

    return _run


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The CPU linear library that a run measures is kept on disk for later runs (model/onednn.py):
    the tests (and the CLIs they start) keep theirs in a directory of their own, not in ~/.cache."""
    os.environ["GLASSLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("glasslm-cache"))
