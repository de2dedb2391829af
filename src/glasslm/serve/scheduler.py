"""Continuous batching for the server: one thread drives the engine, async handlers wait on queues.

The engine admits queued requests into free cache slots between decode steps, so a request that
arrives while others are generating joins the running batch at the next step instead of waiting for
the batch to drain (continuous batching, as in Orca and vLLM). This module only moves requests and
events across the thread boundary, bounds the queue, and turns aborts (client gone) into
``engine.abort``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from glasslm.model.generate import FINISH_ABORT, Engine, Event, SamplingParams

log = logging.getLogger("glasslm.serve")


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later (HTTP 429)."""


@dataclass
class Handle:
    """One submitted request: its events arrive on ``queue`` (an ``Exception`` if the engine failed)."""

    request_id: str
    prompt_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event | BaseException] = field(default_factory=asyncio.Queue)
    done: bool = False
    choice: int = 0  # which of the request's n choices of its prompt (usage counts each prompt once)

    async def events(self) -> AsyncIterator[Event]:
        while not self.done:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                self.done = True
                raise item
            self.done = item.finished
            yield item


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = max_queue
        self._handles: dict[str, Handle] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.aborted = 0  # requests stopped early (client gone)
        self.batch_sizes: list[int] = []  # running requests per decode step (recent), for /metrics and tests

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="glasslm-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams) -> Handle:
        """Queue a request (call from the event loop). Raises QueueFull, or ValueError for bad input."""
        loop = asyncio.get_running_loop()
        with self._lock:
            # Waiting requests that free batch slots will take at the next step do not queue: only
            # those beyond the batch count against max_queue (so max_queue 0 still fills the batch).
            engine = self.engine
            queued = engine.num_waiting + engine.num_running - engine.max_batch
            if queued >= self.max_queue:
                raise QueueFull(
                    f"{queued} requests are already waiting beyond the batch of {engine.max_batch} "
                    f"(limit {self.max_queue}); retry later"
                )
            request_id = self.engine.add(prompt, params)
            handle = Handle(request_id, len(prompt), loop)
            self._handles[request_id] = handle
        self._wake.set()
        return handle

    def abort(self, handle: Handle) -> None:
        if not handle.done:
            self.engine.abort(handle.request_id)
            self._wake.set()

    @property
    def running(self) -> int:
        return self.engine.num_running

    @property
    def waiting(self) -> int:
        return self.engine.num_waiting

    # -- the engine thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # a bug or out-of-memory: fail the requests in flight, keep serving
                log.exception("engine step failed; failing %d requests", len(self._handles))
                self._fail_all(e)
                continue
            self.steps += 1
            self.batch_sizes = (self.batch_sizes + [self.engine.num_running])[-1000:]
            for event in events:
                self._deliver(event)

    def _deliver(self, event: Event) -> None:
        if event.finish_reason == FINISH_ABORT:
            self.aborted += 1
        with self._lock:
            handle = self._handles.get(event.request_id)
            if event.finished:
                self._handles.pop(event.request_id, None)
                self.engine.forget(event.request_id)
        if handle is not None:
            handle.loop.call_soon_threadsafe(handle.queue.put_nowait, event)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            self.engine.abort(h.request_id)
            h.loop.call_soon_threadsafe(h.queue.put_nowait, RuntimeError(f"generation failed: {error}"))
        try:  # drop the failed requests from the engine so the next step starts clean
            self.engine.step()
        except Exception:
            log.exception("engine could not recover after a failed step")
        for h in handles:
            self.engine.forget(h.request_id)
