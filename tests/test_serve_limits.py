"""`glasslm serve`'s limits: one dataclass whose defaults the command line reads; endpoints on one router."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from glasslm.cli import build_parser
from glasslm.serve.app import router
from glasslm.serve.limits import ServeLimits


def test_serve_flags_default_to_the_limits_dataclass() -> None:
    args, _ = build_parser("serve").parse_known_args(["serve", "some/model"])
    defaults = ServeLimits()
    flagged = {f.name for f in dataclasses.fields(ServeLimits)} & set(vars(args))
    assert flagged == {"max_prompt_tokens", "max_new_tokens", "max_queue", "max_body_bytes", "max_batch"}
    assert all(getattr(args, name) == getattr(defaults, name) for name in flagged)


def test_every_endpoint_is_on_the_router() -> None:
    paths = {getattr(r, "path", None) for r in router.routes}
    assert paths == {
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/models/{name:path}",
        "/v1/completions",
        "/v1/chat/completions",
    }


def test_impossible_limits_and_ports_are_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glasslm.cli import main

    missing = tmp_path / "no-model"  # the flags are checked first: no model is needed to refuse them
    for flags, says in (
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--port", "99999"], "--port must be in 0..65535"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    ):
        assert main(["serve", str(missing), *flags]) == 2
        assert says in capsys.readouterr().err
