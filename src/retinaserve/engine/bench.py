"""The benchmark: every model x backend x precision x batch x input size on real photos, against the FP32 torch
batch-1 baseline measured in the same run; and the parity check of each backend/precision against FP32 torch.

A call is ``Detector.run`` on already decoded photos (copy, pre-process, forward, post-process); latency
percentiles are over ``repeats`` calls after ``warmup`` calls; throughput is batch / median latency. Peak memory is
what the configuration adds to the process: on CUDA the allocator's peak, on CPU the peak resident set size during
the calls minus the resident size before the backend was built.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

from ..detection import Detector, ResizePolicy
from ..images import load_image
from ..memory import memory_mb, process_rss_mb, reset_peak_memory, trim_heap
from ..registry import get_model_spec
from ..tables import format_table
from .errors import EngineError
from .factory import BackendName, EngineConfig, create_backend, resolve_engine
from .parity import ParityReport, compare_detections, detect_all, parity_views
from .precision import Precision

__all__ = [
    "BenchConfig",
    "BenchRow",
    "Variant",
    "default_variants",
    "format_bench_table",
    "plot_throughput",
    "run_benchmark",
    "run_parity",
    "write_json",
]

log = logging.getLogger(__name__)

BASELINE: tuple[BackendName, Precision] = ("torch-baseline", "fp32")


@dataclass(frozen=True)
class Variant:
    """One way of running a model: backend and precision."""

    backend: BackendName
    precision: Precision

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``"onnx/int8"`` -> Variant("onnx", "int8")."""
        from .precision import parse_precision

        backend, _, precision = text.partition("/")
        if backend not in ("torch", "onnx", "openvino", "torch-baseline"):
            raise ValueError(f"unknown backend {backend!r} in {text!r}; use torch, onnx, openvino or torch-baseline")
        return cls(backend, parse_precision(precision or "fp32"))  # type: ignore[arg-type]


