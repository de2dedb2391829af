"""oneDNN linears on CPU (model/onednn.py): the same layer, the same gradients, the same state dict;
and the trainer really takes the fast paths (oneDNN linears + chunked head) on CPU in fp32.

Tolerance for fp32: rtol 1e-5 / atol 1e-5 (oneDNN and MKL sum the products in different orders)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_train_support import make_tokens, write_config

from glasslm.config import from_dict
from glasslm.model import onednn
from glasslm.model.loss import lm_loss
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train import distributed
from glasslm.train.config import TrainConfig
from glasslm.train.pretrain import pretraining
from glasslm.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN")
TOL = dict(rtol=1e-5, atol=1e-5)


def test_onednn_linear_matches_nn_linear() -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=False)
    fast = copy.deepcopy(plain)
    assert onednn.use_onednn_linears(fast) == 1 and isinstance(fast, onednn.OneDNNLinear)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 7, 24, requires_grad=True)
    g = torch.randn(3, 7, 40)
    y_ref, y = plain(x), fast(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, plain.weight), g)
    dx, dw = torch.autograd.grad(y, (x, fast.weight), g)
    torch.testing.assert_close(dx, dx_ref, **TOL)
    torch.testing.assert_close(dw, dw_ref, **TOL)
    assert y.grad_fn is not None and "LinearFn" in type(y.grad_fn).__name__  # the oneDNN path ran


def test_onednn_linear_falls_back_where_it_does_not_apply() -> None:
    layer = torch.nn.Linear(8, 4, bias=False)
    onednn.use_onednn_linears(layer)
    x = torch.randn(2, 8)
    assert "LinearFn" not in type(layer.double()(x.double()).grad_fn).__name__  # fp64: F.linear
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16  # autocast still applies
    biased = torch.nn.Linear(8, 4)
    assert onednn.use_onednn_linears(biased) == 0 and type(biased) is torch.nn.Linear


def test_model_with_onednn_linears_same_loss_and_grads() -> None:
    torch.manual_seed(0)
    ref = OLMo2(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64))
    fast = copy.deepcopy(ref)
    assert onednn.use_onednn_linears(fast) == 2 * 7 + 1  # q k v o, gate up down per block; the head
    x, y = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    for model in (ref, fast):
        ce, z = lm_loss(model(x), y, z_loss=1e-4)
        (ce + z).backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)


def test_trainer_takes_the_fast_paths_on_cpu(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "tokens", n_docs=60)
    data = json.loads(write_config(tmp_path / "c.json", tokens, trainer={"max_steps": 1}).read_text())
    config = from_dict(TrainConfig, data)
    world = distributed.init(config.distributed, "cpu")
    trainer = pretraining(config, tmp_path / "run", world, "never").model
    assert trainer.hidden_states and trainer.onednn
    assert isinstance(distributed.unwrap(trainer.state_module).lm_head, onednn.OneDNNLinear)
    config.trainer.onednn_linear, config.trainer.loss_chunk_tokens = False, 0
    plain = pretraining(config, tmp_path / "run2", world, "never").model
    assert not plain.hidden_states and not plain.onednn
    assert type(distributed.unwrap(plain.state_module).lm_head) is torch.nn.Linear


# -- the library chosen by measurement (issue #23) ---------------------------------------------------

WIDE = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=512)


@pytest.fixture
def fresh_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine that has measured nothing yet: an empty choices file, an empty per-process cache."""
    monkeypatch.setenv("GLASSLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onednn, "_CHOICES", {})
    return onednn.choices_file()


def test_choice_is_measured_forced_or_small(fresh_choices: Path) -> None:
    model = OLMo2(WIDE)
    measured = onednn.choose_backend(model, rows=512)
    assert measured.how == "measured" and measured.backend in ("onednn", "mkl")
    assert measured.mkl_ms is not None and measured.onednn_ms is not None and measured.rows == 512
    faster = "onednn" if measured.onednn_ms < measured.mkl_ms else "mkl"
    assert measured.backend == faster  # the faster one is kept, whichever it is on this CPU
    assert onednn.choose_backend(model, rows=512) is measured  # timed once per process
    assert onednn.choose_backend(model, rows=512, mode=True) == onednn.LinearChoice(
        "onednn", "forced", threads=torch.get_num_threads()
    )
    assert onednn.choose_backend(model, rows=512, mode=False).backend == "mkl"
    assert onednn.choose_backend(model, rows=2).how == "small"  # too little work to time
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        onednn.choose_backend(model, rows=8, mode="fast")  # type: ignore[arg-type]


def test_measured_choice_is_kept_for_later_runs_on_this_machine(
    fresh_choices: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = OLMo2(WIDE)
    first = onednn.choose_backend(model, rows=512)
    assert first.how == "measured" and fresh_choices.is_file()
    (entry,) = json.loads(fresh_choices.read_text()).values()
    assert entry["backend"] == first.backend and entry["rows"] == 512 and entry["cpu"]
    # A later process (a new per-process cache) takes the stored choice, even where a new timing
    # would now say otherwise: the same config on this machine gives the same model.
    other: onednn.Backend = "mkl" if first.backend == "onednn" else "onednn"
    entry["backend"] = other
    fresh_choices.write_text(json.dumps({k: entry for k in json.loads(fresh_choices.read_text())}))
    monkeypatch.setattr(onednn, "_CHOICES", {})
    later = onednn.choose_backend(model, rows=512)
    assert (later.backend, later.how, later.mkl_ms, later.rows) == (other, "cached", first.mkl_ms, 512)
    # Other shapes, rows or thread counts are measured (and stored) on their own.
    assert onednn.choose_backend(model, rows=384).how == "measured"
    assert len(json.loads(fresh_choices.read_text())) == 2
    # A damaged file is measured over, not trusted, and not fatal.
    fresh_choices.write_text("{not json")
    monkeypatch.setattr(onednn, "_CHOICES", {})
    assert onednn.choose_backend(model, rows=512).how == "measured"
    assert len(json.loads(fresh_choices.read_text())) == 1


def test_unwritable_cache_still_measures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GLASSLM_CACHE_DIR", str(blocker / "cache"))  # below a file: cannot be made
    monkeypatch.setattr(onednn, "_CHOICES", {})
    assert onednn.choose_backend(OLMo2(WIDE), rows=512).how == "measured"


def test_apply_choice_both_ways_same_math() -> None:
    torch.manual_seed(0)
    ref = OLMo2(WIDE)
    model = copy.deepcopy(ref)
    x, y = torch.randint(0, 512, (2, 9)), torch.randint(0, 512, (2, 9))
    grads = {}
    for backend in ("onednn", "mkl", "onednn"):
        assert onednn.apply_choice(model, onednn.LinearChoice(backend, "forced")) == (backend == "onednn")
        kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)}
        assert kinds == {onednn.OneDNNLinear if backend == "onednn" else torch.nn.Linear}
        model.zero_grad()
        ce, z = lm_loss(model(x), y, z_loss=1e-4)
        (ce + z).backward()
        grads[backend] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert model.state_dict().keys() == ref.state_dict().keys()
    for a, b in zip(grads["onednn"], grads["mkl"], strict=True):
        torch.testing.assert_close(a, b, **TOL)


