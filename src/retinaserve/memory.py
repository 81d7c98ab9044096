"""Peak memory of a piece of work, measured: CUDA allocator statistics on a GPU, resident set size on CPU.

On CUDA, ``peak_allocated`` is what tensors used at most and ``peak_reserved`` what the caching allocator held.
On CPU (Linux), ``peak_rss`` is the process' high-water mark since :func:`reset_peak_memory` (via
``/proc/self/clear_refs``) and ``rss`` its current resident size; elsewhere the CPU figures are absent.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import resource
from pathlib import Path

import torch

__all__ = [
    "ALLOCATOR_SETTINGS",
    "limit_heap_arenas",
    "memory_mb",
    "minor_faults",
    "process_rss_mb",
    "reset_peak_memory",
    "trim_heap",
    "tune_allocator",
]

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


_M_ARENA_MAX = -8  # glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

ALLOCATOR_SETTINGS = {"mmap_threshold": 32 << 20, "trim_threshold": 256 << 20, "top_pad": 128 << 20}
"""glibc malloc settings for torch's CPU paths, chosen by measurement (retinaface-mnv2, eager FP32, 640x640, 2-core
EPYC, ``benchmarks/allocator.py``). By default glibc serves each activation of a few MiB with a fresh ``mmap`` (or
trims the heap top right after it is freed), so every forward pass faults its pages in again: 61-88 k minor faults
per call. Serving them from the heap (mmap threshold at glibc's 32 MiB ceiling), keeping 256 MiB of free heap
before trimming and growing the heap 128 MiB at a time gives zero faults per call. Memory still goes back to the OS
through :func:`trim_heap`, which the server calls after large images and when it goes idle."""

_tuned: dict[str, int] | None = None


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


def tune_allocator(settings: dict[str, int] | None = None) -> dict[str, int]:
    """Apply :data:`ALLOCATOR_SETTINGS` to glibc malloc, once per process (the CLI, the server and the benchmarks
    call it at start; library users may too). Returns what was applied: empty where glibc is absent, or when
    ``RETINASERVE_TUNE_MALLOC=0`` asks to leave malloc alone."""
    global _tuned
    if _tuned is not None:
        return _tuned
    applied: dict[str, int] = {}
    libc = _libc()
    if libc is not None and os.environ.get("RETINASERVE_TUNE_MALLOC", "1") != "0":
        codes = {"mmap_threshold": _M_MMAP_THRESHOLD, "trim_threshold": _M_TRIM_THRESHOLD, "top_pad": _M_TOP_PAD}
        for name, value in (settings or ALLOCATOR_SETTINGS).items():
            try:
                if libc.mallopt(codes[name], value):
                    applied[name] = value
            except AttributeError:  # a libc without mallopt (musl)
                break
    log.debug("malloc settings applied: %s", applied or "none")
    _tuned = applied
    return applied


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``): a forward pass that faults in its memory afresh
    each call shows here."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), e.g. after decoding a very large image."""
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
