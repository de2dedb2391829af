"""The model API after #18: logits = head(hidden); activation checkpointing applied from outside;
one KV-cache protocol; one eval_mode; the model overrides checked against ModelConfig itself."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glasslm.eval.scoring import _PrefixCache
from glasslm.model.generate import SlotCache
from glasslm.model.kv_cache import KVCache, StaticKVCache
from glasslm.model.loss import lm_loss
from glasslm.model.modes import eval_mode
from glasslm.model.olmo2 import ModelConfig, OLMo2
from glasslm.train.config import SPEC_OWN_FIELDS, ModelSpec, overrides_of
from glasslm.train.distributed import CheckpointedBlock, HiddenStates, apply_ac

CONFIG = ModelConfig(
    vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, max_seq_len=64
)


def test_forward_is_the_head_over_hidden() -> None:
    torch.manual_seed(0)
    model = OLMo2(CONFIG)
    x = torch.randint(0, CONFIG.vocab_size, (2, 9))
    assert torch.equal(model(x), model.lm_head(model.hidden(x)))
    assert torch.equal(HiddenStates(model)(x), model.hidden(x))


def test_activation_checkpointing_from_outside_changes_nothing_but_memory() -> None:
    x = torch.randint(0, CONFIG.vocab_size, (2, 12))
    grads = []
    for ac in (False, True):
        torch.manual_seed(0)
        model = OLMo2(CONFIG).train()
        keys = list(model.state_dict())
        if ac:
            assert apply_ac(model) == CONFIG.n_layers
            assert all(type(b) is CheckpointedBlock for b in model.blocks)
            assert list(model.state_dict()) == keys  # same names: checkpoints are unaffected
        ce, _ = lm_loss(model(x[:, :-1]), x[:, 1:])
        ce.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_every_cache_implements_the_protocol() -> None:
    dev, dt = torch.device("cpu"), torch.float32
    prefix = StaticKVCache(CONFIG, 1, 4, dev, dt)
    caches: list[KVCache] = [
        StaticKVCache(CONFIG, 2, 8, dev, dt),
        SlotCache(CONFIG, 2, 8, dev, dt),
        _PrefixCache(prefix.k, prefix.v),
    ]
    for cache in caches:
        assert isinstance(cache.length, int)
        assert callable(cache.update) and callable(cache.advance)
    static = caches[0]
    static.advance(3)
    assert static.length == 3
    slots = SlotCache(CONFIG, 2, 8, dev, dt)
    assert slots.for_prefill(torch.tensor([0, 1])).length == 0  # fresh sequences
    with pytest.raises(ValueError, match="per-slot lengths"):
        _ = slots.for_decode(torch.tensor([3, 5]), 6).length


def test_cached_decoding_matches_the_full_forward() -> None:
    torch.manual_seed(0)
    model = OLMo2(CONFIG).eval()
    x = torch.randint(0, CONFIG.vocab_size, (2, 10))
    cache = StaticKVCache(CONFIG, 2, 16, "cpu", torch.float32)
    with torch.no_grad():
        full = model(x)
        first = model(x[:, :6], cache=cache)
        rest = model(x[:, 6:], cache=cache)
    assert cache.length == 10
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_eval_mode_restores_the_training_mode_even_on_error() -> None:
    model = OLMo2(CONFIG).train()
    with eval_mode(model) as m:
        assert m is model and not model.training
    assert model.training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_model_spec_overrides_are_model_config_fields() -> None:
    own = set(SPEC_OWN_FIELDS)
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)} - own
    assert spec_fields == {f.name for f in dataclasses.fields(ModelConfig)}

    @dataclasses.dataclass
    class Small:
        width: int = 4
        depth: int = 2

    @overrides_of(Small, ())
    @dataclasses.dataclass
    class Good:
        width: int | None = None
        depth: int | None = None

    assert Good().width is None
    with pytest.raises(TypeError, match="differ"):

        @overrides_of(Small, ())
        @dataclasses.dataclass
        class Missing:
            width: int | None = None

    with pytest.raises(TypeError, match="depth"):

        @overrides_of(Small, ())
        @dataclasses.dataclass
        class WrongType:
            width: int | None = None
            depth: float | None = None
