"""The memory planner: measure each model x precision x input size at a few batch sizes, fit
``peak(batch) = fixed + per_image * batch``, and answer the largest batch and the number of concurrent streams
that fit a budget, and which lighter model to fall back to when memory is short.

A stream is one in-flight batch sharing the process' single copy of the weights: ``streams = (budget - weights)
// (fixed - weights + per_image * batch)``. On CUDA the numbers are the allocator's peak; on CPU they are the
resident set size the configuration adds (:mod:`retinaserve.bench` explains both).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from ..memory import memory_mb, process_rss_mb, reset_peak_memory
from ..registry import get_model_spec
from ..tables import format_table
from .bench import _memory_baseline, _release_memory
from .errors import EngineError
from .factory import EngineConfig, create_backend, resolve_engine

__all__ = [
    "Footprint",
    "choose_model",
    "fit_footprint",
    "format_plan_table",
    "largest_batch",
    "measure_footprint",
    "parse_bytes",
    "streams_that_fit",
]

log = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"16GiB"``, ``"16G"``, ``"512MiB"``, ``"1.5 gb"`` -> bytes (binary units throughout)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"expected a size such as 16GiB or 512MiB, got {text!r}")
    return int(float(match[1]) * _UNITS[match[2]])


@dataclass(frozen=True)
class Footprint:
    """Measured memory of one model x backend x precision x input size (MiB), and the fitted linear model."""

    model: str
    backend: str
    precision: str
    input: tuple[int, int]
    device: str
    weights_mb: float
    """What building the backend added: weights, runtime context, sessions."""
    fixed_mb: float
    """Intercept of the fit: weights plus workspace that does not grow with the batch."""
    per_image_mb: float
    """Slope of the fit: activations per image in the batch."""
    measured_mb: dict[int, float]
    """Batch size -> measured peak."""

    def peak_mb(self, batch: int) -> float:
        """Predicted peak for one stream at ``batch``."""
        return self.fixed_mb + self.per_image_mb * batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_footprint(measured: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``peak = fixed + per_image * batch`` over the measured batches; slope clamped at >= 0."""
    if not measured:
        raise ValueError("no measurements to fit")
    batches = np.array(sorted(measured), dtype=float)
    peaks = np.array([measured[int(b)] for b in batches])
    if len(batches) == 1:
        return float(peaks[0]), 0.0
    slope, _intercept = np.polyfit(batches, peaks, 1)
    slope = max(0.0, float(slope))
    return float(np.max(peaks - slope * batches)), slope  # conservative intercept: no measured point above the line


def largest_batch(footprint: Footprint, budget_mb: float, *, headroom: float = 0.1, limit: int = 4096) -> int:
    """The largest batch whose predicted peak fits ``budget_mb`` less ``headroom`` (0 when not even batch 1 fits)."""
    usable = budget_mb * (1.0 - headroom)
    if footprint.peak_mb(1) > usable:
        return 0
    if footprint.per_image_mb <= 0:
        return limit
    return int(min(limit, math.floor((usable - footprint.fixed_mb) / footprint.per_image_mb)))


def streams_that_fit(footprint: Footprint, budget_mb: float, batch: int, *, headroom: float = 0.1) -> int:
    """Concurrent streams of ``batch`` images sharing one copy of the weights within the budget."""
    usable = budget_mb * (1.0 - headroom) - footprint.weights_mb
    per_stream = max(footprint.peak_mb(batch) - footprint.weights_mb, 1e-6)
    return max(0, math.floor(usable / per_stream))


