"""Linear layers through oneDNN on CPU (fp32), applied to a plain model from outside, as torchtitan
applies float8 linears: the model file keeps ``nn.Linear``; the trainer swaps the class of each one.

Why: on CPU, ``aten::mm`` in fp32 goes to MKL's sgemm, which on the AMD EPYC dev box runs at about
97 GFLOP/s per core, while oneDNN's fp32 matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel
torch.compile's CPU backend itself uses for linears) runs the same (2048 × 512)·(512 × 1536) product
at 200–215 GFLOP/s forward and d-input, ~170 d-weight (benchmarks/RESULTS.md, train_cpu). Both are
full fp32 (no bf16 inside; the results differ only in summation order, ~1e-6 relative). Matmuls are
~80% of a CPU training step, so this is the largest lever there is on CPU.

But the lever points the other way on Intel: there MKL's sgemm is the faster one (issue #23: 165 vs
154 GFLOP/s on a 2-core Xeon, and the swap made a 27M model's step 0.87–0.97× transformers'). Which
library wins depends on the CPU, the shapes and the thread count, so ``choose_backend`` *measures*
both on the model's own linear shapes and keeps the faster (``LinearChoice``, which the trainer
records in its run manifest); ``trainer.onednn_linear`` true/false forces either side.

The measurement is kept on disk per machine (``choices_file``), as Triton keeps its autotuning: the
two libraries round differently, and where their speeds are close a timing taken under a different
machine load picks the other one, so the same config on the same machine gave different models
(two fresh runs of the tiny pipeline: SFT chat loss 5.087 vs 5.027). Measured once, the choice is
then the same for every later run on that machine.

Only the arithmetic changes: parameters, their names, state dicts and checkpoints are those of
``nn.Linear``. Off CPU, under autocast, in other dtypes, or with a bias, the layer is plain
``nn.Linear``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn


def available() -> bool:
    """Whether this torch build has oneDNN's linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for 2-D fp32 CPU tensors through oneDNN (strided views are fine: no copies)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` can take the oneDNN path (CPU, fp32, no autocast)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


