"""Tracing outputs to the training data from `glasslm chat` (/trace) and `glasslm serve` ("trace": true).

The fixture is a small run directory: a tokens artifact of a few sentences, a 2-layer model trained on
them until greedy decoding reproduces them (a few seconds), a training-run record and a trace index.
Prompting with a training document's prefix (or the chat cue it was trained on) makes the reply
training text, so every test below fails if tracing finds nothing or finds it in the wrong place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_generate import SENTENCES, build_tiny_model
from test_serve import ServerThread, serve_cli

from glasslm import artifacts
from glasslm.cli import main
from glasslm.model.checkpoint import load_model, save_checkpoint
from glasslm.model.generate import Engine, SamplingParams
from glasslm.model.loss import lm_loss
from glasslm.serve.app import create_app
from glasslm.serve.chat import ChatSession, run_chat
from glasslm.serve.tracing import Tracer
from glasslm.tokenizer import Tokenizer
from glasslm.trace.index import find_index

MODEL = "traced"
CUE = "What does the fox do?"  # chat turn the model learns to answer with SENTENCES[0]
FOX = "The quick brown fox jumps over the lazy dog"
PROMPT = "Open data, open code,"  # prefix of SENTENCES[2]
CONTINUATION = " open weights: every artifact has a manifest."
STEPS = 40
DOC_IDS = [f"doc-{i}" for i in range(len(SENTENCES))]


def _tokens_artifact(run: Path, tok_file: Path) -> Path:
    """The sentences as a tokens artifact (two parts, EOS after each document), as the tokenize verb lays it out."""
    with artifacts.create_artifact(run / "tokenizer", "tokenizer") as art:
        shutil.copyfile(tok_file, art.path / "tokenizer.json")
    tok = Tokenizer.from_file(tok_file)
    with artifacts.create_artifact(run / "tokens", "tokens", inputs=[run / "tokenizer"]) as art:
        (art.path / "train").mkdir()
        rows: dict[str, list] = {"doc_id": [], "source": [], "part": [], "start": [], "end": []}
        for part in range(2):
            ids: list[int] = []
            for i in range(part, len(SENTENCES), 2):
                start = len(ids)
                ids += tok.encode(SENTENCES[i]) + [tok.eos_id]
                rows["doc_id"].append(DOC_IDS[i])
                rows["source"].append("web" if i % 2 else "books")
                rows["part"].append(part)
                rows["start"].append(start)
                rows["end"].append(len(ids))
            np.save(art.path / "train" / f"part-{part:05d}.npy", np.array(ids, dtype=np.uint16))
        pq.write_table(pa.table(rows), art.path / "train" / "index.parquet")
        art.metrics.update(vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    return run / "tokens"


def _train_to_memorise(ckpt: Path) -> torch.nn.Module:
    """Full-batch AdamW on the sentences and one chat turn until greedy decoding reproduces them."""
    tok = Tokenizer.from_file(ckpt)
    model = load_model(ckpt).model
    eos = tok.eos_id
    seqs = [
        tok.encode_chat([{"role": "user", "content": CUE}], add_generation_prompt=True)
        + tok.encode(SENTENCES[0])
        + [eos]
    ]
    seqs += [tok.encode(s) + [eos] for s in SENTENCES]
    width = max(map(len, seqs))
    x = torch.full((len(seqs), width), eos)
    y = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        y[i, : len(s) - 1] = torch.tensor(s[1:])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(STEPS):
        ce, _ = lm_loss(model(x), y)
        opt.zero_grad()
        ce.backward()
        opt.step()
    assert ce.item() < 0.05, f"the fixture model did not learn its sentences (loss {ce.item():.3f})"
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/demo with tokens/, train/ (a training-run record with the checkpoint as latest) and trace_index/."""
    root = tmp_path_factory.mktemp("trace_serve")
    base = build_tiny_model(root / "base")
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    tokens = _tokens_artifact(run, base / "tokenizer.json")
    model = _train_to_memorise(base)
    with artifacts.create_artifact(run / "train", "train_run", inputs=[tokens]) as art:
        config = {
            "data": {"tokens": str(tokens), "loader": {"seq_len": 8, "global_batch_size": 2, "seed": 3}}
        }
        (art.path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        art.metrics["steps"] = STEPS
    save_checkpoint(
        model,
        run / "train" / "checkpoints" / f"step{STEPS:06d}",
        tokenizer=base / "tokenizer.json",
        inputs=[tokens],
    )
    (run / "train" / "latest").write_text(f"checkpoints/step{STEPS:06d}")
    assert main(["trace", "index", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def untraced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with no trace index anywhere near it."""
    return build_tiny_model(tmp_path_factory.mktemp("untraced"))


def _engine(model: Path) -> Engine:
    loaded = load_model(model)
    return Engine(loaded.model, Tokenizer.from_file(loaded.tokenizer_path), max_batch=2, max_len=256)


def _check_span(text: str, trace: dict, expected: str, doc_id: str) -> dict:
    """The span of ``text`` holding ``expected``: offsets into ``text``, the document it came from, steps."""
    spans = [s for s in trace["spans"] if expected in s["text"]]
    assert spans, f"no span of {text!r} contains {expected!r}: {trace}"
    span = spans[0]
    assert text[span["start"] : span["end"]] == span["text"]
    assert span["length"] >= 6 and span["count"] >= 1
    assert doc_id in [d["doc_id"] for d in span["docs"]]
    doc = next(d for d in span["docs"] if d["doc_id"] == doc_id)
    assert "[[" in doc["snippet"] and expected.strip() in doc["snippet"]
    assert doc["steps"] and all(1 <= s <= STEPS for s in doc["steps"])  # the run's data order
    return span


# -- the tracer and /trace ----------------------------------------------------------------------------
def test_tracer_gives_character_offsets(run: Path) -> None:
    tracer = Tracer(find_index(run))
    try:
        text = f"Well: {FOX}. And then zebras."
        trace = tracer.trace(text, min_len=6)
        span = _check_span(text, trace, FOX, DOC_IDS[0])
        assert span["start"] >= len("Well:") and span["end"] <= len(text) - len(" And then zebras.")
        assert trace["covered_chars"] == sum(s["end"] - s["start"] for s in trace["spans"])
        assert tracer.trace("zebras and giraffes", min_len=6)["spans"] == []
        assert tracer.trace(text, min_len=40)["spans"] == []  # longer than any document
    finally:
        tracer.close()


def test_chat_trace_command_without_index_and_before_a_reply(untraced: Path) -> None:
    import io

    session = ChatSession(_engine(untraced), SamplingParams(max_new_tokens=4, ignore_eos=True))
    out = io.StringIO()
    assert run_chat(session, io.StringIO("/trace\nHello\n/trace\n/exit\n"), out) == 0
    text = out.getvalue()
    assert "/trace" in text.splitlines()[0]  # the help line names the command
    assert text.count("tracing is off") == 2 and "glasslm trace index RUN" in text


def test_chat_trace_through_stdin_finds_the_index_in_the_run(run: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "glasslm", "chat", str(run), "--temperature", "0", "--max-new-tokens", "24"],
        input=f"/trace\n{CUE}\n/trace\n/trace 3\n/trace x\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"tracing against {run / 'trace_index'}" in proc.stderr
    assert "nothing to trace yet" in out
    assert f"assistant> {FOX}." in out
    traces = [line for line in out.splitlines() if line.startswith("trace: ")]
    assert len(traces) == 2 and "1 span(s) of >= 6 tokens" in traces[0] and ">= 3 tokens" in traces[1]
    assert f"{FOX}." in out.split(traces[0])[1]  # the span's text, after the summary line
    assert f"{DOC_IDS[0]} (books; steps " in out and "[[" in out
    assert "usage: /trace [MIN_LEN]" in out


# -- the server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[ServerThread]:
    tracer = Tracer(find_index(run))
    srv = ServerThread(create_app(_engine(run), MODEL, tracer=tracer))
    yield srv
    srv.stop()
    tracer.close()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completion_trace_with_the_openai_client(client: openai.OpenAI, run: Path) -> None:
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, extra_body={"trace": True}
    )
    text = out.choices[0].text
    assert text.startswith(CONTINUATION)
    trace = out.model_extra["trace"]
    assert trace["index"] == str(run / "trace_index") and trace["min_len"] == 6 and trace["steps_available"]
    (choice,) = trace["choices"]
    assert choice["index"] == 0
    _check_span(text, choice, CONTINUATION.strip(), DOC_IDS[2])
    # Without "trace" the response is plain OpenAI.
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0)
    assert plain.choices[0].text == text and "trace" not in (plain.model_extra or {})


def test_trace_options_min_len_and_max_docs(server: ServerThread) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 20, "temperature": 0, "n": 2}
    long = httpx.post(
        server.url + "/v1/completions", json={**body, "trace": {"min_len": 50}}, timeout=60
    ).json()
    assert [c["spans"] for c in long["trace"]["choices"]] == [[], []] and long["trace"]["min_len"] == 50
    short = httpx.post(
        server.url + "/v1/completions", json={**body, "trace": {"min_len": 2, "max_docs": 1}}, timeout=60
    ).json()
    assert len(short["trace"]["choices"]) == 2
    assert all(c["spans"] and all(len(s["docs"]) == 1 for s in c["spans"]) for c in short["trace"]["choices"])
    bad = httpx.post(server.url + "/v1/completions", json={**body, "trace": {"min_length": 3}}, timeout=60)
    assert bad.status_code == 400 and "min_length" in bad.json()["error"]["message"]


def test_chat_trace_streaming_and_not(client: openai.OpenAI, server: ServerThread) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": CUE}], max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs, extra_body={"trace": True})
    text = whole.choices[0].message.content
    assert text.startswith(FOX)
    _check_span(text, whole.model_extra["trace"]["choices"][0], FOX, DOC_IDS[0])
    # The official client streaming: the trace rides on a last chunk with no choices.
    chunks = list(client.chat.completions.create(**kwargs, stream=True, extra_body={"trace": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].model_extra["trace"] == {
        **whole.model_extra["trace"],
        "elapsed_ms": chunks[-1].model_extra["trace"]["elapsed_ms"],
    }
    # Raw SSE: the trace chunk comes after the usage chunk, right before [DONE].
    body = {**kwargs, "stream": True, "stream_options": {"include_usage": True}, "trace": {"min_len": 6}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    usage, last = json.loads(events[-3][6:]), json.loads(events[-2][6:])
    assert "usage" in usage and "trace" not in usage
    assert last["object"] == "chat.completion.chunk" and last["choices"] == []
    _check_span(text, last["trace"]["choices"][0], FOX, DOC_IDS[0])


def test_trace_without_index_is_400(untraced: Path) -> None:
    srv = ServerThread(create_app(_engine(untraced), MODEL))
    try:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "trace": True}
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "trace_unavailable" and error["param"] == "trace"
        assert "glasslm trace index" in error["message"] and "--trace" in error["message"]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="trace index"):
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x"}],
                max_tokens=2,
                stream=True,
                extra_body={"trace": True},
            )
        # "trace": false is the same as leaving it out.
        assert (
            httpx.post(srv.url + "/v1/completions", json={**body, "trace": False}, timeout=60).status_code
            == 200
        )
    finally:
        srv.stop()


def test_serve_cli_traces_with_the_runs_index(run: Path) -> None:
    with serve_cli(run, "--model-name", MODEL, "--max-len", "256", "--trace-min-len", "5") as (port, output):
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 20, "temperature": 0, "trace": True}
        out = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).json()
        assert out["trace"]["min_len"] == 5
        _check_span(out["choices"][0]["text"], out["trace"]["choices"][0], CONTINUATION.strip(), DOC_IDS[2])
    assert f"tracing against {run / 'trace_index'}" in output[0]


def test_explicit_trace_path_without_index_is_a_clear_error(
    untraced: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["chat", str(untraced), "--trace", str(untraced)]) == 2
    err = capsys.readouterr().err
    assert "no trace index" in err and "glasslm trace index" in err
