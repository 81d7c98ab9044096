"""Jobs for long work: states and their events (for server-sent events), a store that keeps finished results for a
while within a memory cap, and the admission queue that bounds how many reconstructions run at once by memory.

Everything here lives on the event loop (no locks): the work itself runs in worker threads and reports back on
the loop, so events are appended and listeners woken from one thread only.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .batching import QueueFullError

__all__ = [
    "TERMINAL",
    "Admission",
    "Job",
    "JobEvent",
    "JobGoneError",
    "JobState",
    "JobStore",
    "Ticket",
    "owner_of",
]


class JobState(StrEnum):
    """A reconstruct job's states, in the order a successful job passes them."""

    QUEUED = "queued"
    DETECTING = "detecting"
    GEOMETRY = "geometry"
    TEXTURE = "texture"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

_SPANS: dict[JobState, tuple[float, float]] = {
    JobState.QUEUED: (0.0, 0.0),
    JobState.DETECTING: (0.0, 0.2),
    JobState.GEOMETRY: (0.2, 0.45),
    JobState.TEXTURE: (0.45, 0.9),
    JobState.EXPORTING: (0.9, 1.0),
    JobState.DONE: (1.0, 1.0),
}
"""Overall progress (0..1) at the start and end of each stage, roughly by where a one-face job spends its time."""


class JobGoneError(LookupError):
    """No such job: never created, deleted, or expired (the message says which, when it is known)."""


def owner_of(api_key: str | None) -> str | None:
    """Who owns a job: a digest of the API key it was created with (None when the server has no keys)."""
    return None if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobEvent:
    """One state change (``kind="stage"``) or progress step within a stage (``kind="progress"``)."""

    id: int
    kind: str
    state: JobState
    progress: float
    done: int
    total: int
    faces: int | None
    error: dict[str, str] | None
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "progress": round(self.progress, 4),
            "done": self.done,
            "total": self.total,
            "faces": self.faces,
            "error": self.error,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


