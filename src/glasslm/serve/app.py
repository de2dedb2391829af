"""An OpenAI-compatible HTTP server over the generation engine (FastAPI + uvicorn).

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events ending in ``data: [DONE]``), ``GET /health``, ``GET /metrics``
(Prometheus text). Request and response bodies follow the OpenAI API, so the official ``openai``
client works unchanged; errors use OpenAI's ``{"error": {message, type, param, code}}`` body.
Beyond OpenAI's fields, requests may carry ``top_k``, ``repetition_penalty`` and ``ignore_eos``
(vLLM's names), e.g. through the client's ``extra_body``, and ``trace`` (``true`` or ``{"min_len": N,
"max_docs": M}``): with a trace index (``glasslm serve --trace``) the response then carries a ``trace``
object — the spans of each choice's text found verbatim in the training data (``serve/tracing.py``);
a stream sends it in one last chunk before ``data: [DONE]``.

What the server refuses, before any work: a body over ``ServeLimits.max_body_bytes`` (413, from its
``Content-Length`` or, for a chunked body, as soon as the bytes read pass the limit; the body is never
parsed); without the API key, every path but ``/health`` (401, ``/docs`` and ``/openapi.json`` included);
fields out of range or of the wrong type (400 naming the field); a prompt too long for the
limits or the context (400). Tokenising runs in a worker thread with
the GIL released, so a large allowed prompt does not stall ``/health`` or other streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glasslm.config import did_you_mean
from glasslm.model.generate import Engine, Event, SamplingParams
from glasslm.serve.limits import ServeLimits
from glasslm.serve.scheduler import Handle, QueueFull, Scheduler
from glasslm.serve.tracing import DEFAULT_MAX_DOCS, DEFAULT_MIN_LEN, Tracer
from glasslm.tokenizer import ROLE_TOKENS

log = logging.getLogger("glasslm.serve")
API_KEY_ENV = "GLASSLM_API_KEY"
OPEN_PATHS = frozenset({"/health"})  # answered without the API key
INT64 = 2**63


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


class ClientDisconnected(Exception):
    """The client went away before its response was ready (its requests are aborted)."""


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class APIKeyMiddleware:
    """Bearer-token check on every path but ``/health`` (liveness probes carry no key) before anything
    else, even before the body is read. ``/docs``, ``/openapi.json`` and ``/metrics`` are covered too:
    they describe the deployment, and an unknown path answers 401, not 404, so routes cannot be probed.

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    wraps ``receive`` so that the endpoint no longer sees the client disconnect (tested).
    """

    def __init__(self, app: ASGIApp, api_key: str, server: Server):
        self.app, self.api_key, self.server = app, api_key.encode(), server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = Headers(scope=scope).get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), self.api_key):
                self.server.errors_total += 1
                what = "Missing" if not header else "Incorrect"
                response = error_response(
                    401, f"{what} API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads the request body up to ``limit`` bytes and hands it to the app in one piece; a larger one
    gets 413 as soon as that is known: at once from ``Content-Length`` (nothing of the body is read, and
    a client sending ``Expect: 100-continue`` never uploads it), or, for a chunked body, when the bytes
    read pass the limit. Measured before this check: a 10 MB prompt held ``/health`` for 14 s on 2 cores.
    """

    def __init__(self, app: ASGIApp, limit: int, server: Server):
        self.app, self.limit, self.server = app, limit, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self.refuse(int(declared), scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the whole body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self.refuse(None, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[bytes] | None = [b"".join(chunks)]

        async def replay() -> Message:
            nonlocal body
            if body is not None:  # the body once, then the real channel (the client's disconnect)
                message: Message = {"type": "http.request", "body": body[0], "more_body": False}
                body = None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def refuse(self, declared: int | None, scope: Scope, receive: Receive, send: Send) -> None:
        self.server.errors_total += 1
        size = f"{declared} bytes" if declared is not None else f"more than {self.limit} bytes"
        response = error_response(
            413,
            f"the request body has {size}; this server accepts at most "
            f"{self.limit} (glasslm serve --max-body-bytes)",
            code="request_too_large",
        )
        # Unread body bytes cannot be answered on this connection: close it after the reply.
        response.headers["connection"] = "close"
        await response(scope, receive, send)


# -- request bodies ----------------------------------------------------------------------------------
class TraceOptions(BaseModel):
    # a misspelt option is an error, not a silent default; strict as every other field ("3" is not 3)
    model_config = ConfigDict(extra="forbid", strict=True)

    min_len: int | None = Field(default=None, ge=1)
    max_docs: int = Field(default=DEFAULT_MAX_DOCS, ge=1, le=100)


class StreamOptions(BaseModel):
    model_config = ConfigDict(
        extra="ignore", strict=True
    )  # OpenAI's others (include_obfuscation) are moot here

    include_usage: bool = False


class _Sampling(BaseModel):
    # Unknown OpenAI fields are accepted and ignored, as vLLM does; floats must be finite (Python's JSON
    # reader accepts NaN and Infinity) and seeds fit torch's int64 generator seed, or the field gets a 400.
    # Strict types, as OpenAI's API: "max_tokens": "5" is a 400, not quietly 5 (an int still fills a float).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    model: str
    max_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)  # OpenAI's bound; the server's max_choices applies too
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # vLLM-style extensions
    top_k: int = Field(default=0, ge=0, lt=INT64)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    ignore_eos: bool = False
    # glasslm extension: trace the output back to the training data
    trace: bool | TraceOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        """``"temperature": null`` means the default, as in OpenAI's API (clients other than the Python SDK
        send nulls); a required field that is null stays an error."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            k: v for k, v in data.items() if not (v is None and k in fields and not fields[k].is_required())
        }


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=INT64)
    logprobs: bool | None = None


# -- the app -------------------------------------------------------------------------------------------
class Server:
    """Turns OpenAI requests into engine requests and engine events into OpenAI responses."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        limits: ServeLimits,
        tracer: Tracer | None = None,
        trace_min_len: int = DEFAULT_MIN_LEN,
    ):
        self.tracer, self.trace_min_len = tracer, trace_min_len
        if engine.tokenizer is None:
            raise ValueError("the server needs an engine with a tokenizer")
        self.engine, self.tokenizer, self.model_name, self.limits = (
            engine,
            engine.tokenizer,
            model_name,
            limits,
        )
        self.scheduler = Scheduler(engine, max_queue=limits.max_queue)
        self.created = int(time.time())
        self.requests_total = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.errors_total = 0
        hf = getattr(self.tokenizer, "hf", None)
        # In our tokenizers the role markers are special tokens: an assistant turn must not run into the
        # next role's marker, so they stop a chat reply like EOS does.
        role_ids = [hf.token_to_id(t) for t in ROLE_TOKENS] if hf is not None else []
        self.chat_stop_ids = [i for i in role_ids if i is not None]

    # ---- validation shared by both endpoints
    def check_request(self, req: _Sampling) -> None:
        """What every generation request must satisfy beyond its schema, before any work."""
        bad = _unpaired_surrogate(req, "")
        if bad is not None:
            raise APIError(400, f"{bad}: contains an unpaired UTF-16 surrogate, which is not text", param=bad)
        self.check_model(req.model)
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.model_name}' "
                "(see GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    def sampling(
        self, req: _Sampling, max_tokens: int | None, default_max: int, stop_ids: list[int]
    ) -> SamplingParams:
        if req.presence_penalty or req.frequency_penalty:
            raise APIError(
                400,
                "presence_penalty and frequency_penalty are not supported; use repetition_penalty",
                param="presence_penalty",
            )
        n_max = max_tokens if max_tokens is not None else min(default_max, self.limits.max_new_tokens)
        if n_max > self.limits.max_new_tokens:
            raise APIError(
                400,
                f"max_tokens is {n_max}; this server allows at most {self.limits.max_new_tokens}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop: give up to 4 non-empty strings", param="stop")
        return SamplingParams(
            max_new_tokens=n_max,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
            stop=stop,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            stop_token_ids=stop_ids,
        )

    def trace_options(self, req: _Sampling) -> TraceOptions | None:
        """The request's tracing options; 400 before any generation if it asks for tracing and there is no index."""
        if req.trace is None or req.trace is False:
            return None
        if self.tracer is None:
            raise APIError(
                400,
                "this server has no trace index, so 'trace' cannot be answered; restart it with "
                "one: glasslm trace index RUN, then glasslm serve MODEL --trace RUN",
                param="trace",
                code="trace_unavailable",
            )
        options = TraceOptions() if req.trace is True else req.trace
        return (
            options
            if options.min_len is not None
            else options.model_copy(update={"min_len": self.trace_min_len})
        )

    async def trace(self, texts: list[str], options: TraceOptions) -> dict[str, Any]:
        """The ``trace`` object of a response: per choice, its spans found verbatim in the training data."""
        assert self.tracer is not None and options.min_len is not None
        tracer, min_len, max_docs = self.tracer, options.min_len, options.max_docs
        started = time.monotonic()

        def run() -> list[dict[str, Any]]:  # CPU-bound binary searches: off the event loop
            return [
                {"index": i, **tracer.trace(text, min_len=min_len, max_docs=max_docs)}
                for i, text in enumerate(texts)
            ]

        choices = await asyncio.to_thread(run)
        return {
            **tracer.describe(),
            "min_len": min_len,
            "max_docs": max_docs,
            "choices": choices,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def check_prompt(self, ids: list[int]) -> None:
        limit = min(self.limits.max_prompt_tokens, self.engine.max_len - 1)
        if len(ids) > limit:
            raise APIError(  # 400 as OpenAI and vLLM answer (the openai client raises BadRequestError)
                400,
                f"the prompt has {len(ids)} tokens; this server accepts at most {limit}",
                param="prompt",
                code="context_length_exceeded",
            )
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        vocab = self.engine.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")

    def check_room(self, prompts: list[list[int]], max_tokens: int | None) -> None:
        """A ``max_tokens`` the context cannot hold after the prompt is a 400, as in vLLM (the reply would
        be cut short, ``finish_reason: length``, without saying why); without one, generation runs to
        the end of the context."""
        longest = max(len(ids) for ids in prompts)
        if max_tokens is not None and longest + max_tokens > self.engine.max_len:
            raise APIError(
                400,
                f"this model's context is {self.engine.max_len} tokens; the prompt has {longest} and "
                f"max_tokens asks for {max_tokens} more ({longest + max_tokens}). Shorten one of them",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def submit_all(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[Handle]:
        if len(prompts) * n > self.limits.max_choices:
            raise APIError(
                400, f"{len(prompts)} prompts × n={n} choices; at most {self.limits.max_choices}", param="n"
            )
        handles: list[Handle] = []
        try:
            for ids in prompts:
                for j in range(n):
                    seed = choice_seed(params.seed, j) if params.seed is not None else None
                    p = SamplingParams(**{**params.__dict__, "seed": seed})
                    handle = self.scheduler.submit(ids, p)
                    handle.choice = j
                    handles.append(handle)
        except QueueFull as e:
            for h in handles:
                self.scheduler.abort(h)
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from e
        except ValueError as e:
            for h in handles:
                self.scheduler.abort(h)
            raise APIError(400, str(e)) from e
        return handles

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt, checked. Called in a worker thread: ``encode_batch`` releases the GIL."""
        p: Any = req.prompt  # pydantic has checked it is one of the four shapes
        if isinstance(p, str):
            prompts = self.tokenizer.encode_batch([p])
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        elif p and all(isinstance(x, list) for x in p):
            prompts = [list(x) for x in p]
        elif p and all(isinstance(x, str) for x in p):
            prompts = self.tokenizer.encode_batch(p)
        else:
            raise APIError(400, "prompt must be a string, a list of strings, or token ids", param="prompt")
        for ids in prompts:
            self.check_prompt(ids)
        return prompts

    def chat_prompt(self, req: ChatRequest) -> list[int]:
        """The conversation's ids in the chat template (contents as plain text), checked; a worker thread's job."""
        messages = []
        for i, m in enumerate(req.messages):
            content = m.content
            if content is None and m.role != "assistant":  # OpenAI: only an assistant turn may omit it
                raise APIError(400, f"messages[{i}]: a {m.role} message needs 'content'", param="messages")
            if isinstance(content, list):  # content parts: only text is understood
                for j, part in enumerate(content):
                    where = f"messages[{i}].content[{j}]"
                    if part.get("type") != "text":
                        raise APIError(400, f"{where}: only text content parts are supported", param=where)
                    if not isinstance(part.get("text"), str):
                        raise APIError(400, f"{where}: a text part needs 'text', a string", param=where)
                content = "".join(part["text"] for part in content)
            role = "system" if m.role == "developer" else m.role
            messages.append({"role": role, "content": content or ""})
        ids = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        self.check_prompt(ids)
        return ids

    # ---- metrics and logs
    def record(
        self,
        rid: str,
        handles: list[Handle],
        out_tokens: int,
        started: float,
        first: float | None,
        reasons: list[str | None],
    ) -> None:
        prompt_tokens = _prompt_tokens(handles)
        self.requests_total += 1
        self.tokens_in += prompt_tokens
        self.tokens_out += out_tokens
        ttft = f"{(first - started) * 1000:.0f}ms" if first is not None else "-"
        log.info(
            "request %s: %d prompt tokens, %d completion tokens, %.0f ms (first token %s), finish %s",
            rid,
            prompt_tokens,
            out_tokens,
            (time.monotonic() - started) * 1000,
            ttft,
            ",".join(map(str, reasons)),
        )

    def metrics_text(self) -> str:
        sizes = self.scheduler.batch_sizes
        lines = [
            ("glasslm_requests_total", self.requests_total),
            ("glasslm_request_errors_total", self.errors_total),
            ("glasslm_prompt_tokens_total", self.tokens_in),
            ("glasslm_completion_tokens_total", self.tokens_out),
            ("glasslm_requests_running", self.scheduler.running),
            ("glasslm_requests_waiting", self.scheduler.waiting),
            ("glasslm_requests_aborted_total", self.scheduler.aborted),
            ("glasslm_engine_steps_total", self.scheduler.steps),
            ("glasslm_batch_size_max_recent", max(sizes, default=0)),
        ]
        return "".join(f"{k} {v}\n" for k, v in lines)


async def _gather(
    handles: list[Handle],
    request: Request,
    scheduler: Scheduler,
    received: list[list[Event]],
    first_token: list[float],
) -> list[tuple[str, list[Event]]]:
    """Wait for every handle to finish, aborting all of them if the client goes away; ``received``
    (one list per handle) holds the events that came, also when it did, and ``first_token`` the time
    the first came (for the request log)."""

    async def collect(h: Handle, into: list[Event]) -> list[Event]:
        async for e in h.events():
            if not first_token:
                first_token.append(time.monotonic())
            into.append(e)
        return into

    tasks = [asyncio.ensure_future(collect(h, into)) for h, into in zip(handles, received, strict=True)]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.25)
            if await request.is_disconnected():
                raise ClientDisconnected(request.url.path)
        results = [t.result() for t in tasks]
    finally:
        for h, t in zip(handles, tasks, strict=True):
            if not t.done():
                scheduler.abort(h)
                t.cancel()
    return [("".join(e.text for e in evs), evs) for evs in results]


def _generated(received: list[list[Event]]) -> int:
    """Completion tokens generated so far (an event carries its request's running count)."""
    return sum(events[-1].completion_tokens for events in received if events)


def _reasons(received: list[list[Event]]) -> list[str | None]:
    """Each request's finish reason, ``abort`` (vLLM's word) for one stopped before it finished."""
    return [events[-1].finish_reason if events and events[-1].finished else "abort" for events in received]


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a seeded request: the request's own for the first (so ``n: 1``
    is the plain seed), a hash of (seed, choice) for the others — ``seed + choice`` made choice 1 of
    seed 1 the same text as choice 0 of seed 2."""
    if choice == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{choice}".encode()).digest()[:8], "big") >> 1


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _merge(handles: list[Handle]) -> AsyncIterator[tuple[int, Event]]:
    """Events of several handles as they come, tagged with the handle's index."""
    queue: asyncio.Queue[tuple[int, Event] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, h: Handle) -> None:
        try:
            async for e in h.events():
                await queue.put((i, e))
        except Exception as e:  # the engine failed: surface it in the stream
            await queue.put(e)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


# ---- endpoints: one router; each handler gets the Server (engine, limits, tokenizer) as a dependency
router = APIRouter()


def _server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


ServerDep = Annotated[Server, Depends(_server)]


@router.get("/health")
async def health(server: ServerDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": server.model_name,
        "running": server.scheduler.running,
        "waiting": server.scheduler.waiting,
    }


@router.get("/metrics")
async def metrics(server: ServerDep) -> PlainTextResponse:
    return PlainTextResponse(server.metrics_text())


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "glasslm"}


@router.get("/v1/models")
async def models(server: ServerDep) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(server)]}