def default_variants(device: torch.device) -> tuple[Variant, ...]:
    """What ``retinaserve bench`` measures by default on this device (only what the device can run)."""
    from .precision import cpu_has_native_bf16

    if device.type == "cuda":
        return tuple(
            Variant(b, p)  # type: ignore[arg-type]
            for b, p in [("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "fp16")]
        )
    variants = [Variant("torch", "fp32"), Variant("onnx", "fp32"), Variant("onnx", "int8")]
    if importlib.util.find_spec("openvino") is not None:
        variants.insert(2, Variant("openvino", "fp32"))
        if importlib.util.find_spec("nncf") is not None:
            variants.append(Variant("openvino", "int8"))
    if cpu_has_native_bf16():
        variants.insert(1, Variant("torch", "bf16"))
    return tuple(variants)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure (the defaults finish in a few minutes on a 2-core CPU)."""

    photos: tuple[Path, ...]
    models: tuple[str, ...] = ("retinaface-mnet025-edge",)
    variants: tuple[Variant, ...] = ()
    """Empty: :func:`default_variants` for the device. The baseline is always measured first."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    input_sizes: tuple[tuple[int, int], ...] = ((640, 640),)
    """(W, H): photos are letterboxed into each."""
    warmup: int = 3
    repeats: int = 10
    rounds: int = 3
    """Interleaved sweeps; p50 is the median of the rounds' medians, p90/p99 over all calls."""
    device: str = "auto"
    random_weights: bool = False
    """Random weights for every model (timing and memory only; parity then means nothing)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Further engine options (threads, compile, INT8 options); backend, precision and device are set per row."""


@dataclass(frozen=True)
class BenchRow:
    """One measured configuration (times in ms, memory in MiB)."""

    model: str
    backend: str
    precision: str
    batch: int
    input: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_ips: float
    peak_mem_mb: float
    speedup_vs_baseline: float
    device: str
    backend_detail: str
    weights: str
    stages_p50_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _release_memory() -> None:
    """Return freed memory to the OS, so that the next resident-size baseline is honest."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _measure(
    detector: Detector, images: list[np.ndarray], warmup: int, repeats: int, baseline_mb: float
) -> tuple[list[float], dict[str, float], float]:
    """Latencies (ms) of ``repeats`` calls, median per-stage ms, and the peak memory added (MiB)."""
    reset_peak_memory(detector.device)
    for _ in range(warmup):
        detector.run(images)
    latencies = []
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = detector.run(images)[0]
        latencies.append((time.perf_counter() - start) * 1e3)
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    memory = memory_mb(detector.device)
    if detector.device.type == "cuda":
        peak = memory["peak_reserved"] if detector.backend.name.startswith("onnx") else memory["peak_allocated"]
        if detector.backend.name.startswith("onnx"):
            free, total = torch.cuda.mem_get_info(detector.device)
            peak = (total - free) / float(1 << 20) - baseline_mb
    else:
        peak = memory.get("peak_rss", float("nan")) - baseline_mb
    return latencies, {k: median(v) for k, v in stages.items()}, peak


def _memory_baseline(device: torch.device) -> float:
    _release_memory()
    if device.type == "cuda":
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(device)
            return (total - free) / float(1 << 20)
        return 0.0
    return process_rss_mb().get("rss", float("nan"))


def run_benchmark(config: BenchConfig) -> list[BenchRow]:
    """Measure every configuration in ``rounds`` interleaved sweeps (so that a burst of background load hits one
    round, not one configuration); the FP32 torch batch-1 baseline of each model and input size comes first."""
    if not config.photos:
        raise EngineError("the benchmark needs photos: pass a folder of images")
    photos = [load_image(path) for path in config.photos]
    device = resolve_engine(replace(config.engine, device=config.device, backend="torch", precision="fp32")).device
    variants = [
        Variant(*BASELINE),
        *(v for v in config.variants or default_variants(device) if v != Variant(*BASELINE)),
    ]
    weights = "random" if config.random_weights else "real"
    latencies: dict[tuple[str, int, int, Variant, int], list[list[float]]] = {}
    stages: dict[tuple[str, int, int, Variant, int], list[dict[str, float]]] = {}
    peaks: dict[tuple[str, int, int, Variant, int], float] = {}
    details: dict[Variant, str] = {}
    for _ in range(config.rounds):
        for model in config.models:
            for variant in variants:
                engine = replace(
                    config.engine,
                    backend=variant.backend,
                    precision=variant.precision,
                    device=str(device),
                    random_weights=config.random_weights,
                    calibration_photos=config.engine.calibration_photos or config.photos,
                )
                baseline_mb = _memory_baseline(device)
                try:
                    backend = create_backend(model, engine)
                except EngineError as exc:
                    log.warning("skipping %s %s: %s", model, variant, exc)
                    continue
                details[variant] = backend.name
                batches = sorted({1, *config.batch_sizes}) if variant == Variant(*BASELINE) else config.batch_sizes
                for width, height in config.input_sizes:
                    for batch in batches:
                        detector = Detector(
                            model, backend=backend, resize=ResizePolicy(det_size=(width, height)), batch_size=batch
                        )
                        images = [photos[i % len(photos)] for i in range(batch)]
                        times, stage_ms, peak = _measure(detector, images, config.warmup, config.repeats, baseline_mb)
                        key = (model, width, height, variant, batch)
                        latencies.setdefault(key, []).append(times)
                        stages.setdefault(key, []).append(stage_ms)
                        peaks[key] = max(peaks.get(key, float("-inf")), peak)
                        log.info("%s %s b%d %dx%d: p50 %.1f ms", model, variant, batch, width, height, median(times))
                # drop every reference (the last Detector holds the backend too) before the next memory baseline
                detector = None  # type: ignore[assignment]
                del backend
    rows = []
    for (model, width, height, variant, batch), rounds in latencies.items():
        pooled = [t for times in rounds for t in times]
        p50 = median([median(times) for times in rounds])
        base_rounds = latencies.get((model, width, height, Variant(*BASELINE), 1))
        baseline_ips = 1e3 / median([median(t) for t in base_rounds]) if base_rounds else float("nan")
        key = (model, width, height, variant, batch)
        rows.append(
            BenchRow(
                model=model,
                backend=variant.backend,
                precision=variant.precision,
                batch=batch,
                input=f"{width}x{height}",
                p50_ms=p50,
                p90_ms=_percentile(pooled, 90),
                p99_ms=_percentile(pooled, 99),
                throughput_ips=batch * 1e3 / p50,
                peak_mem_mb=peaks[key],
                speedup_vs_baseline=(batch * 1e3 / p50) / baseline_ips,
                device=str(device),
                backend_detail=details[variant],
                weights=weights,
                stages_p50_ms={k: median([s[k] for s in stages[key]]) for k in stages[key][0]},
            )
        )
    return rows


def run_parity(
    photos: Sequence[Path],
    *,
    models: Sequence[str] = ("retinaface-mnet025-edge",),
    variants: Sequence[Variant] = (),
    input_size: tuple[int, int] = (640, 640),
    device: str = "auto",
    low_threshold: float = 0.05,
    engine: EngineConfig | None = None,
) -> list[ParityReport]:
    """Each variant's detections against FP32 torch (the baseline) on the photos, their mirrors and half-size copies."""
    engine = engine or EngineConfig()
    images = parity_views([load_image(path) for path in photos])
    resolved = resolve_engine(replace(engine, device=device, backend="torch", precision="fp32")).device
    variants = list(variants) or list(default_variants(resolved))
    reports = []
    for model in models:
        spec = get_model_spec(model)
        resize = ResizePolicy(det_size=input_size)

        def detector_for(variant: Variant, model: str = model, resize: ResizePolicy = resize) -> Detector:
            config = replace(
                engine,
                backend=variant.backend,
                precision=variant.precision,
                device=str(resolved),
                calibration_photos=engine.calibration_photos or tuple(photos),
            )
            return Detector(model, backend=create_backend(model, config), resize=resize)

        reference = detect_all(detector_for(Variant(*BASELINE)), images, low_threshold)
        for variant in variants:
            try:
                candidate = detect_all(detector_for(variant), images, low_threshold)
            except EngineError as exc:
                log.warning("skipping %s %s: %s", model, variant, exc)
                continue
            reports.append(
                compare_detections(
                    reference,
                    candidate,
                    threshold=spec.default_threshold,
                    model=model,
                    backend=variant.backend,
                    precision=variant.precision,
                )
            )
    return reports


def format_bench_table(rows: Sequence[BenchRow]) -> str:
    """A plain-text table: one line per row, the baseline ratio last."""
    header = (
        "model",
        "backend",
        "precision",
        "batch",
        "input",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "peak MiB",
        "vs baseline",
    )
    lines = [
        (
            r.model,
            r.backend,
            r.precision,
            str(r.batch),
            r.input,
            f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.throughput_ips:.1f}",
            f"{r.peak_mem_mb:.0f}",
            f"{r.speedup_vs_baseline:.2f}x",
        )
        for r in rows
    ]
    return format_table(header, lines)


def format_floor_table(rows: Sequence[BenchRow], peak_gflops: float) -> str:
    """Each row's time per image and forward time per image as multiples of the hardware floor (see
    :mod:`retinaserve.engine.floor`) and of the eager baseline."""
    from .floor import floor_ms, network_gflops

    header = (
        "model",
        "backend",
        "precision",
        "batch",
        "input",
        "GFLOP",
        "floor ms",
        "ms/img",
        "x floor",
        "fwd x floor",
    )
    lines = []
    for r in rows:
        width, height = (int(v) for v in r.input.split("x"))
        gflops = network_gflops(r.model, width, height)
        floor = floor_ms(gflops, peak_gflops)
        per_image = r.p50_ms / r.batch
        forward = r.stages_p50_ms.get("forward", float("nan")) / r.batch
        lines.append(
            (
                r.model,
                r.backend,
                r.precision,
                str(r.batch),
                r.input,
                f"{gflops:.2f}",
                f"{floor:.1f}",
                f"{per_image:.1f}",
                f"{per_image / floor:.2f}x",
                f"{forward / floor:.2f}x",
            )
        )
    return format_table(header, lines)


def machine_description() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, threads, GPU, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def write_json(path: Path, rows: Sequence[BenchRow], parity: Sequence[ParityReport] = (), **meta: Any) -> None:
    """``{"machine": ..., "meta": ..., "rows": [...], "parity": [...]}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine_description(),
        "meta": meta,
        "rows": [row.to_dict() for row in rows],
        "parity": [report.to_dict() for report in parity],
    }
    path.write_text(json.dumps(document, indent=1, default=str))


def plot_throughput(path: Path, rows: Sequence[BenchRow]) -> None:
    """Throughput vs batch size, one line per model/backend/precision/input, to a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EngineError(f"--plot needs matplotlib ({exc}); pip install matplotlib") from exc
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        curves.setdefault(f"{row.model} {row.backend}/{row.precision} {row.input}", []).append(
            (row.batch, row.throughput_ips)
        )
    figure, axes = plt.subplots(figsize=(8, 5))
    for label, points in sorted(curves.items()):
        points.sort()
        axes.plot([b for b, _ in points], [t for _, t in points], marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("images / s")
    device = rows[0].device if rows else ""
    axes.set_title(f"Throughput vs batch ({device})")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