class _LinearFn(torch.autograd.Function):
    """y = x·Wᵀ with all three matmuls (y, dx = dy·W, dW = dyᵀ·x) through oneDNN."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.in_shape = x.shape  # type: ignore[attr-defined]
        return matmul_t(x2, weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x2, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        g2 = grad.reshape(-1, grad.shape[-1])
        need_x, need_w = ctx.needs_input_grad  # type: ignore[attr-defined]
        dx = matmul_t(g2, weight.T).view(ctx.in_shape) if need_x else None  # type: ignore[attr-defined]
        dw = matmul_t(g2.T, x2.T) if need_w else None
        return dx, dw


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose CPU fp32 matmuls go through oneDNN (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and usable(x, self.weight):
            return _LinearFn.apply(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every bias-free ``nn.Linear`` of ``model`` into a ``OneDNNLinear`` in place (the class
    only: parameters and hooks stay). Returns how many were converted; 0 when oneDNN is missing."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.bias is None:
            module.__class__ = OneDNNLinear
            count += 1
    return count


def use_aten_linears(model: nn.Module) -> int:
    """Undo ``use_onednn_linears``: every ``OneDNNLinear`` back to ``nn.Linear`` (aten::mm, MKL on CPU)."""
    count = 0
    for module in model.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = nn.Linear  # type: ignore[assignment]
            count += 1
    return count


# -- choosing by measurement ------------------------------------------------------------------------

Backend = Literal["onednn", "mkl"]


@dataclass(frozen=True)
class LinearChoice:
    """Which library runs the CPU fp32 linears, and why. ``how``: "measured" (timed here), "cached"
    (timed by an earlier run on this machine, ``choices_file``; the timings are that run's), "forced" (config), "resumed" (the choice the run started with, kept so a resumed run continues
    bit for bit), "small" (under ``MIN_TIMED_FLOP`` a pass: too little work for a timing to mean
    anything; oneDNN, the earlier default) or "n/a" (not a CPU fp32 run, or no oneDNN: aten::mm)."""

    backend: Backend
    how: Literal["measured", "cached", "forced", "resumed", "small", "n/a"]
    mkl_ms: float | None = None  # best time of one pass over the shapes (forward [+ both backward matmuls])
    onednn_ms: float | None = None
    rows: int | None = None
    threads: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Below this much matmul work per pass (~1–10 ms on one core) the two libraries' difference is below
# timer noise: a measured choice would be a coin flip, and two processes of the same tiny run (a
# killed run and its reference, in the tests) could take different ones.
MIN_TIMED_FLOP = 1e9

# Per process: the same shapes on the same threads give the same answer, and a second trainer or
# engine in the process (tests, the pipeline) should not pay the timing again.
_CHOICES: dict[tuple[Any, ...], LinearChoice] = {}


def linear_shapes(model: nn.Module) -> Counter[tuple[int, int]]:
    """(out_features, in_features) of every bias-free linear layer, with how often each occurs."""
    shapes: Counter[tuple[int, int]] = Counter()
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is None:
            linear: nn.Linear = module
            shapes[(linear.out_features, linear.in_features)] += 1
    return shapes


def _pass(
    kind: Backend, operands: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]], backward: bool
) -> float:
    """Seconds for one pass: each distinct shape's y = x·Wᵀ (and dx = g·W, dW = gᵀ·x) once, weighted
    by how many layers have that shape (timing each layer would cost the same information n times)."""
    total = 0.0
    for count, x, w, g in operands:
        t0 = time.perf_counter()
        if kind == "onednn":
            matmul_t(x, w)
            if backward:
                matmul_t(g, w.T)
                matmul_t(g.T, x.T)
        else:
            torch.mm(x, w.T)
            if backward:
                torch.mm(g, w)
                torch.mm(g.T, x)
        total += count * (time.perf_counter() - t0)
    return total


def measure(
    shapes: Counter[tuple[int, int]], rows: int, backward: bool = True, iters: int = 2
) -> tuple[float, float]:
    """Best-of-``iters`` seconds of one pass over ``shapes`` (``rows`` input rows) with MKL
    (aten::mm) and with oneDNN, the two alternating (ABAB, so a load change hits both), after one
    warm-up pass each. Returns (mkl_s, onednn_s)."""
    gen = torch.Generator().manual_seed(0)
    operands = [
        (
            count,
            torch.randn(rows, k, generator=gen),
            torch.randn(n, k, generator=gen),
            torch.randn(rows, n, generator=gen),
        )
        for (n, k), count in sorted(shapes.items())
    ]
    best: dict[Backend, float] = {"mkl": float("inf"), "onednn": float("inf")}
    with torch.no_grad():
        for i in range(iters + 1):
            order: list[Backend] = ["mkl", "onednn"] if i % 2 == 0 else ["onednn", "mkl"]
            for kind in order:
                t = _pass(kind, operands, backward)
                if i > 0:  # the first pass of each warms caches and oneDNN's primitive cache
                    best[kind] = min(best[kind], t)
    return best["mkl"], best["onednn"]


def choose_backend(
    model: nn.Module,
    rows: int,
    mode: bool | Literal["auto"] = "auto",
    backward: bool = True,
    max_rows: int = 512,
) -> LinearChoice:
    """Pick the library for ``model``'s CPU fp32 linears: ``mode`` True → oneDNN, False → MKL
    (aten::mm), "auto" → time both on the model's own shapes at ``rows`` rows (capped at
    ``max_rows`` to bound the start-up cost: ~1 s for a 27M model on one core, whose passes take
    ~0.1 s each; a GEMM's time per row is near flat from a few hundred rows) and keep the faster.
    Cached per process, and on disk per machine (``choices_file``), by (CPU, torch, shapes, rows,
    threads, backward)."""
    threads = torch.get_num_threads()
    if not available():
        return LinearChoice("mkl", "n/a", threads=threads)
    if mode is not True and mode is not False and mode != "auto":
        raise ValueError(f"onednn_linear must be true, false or 'auto', got {mode!r}")
    if mode is True or mode is False:
        return LinearChoice("onednn" if mode else "mkl", "forced", threads=threads)
    if _REPLAY is not None:  # glasslm reproduce: the choice the recorded run made on its machine
        return _REPLAY
    shapes = linear_shapes(model)
    if not shapes:
        return LinearChoice("mkl", "n/a", threads=threads)
    rows = max(1, min(rows, max_rows))
    flop = 2 * rows * sum(n * k * c for (n, k), c in shapes.items()) * (3 if backward else 1)
    if flop < MIN_TIMED_FLOP:
        return LinearChoice("onednn", "small", rows=rows, threads=threads)
    key = (tuple(sorted(shapes.items())), rows, threads, backward)
    if key not in _CHOICES:
        _CHOICES[key] = _stored_choice(key) or _measured_choice(shapes, rows, threads, backward, key)
    return _CHOICES[key]


def _measured_choice(
    shapes: Counter[tuple[int, int]], rows: int, threads: int, backward: bool, key: tuple[Any, ...]
) -> LinearChoice:
    mkl_s, onednn_s = measure(shapes, rows, backward)
    backend: Backend = "onednn" if onednn_s < mkl_s else "mkl"
    choice = LinearChoice(backend, "measured", round(mkl_s * 1e3, 3), round(onednn_s * 1e3, 3), rows, threads)
    _store_choice(key, choice)
    return choice


# -- the choices measured on this machine, kept on disk -----------------------------------------------


def choices_file() -> Path:
    """Where this machine's measured choices are kept: ``$GLASSLM_CACHE_DIR/linear_backend.json``
    (default ``~/.cache/glasslm``). Delete it to measure again."""
    root = os.environ.get("GLASSLM_CACHE_DIR") or Path.home() / ".cache" / "glasslm"
    return Path(root) / "linear_backend.json"


def _cpu_name() -> str:
    """The CPU's model name: the libraries' speeds (and their kernels' rounding) depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _entry_name(key: tuple[Any, ...]) -> str:
    """One entry per (CPU, torch build, shapes, rows, threads, backward): a new torch or other CPU
    is measured anew."""
    text = json.dumps([_cpu_name(), torch.__version__, repr(key)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_choices() -> dict[str, Any]:
    try:
        stored = json.loads(choices_file().read_text())
    except (OSError, ValueError):  # none yet, unreadable or damaged: measure again
        return {}
    return stored if isinstance(stored, dict) else {}


def _stored_choice(key: tuple[Any, ...]) -> LinearChoice | None:
    entry = _read_choices().get(_entry_name(key))
    if not isinstance(entry, dict) or entry.get("backend") not in get_args(Backend):
        return None
    return LinearChoice(
        entry["backend"], "cached", entry.get("mkl_ms"), entry.get("onednn_ms"), key[1], key[2]
    )


def _store_choice(key: tuple[Any, ...], choice: LinearChoice) -> None:
    """Add ``choice`` to ``choices_file`` (temp file, then rename: a reader never sees half a file).
    A cache that cannot be written (read-only home) only costs the next run a new measurement."""
    path = choices_file()
    stored = _read_choices()
    stored[_entry_name(key)] = {
        "backend": choice.backend,
        "mkl_ms": choice.mkl_ms,
        "onednn_ms": choice.onednn_ms,
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "shapes": [[n, k, c] for (n, k), c in key[0]],
        "rows": key[1],
        "threads": key[2],
        "backward": key[3],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


_REPLAY: LinearChoice | None = None


@contextlib.contextmanager
def replaying(recorded: Mapping[str, Any] | None) -> Iterator[None]:
    """Inside, "auto" returns the ``recorded`` choice (``LinearChoice.as_dict()`` from a run's manifest)
    instead of timing: the two libraries round differently, so a re-run (``glasslm reproduce``) must use
    the library the recorded run measured as faster on its machine, and record the same choice."""
    global _REPLAY
    previous = _REPLAY
    if recorded and recorded.get("backend") in ("onednn", "mkl"):
        _REPLAY = LinearChoice(
            recorded["backend"],
            recorded.get("how") or "measured",
            recorded.get("mkl_ms"),
            recorded.get("onednn_ms"),
            recorded.get("rows"),
            recorded.get("threads"),
        )
    try:
        yield
    finally:
        _REPLAY = previous


def apply_choice(model: nn.Module, choice: LinearChoice) -> bool:
    """Make ``model``'s bias-free linears take ``choice``'s library; True when oneDNN is in use."""
    if choice.backend == "onednn":
        return use_onednn_linears(model) > 0
    use_aten_linears(model)
    return False
