"""Training instances from a tokens artifact, in an order anyone can recompute.

Streams and instances
    The documents of a split (``<tokens>/<split>/index.parquet``) are ordered by (part, start) and
    their token spans (EOS included) concatenated into one *stream*; with ``mixture`` set there is
    one stream per source instead (sources sorted by name, each keeping that document order).
    A stream of T tokens holds ``T // seq_len`` windows of ``seq_len`` consecutive tokens (the tail is
    never used). Instance id ``i`` is a global window number: the windows of the first stream come
    first, then those of the second, and so on.

The data order (a pure function; ``PCG64`` = ``numpy.random.Generator(numpy.random.PCG64(
numpy.random.SeedSequence(entropy)))``)::

    N        = number of windows over all streams (fixed by the tokens artifact, i.e. its manifest hash)
    epoch_list(epoch):
        no mixture:  [0, 1, …, N-1]
        mixture {s: w_s}: target t_s = N·w_s/Σw rounded by largest remainder (Σ t_s = N; unnamed
                     sources get 0); source s (k = its rank among sorted sources, n_s windows,
                     first id o_s) contributes o_s + [each window ⌊t_s/n_s⌋ times, then
                     sorted(PCG64([seed, epoch, 1 + k]).choice(n_s, t_s mod n_s, replace=False))]
    order(epoch)     = epoch_list(epoch)[PCG64([seed, epoch, 0]).permutation(len(epoch_list))]
    steps_per_epoch  = len(epoch_list) // global_batch_size      (the remainder is dropped)
    global_instances(step) = order(step // steps_per_epoch)[k·B : (k+1)·B],
                             k = step mod steps_per_epoch, B = global_batch_size
    rank r of W gets global_instances(step)[r·B/W : (r+1)·B/W]

So step N holds the same instances whatever the number of ranks; resuming at step N is just
``batch(N)``; training past one epoch continues with the next epoch's permutation; and
``glasslm trace batch|doc`` needs only the tokens artifact and the loader settings.

Masks: ``doc_ids`` numbers the document segments inside an instance (0, 1, …); ``position_ids``
restart at 0 at each segment (a document cut by the window start also starts at 0, like
``model.olmo2.positions_from_doc_ids``); ``labels`` are the next token, -100 at the last position
and, with ``document_mask``, wherever the next token belongs to another document — so the first
token of a document is never predicted from the previous one, and each EOS is predicted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from glasslm import artifacts
from glasslm.config import ConfigError

log = logging.getLogger(__name__)

INDEX = "index.parquet"
IGNORE = -100


@dataclass
class LoaderConfig:
    seq_len: int = 256
    global_batch_size: int = 16  # instances per optimizer step, all ranks and micro-batches together
    seed: int = 0
    mixture: dict[str, float] = field(default_factory=dict)  # source -> token-level weight; empty = natural
    document_mask: bool = True

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.loader.seq_len must be >= 2, got {self.seq_len}")
        if self.global_batch_size < 1:
            raise ConfigError(f"data.loader.global_batch_size must be >= 1, got {self.global_batch_size}")
        bad = {s: w for s, w in self.mixture.items() if not (w >= 0 and np.isfinite(w))}
        if bad:
            raise ConfigError(f"data.loader.mixture: weights must be finite and >= 0, got {bad}")
        if self.mixture and sum(self.mixture.values()) <= 0:
            raise ConfigError("data.loader.mixture: at least one weight must be positive")


def rng(*entropy: int) -> np.random.Generator:
    """The seeded generator of the data order (see the module docstring)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(e) for e in entropy])))


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (ties go to the earlier entry)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


@dataclass
class Stream:
    """Documents concatenated in a fixed order; ``cum[d]`` is where document ``d`` starts."""

    name: str
    rows: np.ndarray  # row numbers in index.parquet, in stream order
    part: np.ndarray
    start: np.ndarray
    cum: np.ndarray  # len(rows) + 1 offsets
    first_instance: int = 0

    @property
    def tokens(self) -> int:
        return int(self.cum[-1])

    def windows(self, seq_len: int) -> int:
        return self.tokens // seq_len