def choose_model(
    footprints: Sequence[Footprint], budget_mb: float, *, batch: int = 1, headroom: float = 0.1
) -> tuple[Footprint, str]:
    """The most accurate model (reported WIDER hard AP) whose ``batch`` fits; says what was skipped and why."""

    def accuracy(fp: Footprint) -> float:
        spec = get_model_spec(fp.model)
        return spec.accuracy.hard if spec.accuracy else 0.0

    skipped: list[str] = []
    for fp in sorted(footprints, key=lambda f: (-accuracy(f), f.peak_mb(batch))):
        if largest_batch(fp, budget_mb, headroom=headroom) >= batch:
            note = f"; skipped {', '.join(skipped)}" if skipped else ""
            return fp, (
                f"picked {fp.model} {fp.backend}/{fp.precision}: needs {fp.peak_mb(batch):.0f} MiB at batch {batch} "
                f"of {budget_mb:.0f} MiB{note}"
            )
        skipped.append(f"{fp.model} {fp.backend}/{fp.precision} ({fp.peak_mb(batch):.0f} MiB)")
    raise EngineError(f"no model fits {budget_mb:.0f} MiB at batch {batch}: {', '.join(skipped)}")


def measure_footprint(
    model: str,
    config: EngineConfig,
    input_size: tuple[int, int] = (640, 640),
    batches: Sequence[int] = (1, 2, 4),
) -> Footprint:
    """Build the backend and run one forward pass per batch size (ascending), measuring peak memory each time."""
    choice = resolve_engine(config)
    device = choice.device
    before = _memory_baseline(device)
    backend = create_backend(model, config)
    after = _memory_baseline(device)
    width, height = input_size
    measured: dict[int, float] = {}
    for batch in sorted(batches):
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0)).mul_(60).to(device)
        _release_memory()
        reset_peak_memory(device)
        outputs = backend.forward(x)
        backend.synchronize()
        backend.release(outputs)
        stats = memory_mb(device)
        if device.type == "cuda":
            if choice.backend == "onnx":
                free, total = torch.cuda.mem_get_info(device)
                peak = (total - free) / float(1 << 20) - before
            else:
                peak = stats["peak_allocated"] - before
        else:
            peak = stats.get("peak_rss", process_rss_mb().get("rss", 0.0)) - before
        measured[batch] = peak
        del x, outputs
    fixed, per_image = fit_footprint(measured)
    footprint = Footprint(
        model, choice.backend, choice.precision, input_size, str(device), after - before, fixed, per_image, measured
    )
    log.info("footprint %s", footprint)
    return footprint


def format_plan_table(
    footprints: Sequence[Footprint], budget_mb: float, *, batch: int = 8, headroom: float = 0.1
) -> str:
    """One line per footprint: measured numbers, largest batch and streams of ``batch`` within the budget."""
    header = (
        "model",
        "backend",
        "precision",
        "input",
        "weights MiB",
        "fixed MiB",
        "MiB/image",
        "peak@1",
        "max batch",
        f"streams@{batch}",
    )
    rows = [
        (
            f.model,
            f.backend,
            f.precision,
            f"{f.input[0]}x{f.input[1]}",
            f"{f.weights_mb:.0f}",
            f"{f.fixed_mb:.0f}",
            f"{f.per_image_mb:.1f}",
            f"{f.peak_mb(1):.0f}",
            str(largest_batch(f, budget_mb, headroom=headroom)),
            str(streams_that_fit(f, budget_mb, batch, headroom=headroom)),
        )
        for f in footprints
    ]
    return format_table(header, rows)


def measure_all(
    models: Sequence[str],
    variants: Sequence[tuple[str, str]],
    input_sizes: Sequence[tuple[int, int]],
    *,
    device: str = "auto",
    batches: Sequence[int] = (1, 2, 4),
    random_weights: bool = True,
    base: EngineConfig | None = None,
) -> list[Footprint]:
    """Footprints for every model x (backend, precision) x input size; what the device cannot run is skipped."""
    base = base or EngineConfig()
    footprints = []
    for model in models:
        for backend, precision in variants:
            config = replace(base, backend=backend, precision=precision, device=device, random_weights=random_weights)  # type: ignore[arg-type]
            for size in input_sizes:
                try:
                    footprints.append(measure_footprint(model, config, size, batches))
                except EngineError as exc:
                    log.warning("not planned: %s %s/%s: %s", model, backend, precision, exc)
    return footprints
