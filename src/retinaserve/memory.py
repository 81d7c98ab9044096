"""Peak memory of a piece of work, measured: CUDA allocator statistics on a GPU, resident set size on CPU.

On CUDA, ``peak_allocated`` is what tensors used at most and ``peak_reserved`` what the caching allocator held.
On CPU (Linux), ``peak_rss`` is the process' high-water mark since :func:`reset_peak_memory` (via
``/proc/self/clear_refs``) and ``rss`` its current resident size; elsewhere the CPU figures are absent.
"""

from __future__ import annotations

import ctypes
import logging
import re
from pathlib import Path

import torch

__all__ = ["limit_heap_arenas", "memory_mb", "process_rss_mb", "reset_peak_memory", "trim_heap"]

log = logging.getLogger(__name__)

_MIB = float(1 << 20)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA peak statistics of ``device``, or the process' RSS high-water mark on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def process_rss_mb() -> dict[str, float]:
    """``{"rss": current, "peak_rss": high-water mark}`` of this process in MiB; empty where /proc is absent."""
    try:
        status = _STATUS.read_text()
    except OSError:
        return {}
    values = {}
    for key, name in (("VmRSS", "rss"), ("VmHWM", "peak_rss")):
        match = re.search(rf"^{key}:\s+(\d+) kB", status, flags=re.MULTILINE)
        if match:
            values[name] = int(match[1]) / 1024.0
    return values


def memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory since the last :func:`reset_peak_memory` on ``device``, in MiB (see the module docstring)."""
    if device.type == "cuda":
        return {
            "peak_allocated": torch.cuda.max_memory_allocated(device) / _MIB,
            "peak_reserved": torch.cuda.max_memory_reserved(device) / _MIB,
            "allocated": torch.cuda.memory_allocated(device) / _MIB,
            "reserved": torch.cuda.memory_reserved(device) / _MIB,
        }
    return process_rss_mb()


_M_ARENA_MAX = -8  # glibc mallopt parameter


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_heap_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas (one per thread by default), which otherwise keep freed image buffers of every
    worker thread resident; call before threads start. False where glibc is absent."""
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, count))
    except AttributeError:
        return False


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), e.g. after decoding a very large image."""
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