class Job:
    """A unit of long work: its state, its event log (replayed to every listener), its result or error."""

    def __init__(self, kind: str, owner: str | None) -> None:
        self.id = secrets.token_urlsafe(12)
        self.kind = kind
        self.owner = owner
        self.created = time.time()
        self._start = time.perf_counter()
        self._stage_start = self._start
        self.state = JobState.QUEUED
        self.done = 0
        self.total = 0
        self.faces: int | None = None
        self.error: dict[str, str] | None = None
        self.result: Any = None
        self.result_bytes = 0
        self.finished_at: float | None = None
        self.timings_ms: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()
        self._emit("stage")

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def progress(self) -> float:
        low, high = _SPANS.get(self.state, (1.0, 1.0))
        return low + (high - low) * (self.done / self.total if self.total else 0.0)

    def advance(self, state: JobState, total: int = 0) -> None:
        """Enter ``state`` (a stage event); the time spent in the previous stage goes to ``timings_ms``."""
        if self.finished or state == self.state:
            return
        self._close_stage()
        self.state, self.done, self.total = state, 0, total
        self._emit("stage")

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` items of the current stage finished (a progress event)."""
        if self.finished:
            return
        self.done, self.total = done, total
        self._emit("progress")

    def succeed(self, result: Any, *, nbytes: int, faces: int) -> None:
        if self.finished:
            return
        self._close_stage()
        self.result, self.result_bytes, self.faces = result, nbytes, faces
        self._end(JobState.DONE)

    def fail(self, code: str, message: str) -> None:
        if self.finished:
            return
        self._close_stage()
        self.error = {"code": code, "message": message}
        self._end(JobState.FAILED)

    def cancel(self) -> bool:
        """Cancel unfinished work (its task stops at its next await); False when the job had already finished."""
        if self.finished:
            return False
        self._close_stage()
        self.error = {"code": "cancelled", "message": "the job was cancelled"}
        self._end(JobState.CANCELLED)
        if self.task is not None:
            self.task.cancel()
        return True

    def _end(self, state: JobState) -> None:
        self.state, self.done, self.total = state, self.total, self.total
        self.finished_at = time.monotonic()
        self.timings_ms["total"] = round((time.perf_counter() - self._start) * 1e3, 3)
        self._emit("stage")

    def _close_stage(self) -> None:
        now = time.perf_counter()
        seconds = now - self._stage_start
        self.timings_ms[self.state.value] = round(self.timings_ms.get(self.state.value, 0.0) + seconds * 1e3, 3)
        self._stage_start = now

    def _emit(self, kind: str) -> None:
        elapsed = (time.perf_counter() - self._start) * 1e3
        event = JobEvent(
            len(self.events), kind, self.state, self.progress, self.done, self.total, self.faces, self.error, elapsed
        )
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every listener waiting on the old event

    async def follow(self, after: int = -1) -> AsyncIterator[JobEvent]:
        """Every event with an id above ``after``, then new ones as they come, until the terminal one."""
        next_id = max(after + 1, 0)
        while True:
            if next_id >= len(self.events) and self.finished:
                return  # e.g. a client resuming after the terminal event: nothing more will come
            waiter = self._changed
            while next_id < len(self.events):
                event = self.events[next_id]
                next_id += 1
                yield event
                if event.state in TERMINAL:
                    return
            await waiter.wait()

    def to_dict(self) -> dict[str, Any]:
        base = f"/v1/jobs/{self.id}"
        latest = self.events[-1].to_dict()  # every change emits an event, so the last one is the current state
        del latest["elapsed_ms"]
        return {
            "id": self.id,
            "kind": self.kind,
            **latest,
            "created": self.created,
            "timings_ms": dict(self.timings_ms),
            "urls": {
                "self": base,
                "events": f"{base}/events",
                "result": f"{base}/result",
                "texture": f"{base}/texture",
            },
        }


class JobStore:
    """Jobs by id. Finished ones are kept for ``ttl_s`` and within ``max_results`` / ``max_result_bytes`` (the
    oldest go first); a job that was dropped answers with why, for a while, instead of a bare 404."""

    def __init__(self, *, ttl_s: float, max_results: int, max_result_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self._jobs: dict[str, Job] = {}
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()

    def add(self, job: Job) -> Job:
        self.sweep()
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str, owner: str | None) -> Job:
        """The job, or JobGoneError (another API key's job is as unknown as a missing one)."""
        self.sweep()
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            reason = self._gone.get(job_id) if job is None else None
            raise JobGoneError(reason or f"no job {job_id!r}: unknown id, or created with another API key")
        return job

    def remove(self, job: Job, reason: str) -> None:
        if self._jobs.pop(job.id, None) is not None:
            self._forget(job.id, reason)

    def count(self, state: JobState) -> int:
        return sum(1 for job in self._jobs.values() if job.state == state)

    @property
    def result_bytes(self) -> int:
        return sum(job.result_bytes for job in self._jobs.values() if job.finished)

    def sweep(self) -> None:
        """Drop finished jobs past their TTL, then the oldest finished ones while over the count or memory cap."""
        now = time.monotonic()
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.finished_at or 0.0)
        for job in finished:
            if now - (job.finished_at or now) > self.ttl_s:
                self.remove(job, f"job {job.id!r} expired: results are kept {self.ttl_s:g} s after the job ends")
        finished = [j for j in finished if j.id in self._jobs]
        held = sum(j.result_bytes for j in finished)
        while finished and (len(finished) > self.max_results or held > self.max_result_bytes):
            job = finished.pop(0)
            held -= job.result_bytes
            self.remove(job, f"job {job.id!r} expired: newer results pushed it out of the server's result cache")

    def _forget(self, job_id: str, reason: str) -> None:
        self._gone[job_id] = reason
        while len(self._gone) > 4096:
            self._gone.popitem(last=False)


class Ticket:
    """A place in the admission queue for one reconstruction of estimated size ``cost_mb``: ``async with`` it to
    wait for its turn; leaving (or cancelling the wait) gives the place back."""

    def __init__(self, admission: Admission, cost_mb: float) -> None:
        self.admission = admission
        self.cost_mb = min(cost_mb, admission.budget_mb)  # a job bigger than the whole budget runs alone
        self.queued_at = time.perf_counter()
        self.waited_s = 0.0
        self._future: asyncio.Future[None] | None = None
        self._running = False
        self._closed = False

    async def __aenter__(self) -> Ticket:
        admission = self.admission
        if admission.fits(self) and not admission.waiting:
            admission.start(self)
        else:
            self._future = asyncio.get_running_loop().create_future()
            admission.waiting.append(self)
            try:
                await self._future
            except BaseException:
                if self._running:  # admitted just as the wait was cancelled
                    admission.finish(self)
                else:
                    admission.waiting.remove(self)
                    admission.outstanding -= 1
                    admission.wake()
                self._closed = True
                raise
        self.waited_s = time.perf_counter() - self.queued_at
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._closed:
            self.admission.finish(self)
            self._closed = True

    def abandon(self) -> None:
        """Give the place back without having entered (e.g. the request failed before its work started)."""
        if not self._closed and not self._running and self._future is None:
            self.admission.outstanding -= 1
            self._closed = True


class Admission:
    """A bounded FIFO queue in front of the reconstructions: at most ``max_outstanding`` admitted (waiting or
    running; more get QueueFullError, i.e. 429), and the running ones within ``budget_mb`` of estimated memory
    and ``max_running`` in number. First come, first served: a big job at the head is not overtaken."""

    def __init__(
        self,
        *,
        budget_mb: float,
        max_running: int,
        max_outstanding: int,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.on_idle = on_idle
        """Called when the last running reconstruction ends and none waits (e.g. to hand freed memory back)."""
        self.budget_mb = budget_mb
        self.max_running = max_running
        self.max_outstanding = max_outstanding
        self.outstanding = 0
        self.running = 0
        self.used_mb = 0.0
        self.waiting: collections.deque[Ticket] = collections.deque()

    def ticket(self, cost_mb: float) -> Ticket:
        """A place in the queue, or QueueFullError when ``max_outstanding`` are already admitted."""
        if self.outstanding >= self.max_outstanding:
            raise QueueFullError(f"{self.outstanding} reconstructions already admitted (limit {self.max_outstanding})")
        self.outstanding += 1
        return Ticket(self, cost_mb)

    def fits(self, ticket: Ticket) -> bool:
        return self.running < self.max_running and self.used_mb + ticket.cost_mb <= self.budget_mb + 1e-9

    def start(self, ticket: Ticket) -> None:
        ticket._running = True
        self.running += 1
        self.used_mb += ticket.cost_mb

    def finish(self, ticket: Ticket) -> None:
        self.running -= 1
        self.used_mb -= ticket.cost_mb
        self.outstanding -= 1
        self.wake()
        if self.running == 0 and not self.waiting and self.on_idle is not None:
            self.on_idle()

    def wake(self) -> None:
        while self.waiting and self.fits(self.waiting[0]):
            ticket = self.waiting.popleft()
            self.start(ticket)
            if ticket._future is not None and not ticket._future.done():
                ticket._future.set_result(None)
