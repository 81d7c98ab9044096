"""Reused buffers: a pool keyed by shape, dtype, device and pinning, and pinned host -> device uploads.

Allocation is cheap on a warm CUDA caching allocator but pinned host memory is not (``cudaHostAlloc`` takes
milliseconds), and fixed input/output buffers are what CUDA graphs and ONNX Runtime IO binding need. The pool
hands out a free buffer of the exact key or allocates one; callers give it back with :meth:`BufferPool.release`.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["BufferKey", "BufferPool", "PinnedUploader", "PoolStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BufferKey:
    """What makes two buffers interchangeable."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    pinned: bool = False


@dataclass
class PoolStats:
    """How often the pool reused a buffer (hits) or had to allocate one (misses)."""

    hits: int = 0
    misses: int = 0


Allocator = Callable[[BufferKey], torch.Tensor]


def _allocate(key: BufferKey) -> torch.Tensor:
    return torch.empty(key.shape, dtype=key.dtype, device=key.device, pin_memory=key.pinned)


class BufferPool:
    """Free buffers per :class:`BufferKey`; at most ``max_free_per_key`` are kept, the rest are dropped."""

    def __init__(self, *, max_free_per_key: int = 4, allocator: Allocator = _allocate) -> None:
        if max_free_per_key < 1:
            raise ValueError(f"max_free_per_key must be >= 1, got {max_free_per_key}")
        self.max_free_per_key = max_free_per_key
        self.stats = PoolStats()
        self._allocator = allocator
        self._free: dict[BufferKey, list[torch.Tensor]] = defaultdict(list)
        self._lock = threading.Lock()

    @staticmethod
    def key_of(tensor: torch.Tensor) -> BufferKey:
        """The key a tensor was (or would be) pooled under."""
        pinned = tensor.device.type == "cpu" and tensor.is_pinned()
        return BufferKey(tuple(tensor.shape), tensor.dtype, str(tensor.device), pinned)

    def acquire(
        self,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        *,
        pinned: bool = False,
    ) -> torch.Tensor:
        """A contiguous buffer of this shape/dtype/device (uninitialised): a reused one when free, else a new one."""
        key = BufferKey(tuple(int(s) for s in shape), dtype, str(torch.device(device)), pinned)
        with self._lock:
            free = self._free.get(key)
            if free:
                self.stats.hits += 1
                return free.pop()
            self.stats.misses += 1
        return self._allocator(key)

    def release(self, tensor: torch.Tensor, key: BufferKey | None = None) -> None:
        """Give a buffer back for reuse (the caller must not touch it afterwards)."""
        key = key or self.key_of(tensor)
        with self._lock:
            free = self._free[key]
            if len(free) < self.max_free_per_key and all(t.data_ptr() != tensor.data_ptr() for t in free):
                free.append(tensor)

    def free_count(self, key: BufferKey | None = None) -> int:
        """Buffers waiting for reuse (under ``key``, or in all)."""
        if key is not None:
            return len(self._free.get(key, ()))
        return sum(len(v) for v in self._free.values())

    def clear(self) -> None:
        """Drop every free buffer."""
        self._free.clear()


class _Event(Protocol):
    def query(self) -> bool: ...


class PinnedUploader:
    """Host pixels -> device through pinned staging buffers, copied non-blocking on a dedicated CUDA stream.

    The compute stream waits on the copy's event (no host synchronisation); a staging buffer goes back to the pool
    once its copy has finished. On a CPU device :meth:`upload` returns its input unchanged.
    """

    def __init__(self, device: torch.device, pool: BufferPool | None = None) -> None:
        self.device = device
        self.pool = pool or BufferPool()
        self._in_flight: list[tuple[_Event, torch.Tensor, BufferKey]] = []
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        """A host tensor -> the same values on :attr:`device` (ordered before later work on the current stream)."""
        if self._stream is None:
            return pixels.to(self.device)
        self.reap()
        staging = self.pool.acquire(pixels.shape, pixels.dtype, "cpu", pinned=True)
        staging.copy_(pixels)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            on_device = torch.empty(pixels.shape, dtype=pixels.dtype, device=self.device)
            on_device.copy_(staging, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        compute.wait_event(done)
        on_device.record_stream(compute)  # freed tensors must wait for the compute stream's use
        self.track(done, staging)
        return on_device

    def track(self, event: _Event, staging: torch.Tensor) -> None:
        """Remember a staging buffer that is busy until ``event`` completes."""
        self._in_flight.append((event, staging, BufferPool.key_of(staging)))

    def reap(self) -> int:
        """Return the staging buffers whose copies have completed to the pool; the number still in flight."""
        still = []
        for event, staging, key in self._in_flight:
            if event.query():
                self.pool.release(staging, key)
            else:
                still.append((event, staging, key))
        self._in_flight = still
        return len(still)
