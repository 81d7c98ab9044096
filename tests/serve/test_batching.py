"""The batcher's contract: flush on full batch or timeout, grouping, list-in/list-out checked, errors reach every
caller, bounded queue, timeouts, and draining on stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence

import pytest

from retinaserve.serve.batching import Batcher, BatcherClosedError, BatchStats, QueueFullError


class Recorder:
    """A batch function that doubles numbers and records the batches it saw (and on which thread)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return [2 * x for x in items]


async def started(fn: object, **kwargs: object) -> Batcher:
    options: dict[str, object] = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 100, **kwargs}
    batcher: Batcher = Batcher(fn, **options)  # type: ignore[arg-type]
    await batcher.start()
    return batcher


def test_full_batches_flush_without_waiting() -> None:
    async def main() -> None:
        fn = Recorder()
        batcher = await started(fn, max_wait_s=10.0)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        assert time.perf_counter() - t0 < 5.0  # two full batches, no 10 s wait
        assert results == [2 * i for i in range(8)]
        assert fn.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert all(name.startswith("batcher") for name in fn.threads)  # a worker thread, not the event loop
        await batcher.stop()

    asyncio.run(main())


def test_partial_batch_flushes_after_max_wait() -> None:
    async def main() -> None:
        fn = Recorder()
        batcher = await started(fn, max_wait_s=0.05)
        t0 = time.perf_counter()
        assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [2, 4]
        assert 0.04 <= time.perf_counter() - t0 < 2.0
        assert fn.calls == [[1, 2]]
        await batcher.stop()

    asyncio.run(main())


def test_groups_by_key_and_reports_stats() -> None:
    async def main() -> None:
        fn = Recorder()
        stats: list[BatchStats] = []

        def parity(x: int) -> Hashable:
            return x % 2

        batcher = await started(fn, group_key=parity, on_batch=stats.append, max_batch_size=6)
        assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == [0, 2, 4, 6, 8, 10]
        assert sorted(fn.calls) == [[0, 2, 4], [1, 3, 5]]
        assert [s.size for s in stats] == [3, 3] and all(s.run_s >= 0 and s.queue_wait_s >= 0 for s in stats)
        await batcher.stop()

    asyncio.run(main())


def test_an_exception_reaches_every_caller_of_that_call() -> None:
    async def main() -> None:
        def boom(items: list[int]) -> list[int]:
            raise ValueError(f"bad batch {items}")

        batcher = await started(boom)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(o, ValueError) and "bad batch [0, 1, 2]" in str(o) for o in outcomes)
        await batcher.stop()

    asyncio.run(main())


def test_output_length_is_checked() -> None:
    async def main() -> None:
        def short(items: list[int]) -> Sequence[int]:
            return items[:-1]

        batcher = await started(short)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) and "2 inputs" in str(o) for o in outcomes)
        await batcher.stop()

    asyncio.run(main())


def test_bounded_queue_timeout_and_drain_on_stop() -> None:
    async def main() -> None:
        fn = Recorder(delay_s=0.2)
        batcher = await started(fn, max_batch_size=1, max_wait_s=0.0, max_queue=2)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # 1 is running; the queue is empty
        queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(4)
        await asyncio.sleep(0.25)  # 1 is done, 2 is running, 3 waits: there is room again
        with pytest.raises(TimeoutError):
            await batcher.submit(5, timeout_s=0.01)
        await batcher.stop()  # finishes everything that was queued
        assert await first == 2 and [await q for q in queued] == [4, 6]
        assert 5 not in [x for call in fn.calls for x in call]  # the timed-out item was skipped, not run
        with pytest.raises(BatcherClosedError):
            await batcher.submit(6)

    asyncio.run(main())


def test_limits_are_validated_when_built() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Recorder(), max_batch_size=0, max_wait_s=0.0, max_queue=1)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batcher(Recorder(), max_batch_size=1, max_wait_s=-1.0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        Batcher(Recorder(), max_batch_size=1, max_wait_s=0.0, max_queue=0)
