"""The generation engine: KV-cache decoding with continuous batching.

One engine serves ``glasslm generate``, ``chat``, ``serve``, generative eval, RL sampling and the trace
demos. Its shape follows vLLM's: requests are *added* (token ids + their own ``SamplingParams``) and
the engine is driven by ``step()``; each step admits waiting requests into free cache slots (one
batched prefill), then runs one decode step for every running request, and returns the new tokens as
``Event``s (token id, valid-UTF-8 text delta, finish reason). A server's scheduler calls ``step()`` in
a loop while requests join and leave between steps; ``generate()`` and ``stream()`` are the simple
blocking front ends.

The cache is *slotted*: per layer ``(slots, kv_heads, max_len, head_dim)``, one slot per running
request, each slot with its own length and positions starting at 0. So there is no left padding and no
re-layout when a request joins or leaves: a joining request is prefilled into a free slot (right-padded
with the others admitted in the same step: causal attention never looks at the padding), and a decode
step runs rows ``0..highest busy slot`` with a key mask ``key <= position`` per row. Free slots inside
that range compute a throw-away row, cheaper than gathering busy slots into a compact batch every step.

``Engine(..., compile=True)`` runs the decode step through ``torch.compile`` (Inductor, weights frozen
into the graph, max-autotune GEMM selection). The compiled step has one fixed shape, so it never
recompiles: every slot is a row and attention spans the whole cache (``max_len`` keys, masked), traded
against per-step Python and kernel-launch overhead and pre-packed weights. Measured in
benchmarks/RESULTS.md (generate_throughput). Compilation happens in the constructor (its wall time is
``engine.compile_seconds``); when it fails (no C++ compiler, unsupported platform) the engine warns and
decodes eagerly. Freezing snapshots the weights: if they change in place afterwards (a training step
on the same model), the engine notices and falls back to the eager step, which reads live weights.
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from glasslm.model.olmo2 import ModelConfig, OLMo2

FINISH_STOP, FINISH_LENGTH, FINISH_ABORT = "stop", "length", "abort"

# Inductor options for the compiled decode step, patched in only while it compiles, so other compiled
# code in the process keeps the global config. freezing: weights become graph constants, which lets
# Inductor pre-pack them for the CPU GEMM (MKL's packed sgemm for fp32, oneDNN for bf16) and fold
# constant work; max_autotune: time the candidate GEMM kernels and keep the fastest (on CPU it adds
# Inductor's C++ GEMM template). Their effect is measured in benchmarks/RESULTS.md.
COMPILE_OPTIONS: dict[str, str | int | bool] = {"freezing": True, "max_autotune": True}


@dataclass
class SamplingParams:
    """Per-request decoding settings (Hugging Face semantics and order: penalty, temperature, top-k, top-p)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; >1 discourages tokens already in prompt or output (CTRL)
    stop: Sequence[str] = ()  # generation ends *before* the first occurrence of any of these strings
    stop_token_ids: Sequence[int] = ()  # besides EOS
    seed: int | None = None  # per-request generator, so a seeded request samples the same in any batch
    ignore_eos: bool = False
    logprobs: bool = False  # report log p(token) under the model's raw distribution (for RL)

    def validate(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be ≥ 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Event:
    """What one step produced for one request. ``text`` is the new text only (may be empty while a
    multi-byte character or a possible stop string is incomplete)."""

    request_id: str
    token_id: int | None
    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprob: float | None = None


@dataclass
class Completion:
    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class IncrementalDetokenizer:
    """Token ids in, text deltas out; never splits a multi-byte character, holds back possible stops.

    Decodes a short window (``prefix_offset:``) rather than the whole output each step, as vLLM and TGI
    do: byte-level BPE can split one character over several tokens, and a window that starts a few
    tokens back decodes the same as the full sequence would. A window ending in U+FFFD is an
    incomplete character: wait for the next token.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # all decoded text so far (stable characters only)
        self.emitted = 0  # characters of ``text`` handed out so far
        self.stopped_at: int | None = None  # index in ``text`` where a stop string begins

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that may be shown now. Check ``stopped_at`` afterwards."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new = self._decode(self.ids[self.prefix_offset :])
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            self._append(new[len(prefix) :])
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end: whatever is left, even an incomplete character, unless cut by a stop string."""
        if self.stopped_at is None and self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            self._append(self._decode(self.ids[self.prefix_offset :])[len(prefix) :])
            self.read_offset = len(self.ids)
        return self._release(final=True)

    def _append(self, delta: str) -> None:
        if self.stopped_at is not None:
            return
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += delta
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.stopped_at = min(hits)

    def _release(self, final: bool) -> str:
        end = len(self.text) if self.stopped_at is None else self.stopped_at
        if self.stopped_at is None and not final:
            end -= self._held_back()
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that could still grow into a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    @property
    def final_text(self) -> str:
        return self.text if self.stopped_at is None else self.text[: self.stopped_at]


class SlotCache:
    """Keys and values for ``slots`` independent sequences (a ``model.kv_cache.KVCache``).

    Every slot has its own length, kept by the engine (``_Request.cached``), which passes positions
    and masks explicitly. A prefill writes fresh sequences, so the length common to its rows is 0; a
    decode step's rows have different lengths, so there is none, and ``length`` refuses to answer
    (the model asks only where positions or the mask are left to it). ``advance`` has nothing to do:
    the engine advances each request's slot.
    """

    def __init__(
        self, config: ModelConfig, slots: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        # One tensor per layer, not one 5-D tensor: the compiled decode step writes into these in place,
        # and a write into a view of one big graph input made Inductor copy the whole cache back every
        # step (measured: the compiled step 3× slower than eager at batch 8 on the tiny shape).
        shape = (slots, config.kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.max_len = max_len
        self._slots: torch.Tensor | None = None  # prefill: which slots the batch rows go to
        self._positions: torch.Tensor | None = None  # decode: where each row's new token goes
        self._keys = 0  # decode: how many key positions to attend over

    @property
    def length(self) -> int:
        if self._positions is not None:
            raise ValueError("SlotCache: decode rows have per-slot lengths; pass position_ids and attn_mask")
        return 0  # prefill: fresh sequences

    def advance(self, tokens: int) -> None:
        pass  # each slot's length is its request's ``cached``, kept by the engine

    def for_prefill(self, slots: torch.Tensor) -> SlotCache:
        self._slots, self._positions = slots, None
        return self

    def for_decode(self, positions: torch.Tensor, keys: int) -> SlotCache:
        self._slots, self._positions, self._keys = None, positions, keys
        return self

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._positions is None:
            # Prefill: fresh sequences starting at position 0, so attention runs over the new keys
            # themselves (the fused causal path); the cache only stores them.
            T = k.shape[2]
            self.k[layer][self._slots, :, :T] = k
            self.v[layer][self._slots, :, :T] = v
            return k, v
        rows = k.shape[0]
        index = torch.arange(rows, device=k.device)
        self.k[layer][index, :, self._positions] = k[:, :, 0]
        self.v[layer][index, :, self._positions] = v[:, :, 0]
        return self.k[layer][:rows, :, : self._keys], self.v[layer][:rows, :, : self._keys]


@dataclass
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    detok: IncrementalDetokenizer | None
    generator: torch.Generator | None
    slot: int = -1
    cached: int = 0  # tokens of this request in its cache slot
    output: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    arrived: float = field(default_factory=time.monotonic)


class Engine:
    """Continuous-batching generation over one model. ``add``/``abort`` are thread-safe; ``step``
    must be called from one thread at a time (a scheduler loop, or ``generate``/``stream``)."""

    def __init__(
        self,
        model: OLMo2,
        tokenizer: Any = None,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        max_prefill_tokens: int = 4096,
        eos_id: int | None = None,
        compile: bool = False,
    ):
        self.model = model.eval()
        self.config = model.config
        weight = next(model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.tokenizer = tokenizer
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
        self.max_batch = max_batch
        self.max_len = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        # Bounds the padded size of one prefill, so joining requests delay running ones only so much.
        self.max_prefill_tokens = max(max_prefill_tokens, self.max_len)
        self.cache = SlotCache(self.config, max_batch, self.max_len, self.device, self.dtype)
        # Which vocabulary entries each slot has seen (prompt + output), for the repetition penalty.
        self.seen = torch.zeros(max_batch, self.config.vocab_size, dtype=torch.bool, device=self.device)
        self.slots: list[_Request | None] = [None] * max_batch
        self.waiting: deque[_Request] = deque()
        self._lock = threading.Lock()
        self._aborts: set[str] = set()
        self._ids = itertools.count()
        self._seed_rng = torch.Generator().manual_seed(torch.initial_seed() % (2**63))
        # Finished requests wait here until ``completion`` collects them (``generate``); event-driven
        # callers (the server, ``stream``) call ``forget``.
        self.finished: dict[str, _Request] = {}
        # Key positions 0..max_len-1, built once for the compiled step's fixed-shape masks.
        self._key_range = torch.arange(self.max_len, device=self.device)
        self._compiled: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.compile_seconds: float | None = None  # wall time of compiling the decode step (None: eager)
        self._compiled_version = 0  # the weights' version counter the compiled graph froze
        self._params = list(model.parameters())
        if compile:
            self._compile_decode()

    # -- compiled decode ---------------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        """Whether decode steps run the compiled graph (False when compile was off, failed or was dropped)."""
        return self._compiled is not None

    def _weights_version(self) -> int:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter. The list
        # is taken once: walking the module tree every step cost ~0.2 ms, a fifth of a tiny-model step.
        return sum(p._version for p in self._params)

    @torch.inference_mode()
    def _compile_decode(self) -> None:
        """Compile the fixed-shape decode step and run it once, so compilation is paid here, not in the
        first request. On any failure: warn and keep the eager step."""
        t0 = time.perf_counter()
        try:
            import torch._inductor.config as inductor_config

            fn = torch.compile(self._decode_forward, dynamic=False)
            # A throw-away step at position 0 of every slot: no request holds a slot yet, and a
            # prefill overwrites positions from 0 before anything reads them. Two distinct tensors:
            # Dynamo guards on aliasing, and the real steps never pass one tensor twice.
            tokens, positions = (
                torch.zeros(self.max_batch, dtype=torch.long, device=self.device) for _ in "tp"
            )
            # The options are patched around the compiling call, not passed as torch.compile(options=):
            # passed that way ``freezing`` is ignored (checked: the weights stayed graph inputs and no
            # packed GEMM appeared in the generated code), patched it takes effect.
            with inductor_config.patch(dict(COMPILE_OPTIONS)):
                fn(tokens, positions, self._decode_mask(positions))
        except Exception as e:  # noqa: BLE001 - any compiler failure means: decode eagerly
            warnings.warn(
                f"torch.compile of the decode step failed ({type(e).__name__}: {e}); decoding eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.compile_seconds = time.perf_counter() - t0
        self._compiled = fn
        self._compiled_version = self._weights_version()

    def _decode_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(rows, 1, 1, max_len) boolean: each row sees its keys up to its own position."""
        return (self._key_range[None] <= positions[:, None])[:, None, None]

    def _decode_forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One token per row at ``positions``; logits (rows, vocab). The unit that gets compiled."""
        cache = self.cache.for_decode(positions, mask.shape[-1])
        return self.model(tokens[:, None], position_ids=positions[:, None], attn_mask=mask, cache=cache)[
            :, -1
        ]

    # -- requests ------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids, not text")
            return list(self.tokenizer.encode(prompt))
        return [int(t) for t in prompt]

    def add(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request; it joins the running batch at the next ``step``. Returns its id."""
        params = params or SamplingParams()
        params.validate()
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        if len(ids) >= self.max_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens; this engine holds at most {self.max_len - 1} "
                f"(max_len {self.max_len}, one position left to generate)"
            )
        if bad := [t for t in ids if not 0 <= t < self.config.vocab_size]:
            raise ValueError(
                f"token ids {bad[:5]} outside the model's vocabulary (0..{self.config.vocab_size - 1})"
            )
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        generator = None
        if not params.greedy:
            seed = (
                params.seed
                if params.seed is not None
                else int(torch.randint(2**62, (1,), generator=self._seed_rng))
            )
            generator = torch.Generator(device=self.device).manual_seed(seed)
        detok = IncrementalDetokenizer(self.tokenizer, params.stop) if self.tokenizer is not None else None
        request = _Request(request_id or f"req-{next(self._ids)}", ids, params, detok, generator)
        with self._lock:
            self.waiting.append(request)
        return request.id

    def abort(self, request_id: str) -> None:
        """Stop a request (queued or running) at the next step boundary; it ends with reason "abort"."""
        with self._lock:
            self._aborts.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting) or any(r is not None for r in self.slots)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return sum(r is not None for r in self.slots)

    # -- the step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Event]:
        events = self._apply_aborts()
        admitted = self._admit()
        if admitted:
            events += self._prefill(admitted)
        running = [r for r in self.slots if r is not None]
        if running:
            events += self._decode(running)
        return events

    def _apply_aborts(self) -> list[Event]:
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            if not aborts:
                return []
            dropped = [r for r in self.waiting if r.id in aborts]
            self.waiting = deque(r for r in self.waiting if r.id not in aborts)
        dropped += [r for r in self.slots if r is not None and r.id in aborts]
        events = []
        for r in dropped:
            r.finish_reason = FINISH_ABORT
            events.append(self._finish(r, None))
        return events

    def _admit(self) -> list[_Request]:
        admitted: list[_Request] = []
        with self._lock:
            free = [i for i, r in enumerate(self.slots) if r is None]  # lowest first keeps the batch packed
            while self.waiting and free:
                longest = max([len(r.prompt) for r in admitted] + [len(self.waiting[0].prompt)])
                if admitted and longest * (len(admitted) + 1) > self.max_prefill_tokens:
                    break
                request = self.waiting.popleft()
                request.slot = free.pop(0)
                self.slots[request.slot] = request
                admitted.append(request)
        return admitted

    def _prefill(self, admitted: list[_Request]) -> list[Event]:
        lengths = [len(r.prompt) for r in admitted]
        T = max(lengths)
        pad = self.eos_id or 0
        ids = torch.tensor([r.prompt + [pad] * (T - len(r.prompt)) for r in admitted], device=self.device)
        slots = torch.tensor([r.slot for r in admitted], device=self.device)
        positions = torch.arange(T, device=self.device).expand(len(admitted), T)
        last = torch.tensor(lengths, device=self.device) - 1
        # Right padding + plain causal attention: a real token never attends to a later pad token.
        hidden = self.model.hidden(ids, position_ids=positions, cache=self.cache.for_prefill(slots))
        # The head only at each prompt's last position: over every prompt position it would cost
        # seq·d·vocab for nothing.
        logits = self.model.lm_head(hidden[torch.arange(len(admitted), device=self.device), last][:, None])
        for r in admitted:
            if r.params.repetition_penalty != 1.0:
                self.seen[r.slot] = False
                self.seen[r.slot, r.prompt] = True
            r.cached = len(r.prompt)
        return self._sample_and_emit(admitted, logits[:, -1])

    def _decode(self, running: list[_Request]) -> list[Event]:
        if self._compiled is not None and self._weights_version() != self._compiled_version:
            warnings.warn(
                "the model's weights changed since the decode step was compiled (frozen weights); "
                "decoding eagerly from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            self._compiled = None
        # Compiled: every slot, one fixed shape. Eager: rows up to the highest busy slot only.
        rows = self.max_batch if self._compiled is not None else max(r.slot for r in running) + 1
        tokens = [0] * rows
        positions = [0] * rows
        for r in running:
            tokens[r.slot], positions[r.slot] = r.output[-1], r.cached
        tok = torch.tensor(tokens, device=self.device)
        pos = torch.tensor(positions, device=self.device)
        if self._compiled is not None:
            logits = self._compiled(tok, pos, self._decode_mask(pos))
        else:
            keys = max(positions) + 1
            logits = self._decode_forward(tok, pos, self._decode_mask(pos)[..., :keys])
        for r in running:
            r.cached += 1
        rows_of = torch.tensor([r.slot for r in running], device=self.device)
        return self._sample_and_emit(running, logits[rows_of])

    def _sample_and_emit(self, requests: list[_Request], logits: torch.Tensor) -> list[Event]:
        # ``seen`` is kept only for requests with a repetition penalty: two indexing ops per step saved
        # for everyone else (it matters on small models, where a step is a millisecond).
        penalised = [i for i, r in enumerate(requests) if r.params.repetition_penalty != 1.0]
        slots = [r.slot for r in requests]
        seen = self.seen[slots] if penalised else None
        tokens, logprobs = sample(logits, [r.params for r in requests], [r.generator for r in requests], seen)
        if penalised:
            self.seen[[slots[i] for i in penalised], [tokens[i] for i in penalised]] = True
        events = []
        for r, token, lp in zip(requests, tokens, logprobs, strict=True):
            events.append(self._append_token(r, token, lp))
        return events

    def _append_token(self, r: _Request, token: int, logprob: float | None) -> Event:
        p = r.params
        is_stop_token = (token == self.eos_id and not p.ignore_eos) or token in p.stop_token_ids
        if is_stop_token:
            # The stop token ends the text and is not part of it (as in OpenAI's API).
            r.finish_reason = FINISH_STOP
            return self._finish(r, None, logprob)
        r.output.append(token)
        if logprob is not None:
            r.logprobs.append(logprob)
        text = r.detok.push(token) if r.detok is not None else ""
        if r.detok is not None and r.detok.stopped_at is not None:
            r.finish_reason = FINISH_STOP
        elif len(r.output) >= p.max_new_tokens or r.cached + 1 >= self.max_len:
            r.finish_reason = FINISH_LENGTH
        if r.finish_reason is not None:
            return self._finish(r, token, logprob, text)
        return Event(
            r.id, token, text, prompt_tokens=len(r.prompt), completion_tokens=len(r.output), logprob=logprob
        )

    def _finish(self, r: _Request, token: int | None, logprob: float | None = None, text: str = "") -> Event:
        if r.detok is not None:
            text += r.detok.flush()
        if r.slot >= 0 and self.slots[r.slot] is r:
            self.slots[r.slot] = None
        self.finished[r.id] = r
        return Event(
            r.id,
            token,
            text,
            finished=True,
            finish_reason=r.finish_reason,
            prompt_tokens=len(r.prompt),
            completion_tokens=len(r.output),
            logprob=logprob,
        )

    # -- blocking front ends ------------------------------------------------------------------------
    def forget(self, request_id: str) -> None:
        self.finished.pop(request_id, None)

    def completion(self, request_id: str) -> Completion:
        r = self.finished.pop(request_id)
        text = r.detok.final_text if r.detok is not None else ""
        return Completion(
            r.id,
            r.prompt,
            r.output,
            text,
            r.finish_reason or FINISH_ABORT,
            r.logprobs if r.params.logprobs else None,
        )

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """All prompts at once (batched, each with its own params); results in prompt order."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        ids = [self.add(p, sp) for p, sp in zip(prompts, params, strict=True)]
        pending = set(ids)
        while pending:
            for event in self.step():
                if event.finished:
                    pending.discard(event.request_id)
        return [self.completion(i) for i in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[Event]:
        """One request, event by event (drives the engine itself: not for use beside a scheduler)."""
        rid = self.add(prompt, params)
        done = False
        try:
            while not done:
                for event in self.step():
                    if event.request_id == rid:
                        done = event.finished
                        yield event
        finally:
            if not done:  # the consumer stopped early: free the slot now
                self.abort(rid)
                self._apply_aborts()
            self.forget(rid)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    seen: torch.Tensor | None,
) -> tuple[list[int], list[float | None]]:
    """One token per row. ``logits`` (rows, vocab); ``seen`` (rows, vocab) marks prompt+output tokens
    (needed only when some row has a repetition penalty)."""
    logits = logits.float()
    raw = logits
    penalties = [p.repetition_penalty for p in params]
    if any(x != 1.0 for x in penalties):
        if seen is None:
            raise ValueError("sample: a repetition penalty needs the seen-token mask")
        # CTRL's penalty as Hugging Face applies it: divide positive logits, multiply negative ones.
        pen = torch.tensor(penalties, device=logits.device)[:, None]
        logits = torch.where(seen, torch.where(logits < 0, logits * pen, logits / pen), logits)
    tokens = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i] / p.temperature
        if p.top_k > 0 and p.top_k < row.shape[-1]:
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            probs = sorted_logits.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
            drop = probs.cumsum(-1) - probs >= p.top_p
            row = row.scatter(0, order[drop], float("-inf"))
        tokens[i] = int(torch.multinomial(row.softmax(-1), 1, generator=generators[i]))
    logprobs: list[float | None] = [None] * len(params)
    if any(p.logprobs for p in params):
        lp = raw.log_softmax(-1).gather(1, torch.tensor(tokens, device=raw.device)[:, None])[:, 0].tolist()
        logprobs = [lp[i] if p.logprobs else None for i, p in enumerate(params)]
    return tokens, logprobs


def generate_batch(
    model: OLMo2,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | list[SamplingParams],
    max_batch: int = 32,
) -> list[Completion]:
    """Completions for a fixed list of prompts, with an engine sized to them (evaluations, rollouts).

    The model is in eval mode while it generates; its training mode is restored afterwards.
    """
    from glasslm.model.modes import eval_mode

    new = max(p.max_new_tokens for p in params) if isinstance(params, list) else params.max_new_tokens
    longest = max(len(p) for p in prompts) + new + 1
    with eval_mode(model):
        engine = Engine(
            model,
            tokenizer,
            max_batch=min(max_batch, len(prompts)),
            max_len=min(longest, model.config.max_seq_len),
        )
        return engine.generate([list(p) for p in prompts], params)