def _trainer(tmp_path: Path, name: str, **trainer: object) -> Trainer:
    tokens = tmp_path / "tokens"
    if not tokens.exists():
        make_tokens(tokens, n_docs=60)
    model = {"d_model": 128, "n_heads": 4, "n_kv_heads": 2, "mlp_hidden": 512}  # > MIN_TIMED_FLOP
    data = json.loads(
        write_config(
            tmp_path / f"{name}.json", tokens, model=model, trainer={"max_steps": 1, **trainer}
        ).read_text()
    )
    config = from_dict(TrainConfig, data)
    return pretraining(config, tmp_path / name, distributed.init(config.distributed, "cpu"), "never")


def test_trainer_records_its_choice_and_forcing_works(tmp_path: Path, fresh_choices: Path) -> None:
    auto = _trainer(tmp_path, "auto")
    m = auto.model
    assert auto.run_spec.config.trainer.onednn_linear == "auto" and m.linear_choice.how == "measured"
    head = distributed.unwrap(m.state_module).lm_head
    assert m.onednn == (m.linear_choice.backend == "onednn") == isinstance(head, onednn.OneDNNLinear)
    auto.run()
    recorded = json.loads((tmp_path / "auto" / "manifest.json").read_text())["metrics"]["linear_backend"]
    assert recorded == m.linear_choice.as_dict()
    for forced, backend in ((True, "onednn"), (False, "mkl")):
        t = _trainer(tmp_path, f"forced-{backend}", onednn_linear=forced).model
        assert t.linear_choice.backend == backend and t.linear_choice.how == "forced"
        assert t.onednn == forced