@dataclass
class Segment:
    """Part of one document inside one instance."""

    row: int  # index.parquet row
    doc_start: int  # token span within the document
    doc_end: int
    inst_start: int  # the same tokens' positions within the instance
    inst_end: int


class TokenLoader:
    """Rank ``rank``'s share of every global batch of a tokens artifact (see the module docstring)."""

    def __init__(
        self,
        tokens: str | Path,
        config: LoaderConfig,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
    ):
        config.validate()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        if config.global_batch_size % world_size:
            raise ConfigError(
                f"data.loader.global_batch_size ({config.global_batch_size}) must be divisible by the "
                f"number of processes ({world_size})"
            )
        self.root = artifacts.find_artifact(tokens, "tokens")
        self.config, self.rank, self.world_size, self.split = config, rank, world_size, split
        manifest = artifacts.read_manifest(self.root)
        metrics = manifest.get("metrics") or {}
        for key in ("vocab_size", "eos_id"):
            if key not in metrics:
                raise artifacts.ArtifactError(f"{self.root}/manifest.json: metrics has no '{key}'")
        self.vocab_size: int = int(metrics["vocab_size"])
        self.eos_id: int = int(metrics["eos_id"])
        self.tokens_manifest_sha256: str = artifacts.manifest_hash(self.root)
        self.split_dir = self.root / split
        self._table = self._read_index()
        self.streams = self._build_streams()
        self.n_instances = sum(s.windows(config.seq_len) for s in self.streams)
        self._targets = self._mixture_targets()
        epoch_len = int(self._targets.sum()) if self._targets is not None else self.n_instances
        self.steps_per_epoch: int = epoch_len // config.global_batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{self.split_dir}: {epoch_len} instances of {config.seq_len} tokens are fewer than one "
                f"global batch ({config.global_batch_size}); lower data.loader.seq_len or global_batch_size"
            )
        self._parts: dict[int, np.ndarray] = {}
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ---- the index ----------------------------------------------------------------------------
    def _read_index(self) -> dict[str, np.ndarray]:
        path = self.split_dir / INDEX
        if not path.is_file():
            raise artifacts.ArtifactError(f"{path}: missing (is '{self.split}' a split of {self.root}?)")
        table = pq.read_table(path, columns=["source", "part", "start", "end"])
        return {
            "source": table.column("source").to_numpy(zero_copy_only=False).astype(str),
            "part": table.column("part").to_numpy().astype(np.int64),
            "start": table.column("start").to_numpy().astype(np.int64),
            "end": table.column("end").to_numpy().astype(np.int64),
        }

    def _build_streams(self) -> list[Stream]:
        t = self._table
        order = np.lexsort((t["start"], t["part"]))
        if self.config.mixture:
            known = sorted(set(t["source"].tolist()))
            unknown = sorted(set(self.config.mixture) - set(known))
            if unknown:
                raise ConfigError(
                    f"data.loader.mixture names sources {unknown} not in {self.split_dir} (has {known})"
                )
            groups = [(s, order[t["source"][order] == s]) for s in known]
        else:
            groups = [("", order)]
        streams, first = [], 0
        for name, rows in groups:
            lengths = t["end"][rows] - t["start"][rows]
            cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            stream = Stream(name, rows, t["part"][rows], t["start"][rows], cum, first)
            first += stream.windows(self.config.seq_len)
            streams.append(stream)
        return streams

    def _mixture_targets(self) -> np.ndarray | None:
        if not self.config.mixture:
            return None
        weights = np.array([float(self.config.mixture.get(s.name, 0.0)) for s in self.streams])
        unnamed = [s for s in self.streams if s.name not in self.config.mixture]
        if unnamed:  # weight 0 by the formula; said once here, in case it was an oversight
            log.warning(
                "data.loader.mixture does not name source(s) %s: weight 0, so their %s tokens are not trained "
                "on (give them weight 0 to say so and silence this)",
                [s.name for s in unnamed],
                f"{sum(s.tokens for s in unnamed):,}",
            )
        targets = largest_remainder(self.n_instances, weights)
        for s, t in zip(self.streams, targets, strict=True):
            if t > 0 and s.windows(self.config.seq_len) == 0:
                raise ConfigError(
                    f"data.loader.mixture: source '{s.name}' has {s.tokens} tokens, less than one "
                    f"instance of {self.config.seq_len}; drop it from the mixture or lower seq_len"
                )
        return targets

    # ---- the order ----------------------------------------------------------------------------
    def epoch_list(self, epoch: int) -> np.ndarray:
        if self._targets is None:
            return np.arange(self.n_instances, dtype=np.int64)
        pieces = []
        for k, (stream, target) in enumerate(zip(self.streams, self._targets, strict=True)):
            n = stream.windows(self.config.seq_len)
            if target == 0:
                continue
            repeats, rest = divmod(int(target), n)
            extra = np.sort(rng(self.config.seed, epoch, 1 + k).choice(n, rest, replace=False))
            ids = np.concatenate([np.tile(np.arange(n, dtype=np.int64), repeats), extra.astype(np.int64)])
            pieces.append(stream.first_instance + ids)
        return np.concatenate(pieces)

    def order(self, epoch: int) -> np.ndarray:
        """Every instance of ``epoch`` in training order (cached for the last epoch asked)."""
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        listed = self.epoch_list(epoch)
        ordered = listed[rng(self.config.seed, epoch, 0).permutation(len(listed))]
        self._order_cache = (epoch, ordered)
        return ordered

    def global_instances(self, step: int) -> np.ndarray:
        """All ranks' instance ids of global step ``step`` (0-based), in rank order."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.steps_per_epoch)
        b = self.config.global_batch_size
        return self.order(epoch)[k * b : (k + 1) * b].copy()

    def rank_instances(self, step: int) -> np.ndarray:
        local = self.config.global_batch_size // self.world_size
        return self.global_instances(step)[self.rank * local : (self.rank + 1) * local]

    def steps_of(self, instances: np.ndarray, epoch: int) -> np.ndarray:
        """Global steps of ``epoch`` that contain any of ``instances`` (sorted, one per hit)."""
        b, spe = self.config.global_batch_size, self.steps_per_epoch
        if self._targets is None:
            # The epoch list is the identity: invert the permutation instead of scanning it.
            perm = rng(self.config.seed, epoch, 0).permutation(self.n_instances)
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(len(perm))
            positions = inverse[np.asarray(instances, dtype=np.int64)]
        else:
            positions = np.flatnonzero(np.isin(self.order(epoch), instances))
        positions = np.sort(positions[positions < spe * b])
        return epoch * spe + positions // b

    # ---- reading ------------------------------------------------------------------------------
    def _part(self, part: int) -> np.ndarray:
        if part not in self._parts:
            path = self.split_dir / f"part-{part:05d}.npy"
            if not path.is_file():
                raise artifacts.ArtifactError(f"{path}: missing (named by {self.split_dir / INDEX})")
            self._parts[part] = np.load(path, mmap_mode="r")
        return self._parts[part]

    def locate(self, instance: int) -> tuple[Stream, int]:
        """(stream, first stream offset) of an instance."""
        if not 0 <= instance < self.n_instances:
            raise IndexError(f"instance {instance} outside 0..{self.n_instances - 1}")
        firsts = [s.first_instance for s in self.streams]
        stream = self.streams[int(np.searchsorted(firsts, instance, side="right")) - 1]
        return stream, (instance - stream.first_instance) * self.config.seq_len

    def segments(self, instance: int) -> tuple[Stream, list[Segment]]:
        stream, a = self.locate(instance)
        b = a + self.config.seq_len
        d = int(np.searchsorted(stream.cum, a, side="right")) - 1
        out = []
        while d < len(stream.rows) and stream.cum[d] < b:
            lo, hi = max(a, int(stream.cum[d])), min(b, int(stream.cum[d + 1]))
            base = int(stream.cum[d])
            out.append(Segment(int(stream.rows[d]), lo - base, hi - base, lo - a, hi - a))
            d += 1
        return stream, out

    def read(self, instance: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, segment number per token) of one instance, read through the memmaps."""
        _, segs = self.segments(instance)
        tokens = np.empty(self.config.seq_len, dtype=np.int64)
        seg_ids = np.empty(self.config.seq_len, dtype=np.int64)
        for i, s in enumerate(segs):
            start = int(self._table["start"][s.row])
            part = self._part(int(self._table["part"][s.row]))
            tokens[s.inst_start : s.inst_end] = part[start + s.doc_start : start + s.doc_end]
            seg_ids[s.inst_start : s.inst_end] = i
        return tokens, seg_ids

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of global step ``step``: global_batch_size // world_size instances."""
        ids = self.rank_instances(step)
        L = self.config.seq_len
        tokens = np.empty((len(ids), L), dtype=np.int64)
        seg = np.empty((len(ids), L), dtype=np.int64)
        for i, inst in enumerate(ids):
            tokens[i], seg[i] = self.read(int(inst))
        labels = np.full_like(tokens, IGNORE)
        labels[:, :-1] = tokens[:, 1:]
        out = {"input_ids": torch.from_numpy(tokens)}
        if self.config.document_mask:
            labels[:, :-1][seg[:, 1:] != seg[:, :-1]] = IGNORE
            idx = np.broadcast_to(np.arange(L), seg.shape)
            starts = np.ones_like(seg, dtype=bool)
            starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
            positions = idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
            out["doc_ids"] = torch.from_numpy(seg)
            out["position_ids"] = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64))
        else:
            out["position_ids"] = torch.arange(L, dtype=torch.int64).expand(len(ids), L).clone()
        out["labels"] = torch.from_numpy(labels)
        out["instance_ids"] = torch.from_numpy(ids.astype(np.int64))
        return out

    # ---- back to documents --------------------------------------------------------------------
    def doc_ids(self) -> np.ndarray:
        if "doc_id" not in self._table:
            column = pq.read_table(self.split_dir / INDEX, columns=["doc_id"]).column("doc_id")
            self._table["doc_id"] = column.to_numpy(zero_copy_only=False).astype(object)
        return self._table["doc_id"]

    def instance_docs(self, instance: int) -> list[dict[str, Any]]:
        """The documents an instance covers: id, source, the token span within the document."""
        _, segs = self.segments(instance)
        ids = self.doc_ids()
        return [
            {
                "doc_id": str(ids[s.row]),
                "source": str(self._table["source"][s.row]),
                "doc_start": s.doc_start,
                "doc_end": s.doc_end,
                "doc_tokens": int(self._table["end"][s.row] - self._table["start"][s.row]),
                "instance_start": s.inst_start,
                "instance_end": s.inst_end,
            }
            for s in segs
        ]

    def _row(self, doc_id: str) -> int:
        rows = np.flatnonzero(self.doc_ids() == doc_id)
        if len(rows) == 0:
            raise KeyError(f"document '{doc_id}' is not in {self.split_dir / INDEX}")
        return int(rows[0])

    def doc_info(self, doc_id: str) -> dict[str, Any]:
        row = self._row(doc_id)
        t = self._table
        return {
            "doc_id": doc_id,
            "source": str(t["source"][row]),
            "part": int(t["part"][row]),
            "start": int(t["start"][row]),
            "end": int(t["end"][row]),
            "tokens": int(t["end"][row] - t["start"][row]),
        }

    def doc_instances(self, doc_id: str) -> list[dict[str, Any]]:
        """Every instance holding tokens of ``doc_id`` with the document's span in it (no tail windows)."""
        row = self._row(doc_id)
        L = self.config.seq_len
        for stream in self.streams:
            where = np.flatnonzero(stream.rows == row)
            if len(where):
                d = int(where[0])
                break
        else:  # a source left out of the mixture's streams cannot happen: every source has a stream
            raise KeyError(f"document '{doc_id}' is in no stream")
        lo, hi = int(stream.cum[d]), int(stream.cum[d + 1])
        out = []
        for w in range(lo // L, min((hi - 1) // L + 1, stream.windows(L))):
            a = w * L
            s, e = max(lo, a), min(hi, a + L)
            out.append(
                {
                    "instance": stream.first_instance + w,
                    "doc_start": s - lo,
                    "doc_end": e - lo,
                    "instance_start": s - a,
                    "instance_end": e - a,
                }
            )
        return out
