"""Exact interop with Hugging Face transformers' Olmo2ForCausalLM (no downloads: random small models)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glasslm import artifacts
from glasslm.cli import main
from glasslm.model.checkpoint import load_model, save_checkpoint
from glasslm.model.kv_cache import StaticKVCache
from glasslm.model.olmo2 import ModelConfig, OLMo2

transformers = pytest.importorskip("transformers")

SMALL = ModelConfig(
    vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=160, max_seq_len=128
)


def _hf_model(config: ModelConfig, tie: bool = False) -> torch.nn.Module:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    hf_cfg = Olmo2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a mixed-up norm cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def _ids(batch: int = 2, seq: int = 24, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tie", [False, True])
def test_hf_to_glasslm_logits_match(tmp_path: Path, tie: bool) -> None:
    hf = _hf_model(SMALL, tie=tie)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    ours = load_model(tmp_path / "ours").model
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert (got - expected).abs().max().item() < 1e-4


def test_kv_cache_matches_hf_incremental_decoding(tmp_path: Path) -> None:
    hf = _hf_model(SMALL)
    hf.save_pretrained(tmp_path / "hf")
    main(["convert", "from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
    ours = load_model(tmp_path / "ours").model
    ids = _ids(batch=2, seq=20)
    prompt, rest = ids[:, :12], ids[:, 12:]
    # transformers 5.x renamed ``past_key_values`` (argument and output) to ``cache``; 4.x knows only the old name.
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = hf(prompt, use_cache=True)
        past, hf_steps = getattr(out, name), [out.logits]
        for t in range(rest.shape[1]):
            out = hf(rest[:, t : t + 1], use_cache=True, **{name: past})
            past = getattr(out, name)
            hf_steps.append(out.logits)
        cache = StaticKVCache(ours.config, batch=2, max_len=64, device="cpu", dtype=torch.float32)
        our_steps = [ours(prompt, cache=cache)]
        # two tokens at once, then one at a time: both cached code paths
        our_steps.append(ours(rest[:, :2], cache=cache))
        for t in range(2, rest.shape[1]):
            our_steps.append(ours(rest[:, t : t + 1], cache=cache))
        full = ours(ids)
    hf_all = torch.cat(hf_steps, dim=1)
    ours_all = torch.cat(our_steps, dim=1)
    assert (ours_all - hf_all).abs().max().item() < 1e-4
    assert (ours_all - full).abs().max().item() < 1e-4


def test_glasslm_to_hf_logits_match(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = OLMo2(SMALL)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_norm.weight.uniform_(0.5, 1.5)
            block.mlp_norm.weight.uniform_(0.5, 1.5)
    save_checkpoint(model, tmp_path / "ckpt")
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    ids = _ids()
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)).abs().max().item() < 1e-4
        # and with transformers' own KV cache, through generate
        greedy_hf = hf.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    cache = StaticKVCache(SMALL, 1, 32, "cpu", torch.float32)
    seq = ids[:1, :8]
    with torch.no_grad():
        logits = model(seq, cache=cache)
        for _ in range(6):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(nxt, cache=cache)
    assert torch.equal(seq, greedy_hf)


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = OLMo2(SMALL).to(torch.bfloat16)
    save_checkpoint(model, tmp_path / "a")
    main(["convert", "to-hf", str(tmp_path / "a"), "--out", str(tmp_path / "hf")])
    main(["convert", "from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b")])
    main(["convert", "to-hf", str(tmp_path / "b"), "--out", str(tmp_path / "hf2")])
    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]), k
    h1, h2 = (
        load_file(str(tmp_path / "hf/model.safetensors")),
        load_file(str(tmp_path / "hf2/model.safetensors")),
    )
    assert all(torch.equal(h1[k], h2[k]) for k in h1)
    assert json.loads((tmp_path / "hf/config.json").read_text())["torch_dtype"] == "bfloat16"


def _hf_llama(config: ModelConfig, tie: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
    )  # rope θ left at Llama's default (10,000): the converter must fill in that default, not OLMo-2's
    torch.manual_seed(5)
    model = LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_llama_folders_convert_both_ways_with_equal_logits(tmp_path: Path, tie: bool) -> None:
    hf = _hf_llama(SMALL, tie)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model  # a Hugging Face folder loads directly, too
    assert ours.config.architecture == "llama" and ours.config.rope_theta == 10_000.0
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        assert (ours(ids) - expected).abs().max().item() < 1e-4
    assert main(["convert", "from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.equal(back(ids).logits, expected)


def test_unsupported_hf_configs_name_the_reason(tmp_path: Path) -> None:
    from glasslm.config import ConfigError
    from glasslm.model.hf import model_config_from_hf

    base = {
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    for extra, words in [
        ({"model_type": "gpt2"}, "model_type"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ]:
        with pytest.raises(ConfigError, match=words):
            model_config_from_hf({**base, **extra})


def test_eval_reads_a_hugging_face_llama_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`glasslm eval` on a transformers-written Llama folder (weights + tokenizer.json), no conversion step."""
    import shutil

    from eval_support import arc_rows, build_tokenizer, documents, write_jsonl

    tok = build_tokenizer(tmp_path / "tok" / "tokenizer.json")
    hf = _hf_llama(ModelConfig(**{**SMALL.__dict__, "vocab_size": 512}), tie=True)
    hf.save_pretrained(tmp_path / "hf")
    shutil.copy(tok, tmp_path / "hf" / "tokenizer.json")
    arc, docs = (
        write_jsonl(tmp_path / "arc.jsonl", arc_rows(6)),
        write_jsonl(tmp_path / "docs.jsonl", documents()),
    )
    rc = main(
        [
            "eval",
            str(tmp_path / "hf"),
            "--suite",
            "perplexity,arc_easy",
            "--documents",
            str(docs),
            "--data",
            f"arc_easy={arc}",
            "--shots",
            "0",
            "--out",
            str(tmp_path / "e"),
            "--json",
        ]
    )
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    assert results["tasks"][0]["n"] == 6 and results["perplexity"]["macro"]["bits_per_byte"] > 0
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert artifacts.input_location(tmp_path / "e", manifest["inputs"][0]) == (tmp_path / "hf").resolve()
