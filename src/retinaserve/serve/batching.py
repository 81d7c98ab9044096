"""Dynamic batching: single requests in, lists to a function that takes a list, answers back one by one.

A small explicit component in the spirit of Ray Serve's ``@serve.batch``: a bounded asyncio queue, a batch is
flushed when it is full or when its first item has waited ``max_wait_s``; items with different group keys (e.g.
different detection options) run as separate calls; the function runs in a worker thread so the event loop keeps
serving; the output list must match the input list in length; an exception reaches every caller of that call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["BatchStats", "Batcher", "BatcherClosedError", "QueueFullError"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
R2 = TypeVar("R2")


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` items already; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


@dataclass(frozen=True)
class BatchStats:
    """What one call of the batch function did, for metrics."""

    size: int
    queue_wait_s: float
    """How long the oldest item of the call waited before the call started."""
    run_s: float


@dataclass
class _Pending(Generic[T, R]):
    item: T
    key: Hashable
    future: asyncio.Future[R]
    enqueued: float


_STOP = object()


class Batcher(Generic[T, R]):
    """Gathers items submitted one at a time into lists for ``fn``; start it inside a running event loop.

    >>> batcher = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=8, max_wait_s=0.005)  # doctest: +SKIP
    >>> await batcher.start(); await batcher.submit(21)                                        # doctest: +SKIP
    42
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        group_key: Callable[[T], Hashable] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.group_key = group_key
        self.on_batch = on_batch
        self.name = name
        self._queue: asyncio.Queue[_Pending[T, R] | object] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._in_flight = 0

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch that is running)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def in_flight(self) -> int:
        """Items in the batch that is running now."""
        return self._in_flight

    async def start(self) -> None:
        """Create the queue and the worker in the running loop."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._task = asyncio.create_task(self._worker(), name=self.name)

    async def run_in_worker(self, fn: Callable[..., R2], *args: Any) -> R2:
        """Run ``fn(*args)`` on the batcher's worker thread, e.g. to load and warm up the model on the thread that
        will run it (one thread owns the model, so the CPU thread pools are not duplicated across threads)."""
        if self._executor is None:
            raise RuntimeError(f"{self.name} is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, item: T, *, timeout_s: float | None = None) -> R:
        """Queue ``item`` and wait for its result; raises QueueFullError, BatcherClosedError or TimeoutError."""
        if self._queue is None or self._task is None or self._closing:
            raise BatcherClosedError(f"{self.name} is not accepting work (shutting down or not started)")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"{self.name} queue is full ({self.max_queue} waiting)")
        key = self.group_key(item) if self.group_key is not None else None
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, key, future, time.perf_counter()))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            future.cancel()  # a batch not yet run skips it; a running one drops its answer
            raise

    async def stop(self) -> None:
        """Take no new work, finish everything queued, then stop the worker and its thread."""
        if self._queue is None or self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _worker(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is _STOP:
                break
            batch: list[_Pending[T, R]] = [first]  # type: ignore[list-item]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    if queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        nxt = await asyncio.wait_for(queue.get(), remaining)
                    else:
                        nxt = queue.get_nowait()
                except TimeoutError:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            await self._run(batch, loop)
        # drain whatever arrived before the stop marker was read
        rest: list[_Pending[T, R]] = []
        while not queue.empty():
            pending = queue.get_nowait()
            if pending is not _STOP:
                rest.append(pending)  # type: ignore[arg-type]
        for start in range(0, len(rest), self.max_batch_size):
            await self._run(rest[start : start + self.max_batch_size], loop)

    async def _run(self, batch: list[_Pending[T, R]], loop: asyncio.AbstractEventLoop) -> None:
        groups: dict[Hashable, list[_Pending[T, R]]] = {}
        for pending in batch:
            if not pending.future.done():  # callers that timed out or went away are skipped
                groups.setdefault(pending.key, []).append(pending)
        for group in groups.values():
            started = time.perf_counter()
            self._in_flight = len(group)
            try:
                results = await loop.run_in_executor(self._executor, self._call, [p.item for p in group])
            except Exception as exc:  # reaches every caller of this call
                for pending in group:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            else:
                for pending, result in zip(group, results):
                    if not pending.future.done():
                        pending.future.set_result(result)
            finally:
                self._in_flight = 0
            if self.on_batch is not None:
                stats = BatchStats(len(group), started - min(p.enqueued for p in group), time.perf_counter() - started)
                try:
                    self.on_batch(stats)
                except Exception:
                    log.exception("%s: on_batch callback failed", self.name)

    def _call(self, items: list[T]) -> Sequence[R]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: batch function returned {len(results)} results for {len(items)} inputs")
        return results
