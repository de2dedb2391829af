"""Stage progress from the driver, for every executor: shards done / total, MB/s, ETA, and at the end
the quarantined records per reason.

Lines, not a redrawn bar: a stage at scale runs for hours under a scheduler whose log keeps every
byte, so a line goes to stderr at most every ``GLASSLM_PROGRESS_SECONDS`` (default 30) seconds, and
one final line always, however short the stage. MB/s counts the input shards' bytes as stored
(compressed when they are), so the ETA is the remaining bytes at the rate so far (the remaining
shards when sizes are unknown).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

from glasslm.data.documents import Location, category

DEFAULT_SECONDS = 30.0
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("glasslm_progress_quiet", default=False)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Inside, no stage prints progress (the data verbs' ``--no-progress``)."""
    token = _QUIET.set(on)
    try:
        yield
    finally:
        _QUIET.reset(token)


def interval_seconds() -> float:
    """Seconds between two progress lines (``GLASSLM_PROGRESS_SECONDS``; 0 prints every shard)."""
    text = os.environ.get("GLASSLM_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def stored_bytes(path: Location) -> int:
    """Bytes of one input shard as stored (0 when it cannot be read: the stage will say why)."""
    try:
        return int(path.stat().st_size)
    except (OSError, ValueError):
        return 0


def reasons(records: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Quarantined records counted per reason (the category manifests count them by)."""
    return Counter(category(str(r["reason"])) for r in records)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StageProgress:
    """Progress of one stage (or one pass of it) over ``total`` shards (or another ``unit``: index
    partitions) of ``total_bytes`` bytes; a pass whose tasks have no input size (0) reports no MB."""

    def __init__(
        self,
        desc: str,
        total: int,
        total_bytes: int = 0,
        *,
        enabled: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "shards",
    ) -> None:
        self.desc, self.total, self.total_bytes, self.unit = desc, total, total_bytes, unit
        self.enabled = enabled and not _QUIET.get()
        self.interval = interval_seconds() if interval is None else interval
        self.stream = stream
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.bytes = 0
        self.quarantined: Counter[str] = Counter()
        self.lines = 0

    def update(self, nbytes: int = 0, quarantined: Mapping[str, int] | None = None) -> None:
        """One shard finished, ``nbytes`` of input read, ``quarantined`` records set aside."""
        self.done += 1
        self.bytes += nbytes
        self.quarantined.update(quarantined or {})
        now = self.clock()
        if self.done < self.total and now - self.last >= self.interval:
            self.last = now
            self._print(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.bytes / elapsed
        if self.total_bytes and rate > 0:
            eta: float | None = max(self.total_bytes - self.bytes, 0) / rate
        elif self.done:
            eta = elapsed / self.done * (self.total - self.done)
        else:
            eta = None
        size = f"{self.bytes / 1e6:,.1f} MB stored, {rate / 1e6:,.2f} MB/s, " if self.sized else ""
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
            f"{size}ETA {_duration(eta) if eta is not None else '?'}"
        )

    @property
    def sized(self) -> bool:
        """Whether this pass measures bytes (dedupe's index partitions, mix's write pass do not)."""
        return bool(self.total_bytes or self.bytes)

    def close(self) -> None:
        """The final line: totals, rate and the quarantined records per reason."""
        elapsed = max(self.clock() - self.start, 1e-9)
        total = sum(self.quarantined.values())
        by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(self.quarantined.items()))
        size = (
            f", {self.bytes / 1e6:,.1f} MB stored in {elapsed:.1f} s ({self.bytes / elapsed / 1e6:,.2f} MB/s)"
            if self.sized
            else f" in {elapsed:.1f} s"
        )
        self._print(
            f"{self.desc}: done {self.done}/{self.total} {self.unit}{size}; quarantined {total}"
            + (f" ({by_reason})" if total else "")
        )

    def _print(self, text: str) -> None:
        if self.enabled:
            self.lines += 1
            print(text, file=self.stream or sys.stderr, flush=True)