@router.get("/v1/models/{name:path}")
async def model(name: str, server: ServerDep) -> dict[str, Any]:
    server.check_model(name)
    return _model_card(server)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, server: ServerDep) -> Any:
    server.check_request(body)
    if body.echo or body.logprobs is not None:  # logprobs 0 still asks for the chosen tokens' logprobs
        raise APIError(400, "echo and logprobs are not supported", param="echo" if body.echo else "logprobs")
    trace = server.trace_options(body)
    prompts = await asyncio.to_thread(server.completion_prompts, body)  # off the event loop
    params = server.sampling(body, body.max_tokens, 16, [])  # OpenAI's default max_tokens is 16
    server.check_room(prompts, body.max_tokens)
    handles = server.submit_all(prompts, body.n, params)
    rid, created, started = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
    head = {"id": rid, "object": "text_completion", "created": created, "model": server.model_name}
    if body.stream:
        return _stream(
            server,
            handles,
            request,
            rid,
            started,
            include_usage=_usage_wanted(body),
            trace=trace,
            chunk=lambda i, delta, reason: {
                **head,
                "choices": [{"index": i, "text": delta, "logprobs": None, "finish_reason": reason}],
            },
        )
    return await _respond(server, handles, request, rid, started, trace, head, lambda text: {"text": text})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, server: ServerDep) -> Any:
    server.check_request(body)
    if body.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    trace = server.trace_options(body)
    prompt = await asyncio.to_thread(server.chat_prompt, body)  # off the event loop
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = server.sampling(body, max_tokens, server.limits.max_new_tokens, server.chat_stop_ids)
    server.check_room([prompt], max_tokens)
    handles = server.submit_all([prompt], body.n, params)
    rid, created, started = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
    if not body.stream:
        head = {"id": rid, "object": "chat.completion", "created": created, "model": server.model_name}
        return await _respond(
            server,
            handles,
            request,
            rid,
            started,
            trace,
            head,
            lambda text: {"message": {"role": "assistant", "content": text}},
        )
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": server.model_name}

    def chunk(i: int, delta: str | None, reason: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {} if delta is None else {"content": delta}
        return {**head, "choices": [{"index": i, "delta": d, "logprobs": None, "finish_reason": reason}]}

    first = [
        {
            **head,
            "choices": [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        for i in range(len(handles))
    ]
    return _stream(
        server,
        handles,
        request,
        rid,
        started,
        include_usage=_usage_wanted(body),
        chunk=chunk,
        first=first,
        chat=True,
        trace=trace,
    )


# ---- errors: every one in OpenAI's body, counted in /metrics
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    _server(request).errors_total += 1
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    _server(request).errors_total += 1
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    # 400 as OpenAI and vLLM answer (the openai client raises BadRequestError), not FastAPI's 422.
    problems = field_errors(errors)
    if problems and problems[0][0] == "":  # the body itself: empty, or JSON that is not an object
        return error_response(400, "the request body must be a JSON object", code="invalid_value")
    where = problems[0][0] if problems else ""
    message = "; ".join(f"{field}: {msg}" for field, msg in problems[:5])
    return error_response(400, f"invalid request: {message}", param=where or None, code="invalid_value")


# What a field that takes several shapes accepts, said once instead of one error per shape.
UNION_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "trace": 'true, false or an object {"min_len": N, "max_docs": M}',
    "content": "a string, a list of content parts or null",
}
_UNION_TAG = re.compile(r"(bool|str|int|float|none|list\[.*\]|dict\[.*\]|[A-Z]\w*)")


def field_errors(errors: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """pydantic's errors as (field, message) in the request's own terms. pydantic reports a value that
    fits no member of a union once per member, under the member's name (``trace.bool``,
    ``prompt.list[int]``): a field none of whose shapes fit gets one message listing the shapes; an
    object that fits a model member's shape but not its fields gets that member's errors, without the
    member's name (``trace.min_len``). Our field names are snake_case, so a loc part that is a type
    name is a union member."""
    problems: dict[str, str | None] = {}  # None: a union field none of whose shapes fit (said below)
    entered: set[str] = set()  # union fields whose value went into a model member
    for error in errors:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        message = str(error.get("msg"))
        if error.get("type") == "extra_forbidden":  # only the trace options forbid unknown keys
            message = f"unknown option{did_you_mean(str(loc[-1]), TraceOptions.model_fields)}"
        tag = next((i for i, p in enumerate(loc) if isinstance(p, str) and _UNION_TAG.fullmatch(p)), None)
        if tag is None:
            problems.setdefault(_field_name(loc), message)
        elif str(loc[tag])[0].isupper() and loc[tag + 1 :]:
            entered.add(_field_name(loc[:tag]))
            problems.setdefault(_field_name(loc[:tag] + loc[tag + 1 :]), message)
        else:
            problems.setdefault(_field_name(loc[:tag]), None)
    answer: list[tuple[str, str]] = []
    for field, text in problems.items():
        if text is not None:
            answer.append((field, text))
        elif field not in entered:
            shapes = UNION_SHAPES.get(field.rsplit(".", 1)[-1].split("[")[0], "of another type")
            answer.append((field, f"must be {shapes}"))
    return answer


def _field_name(loc: Sequence[Any]) -> str:
    """``messages[0].content`` for pydantic's ``("messages", 0, "content")``."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    _server(request).errors_total += 1
    log.exception("request to %s failed", request.url.path, exc_info=exc)
    return error_response(500, f"internal error: {exc}", type="server_error")


async def _client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
    # one log line, not an ASGI traceback: nobody reads the answer (499, as nginx logs it)
    log.info("request to %s: the client disconnected; its generation was aborted", request.url.path)
    return Response(status_code=499)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    _server(request).errors_total += 1
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI's words for non-UTF-8
        response = error_response(
            400, "the request body is not valid JSON (or not UTF-8)", code="invalid_json"
        )
    else:
        response = error_response(exc.status_code, str(exc.detail), code=None)
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    APIError: _api_error,
    ClientDisconnected: _client_disconnected,
    RequestValidationError: _validation_error,
    Exception: _server_error,
    StarletteHTTPException: _http_error,
}


def create_app(
    engine: Engine,
    model_name: str,
    *,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    tracer: Tracer | None = None,
    trace_min_len: int = DEFAULT_MIN_LEN,
) -> FastAPI:
    """The ASGI app. ``api_key`` (or ``$GLASSLM_API_KEY``) turns on bearer-token auth for every path but
    ``/health``;
    ``tracer`` lets requests ask for ``"trace"`` (spans shorter than ``trace_min_len`` tokens unless
    the request says otherwise)."""
    server = Server(engine, model_name, limits or ServeLimits(), tracer=tracer, trace_min_len=trace_min_len)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.stop()

    app = FastAPI(title="glasslm", lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.server = server
    # Middleware, not a dependency: the key guards /docs and /openapi.json too, and both checks run
    # before a byte of the body is read. The last added runs first: the key before the body limit.
    app.add_middleware(BodyLimitMiddleware, limit=server.limits.max_body_bytes, server=server)
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key, server=server)
    app.include_router(router)
    return app


async def _respond(
    server: Server,
    handles: list[Handle],
    request: Request,
    rid: str,
    started: float,
    trace: TraceOptions | None,
    head: dict[str, Any],
    content: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """The non-streaming body shared by both endpoints: ``head`` + one choice per handle (its ``content``
    under the endpoint's key), usage, and the trace when asked for; the request is logged."""
    received: list[list[Event]] = [[] for _ in handles]
    first_token: list[float] = []
    try:
        results = await _gather(handles, request, server.scheduler, received, first_token)
    except ClientDisconnected:  # logged and counted with what was generated before the abort
        first = first_token[0] if first_token else None
        server.record(rid, handles, _generated(received), started, first, _reasons(received))
        raise
    choices = [
        {"index": i, **content(text), "logprobs": None, "finish_reason": evs[-1].finish_reason}
        for i, (text, evs) in enumerate(results)
    ]
    out_tokens = sum(evs[-1].completion_tokens for _, evs in results)
    first = first_token[0] if first_token else None
    server.record(rid, handles, out_tokens, started, first, [evs[-1].finish_reason for _, evs in results])
    response = {**head, "choices": choices, "usage": _usage(handles, out_tokens)}
    if trace is not None:
        response["trace"] = await server.trace([text for text, _ in results], trace)
    return response


def _usage_wanted(body: _Sampling) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _unpaired_surrogate(value: Any, where: str) -> str | None:
    """The field holding a string with a lone UTF-16 surrogate (JSON's ``"\\ud83d"`` alone: not text, and
    not encodable as UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, BaseModel):
        value = {k: getattr(value, k) for k in type(value).model_fields}
    if isinstance(value, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    return next((bad for key, v in items if (bad := _unpaired_surrogate(v, key)) is not None), None)


def _prompt_tokens(handles: list[Handle]) -> int:
    """Each prompt counted once, whatever ``n`` (as OpenAI and vLLM count): its first choice's handle."""
    return sum(h.prompt_tokens for h in handles if h.choice == 0)


def _usage(handles: list[Handle], out_tokens: int) -> dict[str, int]:
    prompt = _prompt_tokens(handles)
    return {"prompt_tokens": prompt, "completion_tokens": out_tokens, "total_tokens": prompt + out_tokens}


def _stream(
    server: Server,
    handles: list[Handle],
    request: Request,
    rid: str,
    started: float,
    *,
    include_usage: bool,
    chunk: Callable[[int, Any, str | None], dict[str, Any]],
    first: list[dict[str, Any]] | None = None,
    chat: bool = False,
    trace: TraceOptions | None = None,
) -> StreamingResponse:
    """Server-sent events: one chunk per text delta, a last chunk per choice with its finish reason,
    optionally a usage chunk, optionally a chunk with ``trace`` (and no choices), then ``data: [DONE]``. A client that disconnects cancels this generator,
    whose ``finally`` aborts the requests so their slots free up at the next step."""

    def delta(c: dict[str, Any]) -> dict[str, Any]:
        # OpenAI: with include_usage, every chunk but the usage one carries "usage": null
        return {**c, "usage": None} if include_usage else c

    async def body() -> AsyncIterator[str]:
        first_token = None
        received: list[list[Event]] = [[] for _ in handles]
        texts = [""] * len(handles)
        try:
            for c in first or []:
                yield _sse(delta(c))
            async for i, event in _merge(handles):
                if first_token is None:
                    first_token = time.monotonic()
                received[i].append(event)
                if event.text:
                    texts[i] += event.text
                    yield _sse(delta(chunk(i, event.text, None)))
                if event.finished:
                    yield _sse(delta(chunk(i, None if chat else "", event.finish_reason)))
            if include_usage:
                usage: dict[str, Any] = {
                    "id": rid,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": server.model_name,
                    "choices": [],
                    "usage": _usage(handles, _generated(received)),
                }
                yield _sse(usage)
            if trace is not None:
                yield _sse(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": server.model_name,
                        "choices": [],
                        "trace": await server.trace(texts, trace),
                    }
                )
            yield "data: [DONE]\n\n"
        except Exception as e:  # the engine failed mid-stream: tell the client in OpenAI's error shape
            server.errors_total += 1
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            for h in handles:
                server.scheduler.abort(h)
            server.record(rid, handles, _generated(received), started, first_token, _reasons(received))

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
