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
