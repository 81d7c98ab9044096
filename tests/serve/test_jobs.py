"""The job machinery on its own: admission by memory budget (FIFO, bounded, cancellation-safe), job events and
their replay, and the result store's TTL and caps."""

from __future__ import annotations

import asyncio
import time

import pytest

from retinaserve.serve.batching import QueueFullError
from retinaserve.serve.jobs import Admission, Job, JobGoneError, JobState, JobStore, owner_of


def test_admission_budget_fifo_and_bound() -> None:
    async def scenario() -> list[str]:
        admission = Admission(budget_mb=100, max_running=3, max_outstanding=4)
        order: list[str] = []

        async def job(name: str, cost: float, hold_s: float) -> None:
            ticket = admission.ticket(cost)
            async with ticket:
                order.append(f"start {name}")
                assert admission.used_mb <= 100
                await asyncio.sleep(hold_s)
            order.append(f"end {name}")

        tasks = [asyncio.create_task(job("a", 60, 0.05))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("big", 70, 0.01)))  # does not fit beside a: waits
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("small", 10, 0.01)))  # would fit, but is not overtaking big
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(job("huge", 500, 0.01)))  # over the whole budget: runs alone
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            admission.ticket(1)
        await asyncio.gather(*tasks)
        assert (admission.outstanding, admission.running, admission.used_mb) == (0, 0, 0)
        return order

    order = asyncio.run(scenario())
    assert order.index("end a") < order.index("start big") < order.index("start small")
    assert order.index("start huge") > order.index("end big")
    assert order.index("start huge") > order.index("end small")


def test_admission_wait_cancelled_gives_the_place_back() -> None:
    async def scenario() -> None:
        admission = Admission(budget_mb=10, max_running=1, max_outstanding=2)
        first = admission.ticket(5)
        await first.__aenter__()
        second = admission.ticket(5)
        waiter = asyncio.create_task(second.__aenter__())
        await asyncio.sleep(0.01)
        assert len(admission.waiting) == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (admission.outstanding, len(admission.waiting)) == (1, 0)
        third = admission.ticket(5)  # the place is free again
        third.abandon()
        await first.__aexit__(None, None, None)
        assert (admission.outstanding, admission.running, admission.used_mb) == (0, 0, 0)

    asyncio.run(scenario())


def test_job_events_replay_and_follow() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        job = Job("reconstruct", owner_of("key"))
        job.advance(JobState.DETECTING, 1)
        early = [e.state.value async for e in _take(job.follow(), 2)]

        async def later() -> list[str]:
            return [f"{e.kind}:{e.state.value}" async for e in job.follow(after=1)]

        listener = asyncio.create_task(later())
        await asyncio.sleep(0)
        job.advance(JobState.GEOMETRY, 2)
        job.step(1, 2)
        job.step(2, 2)
        job.succeed(object(), nbytes=10, faces=2)
        job.step(3, 3)  # after the end: ignored
        return early, await listener

    early, later = asyncio.run(scenario())
    assert early == ["queued", "detecting"]
    assert later == ["stage:geometry", "progress:geometry", "progress:geometry", "stage:done"]


async def _take(iterator, n):  # type: ignore[no-untyped-def]
    count = 0
    async for item in iterator:
        yield item
        count += 1
        if count == n:
            return


def test_store_ttl_caps_and_owners() -> None:
    async def scenario() -> None:
        store = JobStore(ttl_s=0.2, max_results=2, max_result_bytes=1000)
        jobs = [store.add(Job("reconstruct", None)) for _ in range(4)]
        for job in jobs[:3]:
            job.succeed(None, nbytes=400, faces=1)
            time.sleep(0.01)
        store.sweep()  # three finished, 1200 bytes: the oldest goes (count 2 and bytes 800 are then within caps)
        with pytest.raises(JobGoneError, match="pushed it out"):
            store.get(jobs[0].id, None)
        assert store.get(jobs[1].id, None) is jobs[1]
        with pytest.raises(JobGoneError, match="another API key"):
            store.get(jobs[1].id, owner_of("someone"))
        time.sleep(0.25)
        with pytest.raises(JobGoneError, match="expired"):
            store.get(jobs[2].id, None)
        assert store.get(jobs[3].id, None).state == JobState.QUEUED  # unfinished jobs never expire

    asyncio.run(scenario())
