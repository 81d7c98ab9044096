"""The memory planner: measure each model x precision x input size at a few batch sizes, fit
``peak(batch) = fixed + per_image * batch``, and answer the largest batch and the number of concurrent streams
that fit a budget, and which lighter model to fall back to when memory is short.

A stream is one in-flight batch sharing the process' single copy of the weights: ``streams = (budget - weights)
// (fixed - weights + per_image * batch)``. On CUDA the numbers are the allocator's peak; on CPU they are the
resident set size the configuration adds (:mod:`retinaserve.bench` explains both).

For video, :func:`measure_stream_cost` times a Detector on frames of one size at a few batch sizes and
:func:`streams_in_real_time` says how many streams at ``fps`` it keeps up with; :func:`plan_streams` takes the
smaller of that and what memory holds (:class:`StreamPlanRow`), and :func:`plan_video_streams` does it for every
model x backend/precision (``retinaserve plan --streams N --fps F --size WxH``).
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import median
from typing import Any, Literal

import numpy as np
import torch

from ..detection import Detector
from ..errors import WeightsError
from ..memory import memory_mb, process_rss_mb, reset_peak_memory
from ..registry import get_model_spec
from ..tables import format_table
from .bench import _memory_baseline, _release_memory
from .errors import EngineError
from .factory import EngineConfig, create_backend, resolve_engine

__all__ = [
    "Footprint",
    "StreamCost",
    "StreamPlanRow",
    "choose_model",
    "fit_footprint",
    "format_plan_table",
    "format_stream_plan_table",
    "largest_batch",
    "measure_decode_ms",
    "measure_footprint",
    "measure_stream_cost",
    "network_input_size",
    "parse_bytes",
    "plan_streams",
    "plan_video_streams",
    "sample_frame",
    "stream_footprint",
    "stream_verdict",
    "streams_in_real_time",
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


# Video streams: how many streams of WxH frames at F fps one detector keeps up with, from measured time and memory.


def sample_frame(frame_size: tuple[int, int]) -> np.ndarray:
    """The packaged sample photo resized to ``frame_size`` (W, H): a (H, W, 3) uint8 RGB frame with a real face."""
    import cv2

    from ..data import SAMPLE_PHOTO
    from ..images import load_image

    width, height = frame_size
    if width < 16 or height < 16:
        raise ValueError(f"frames must be at least 16x16, got {width}x{height}")
    return np.ascontiguousarray(cv2.resize(load_image(SAMPLE_PHOTO), (width, height), interpolation=cv2.INTER_AREA))


def network_input_size(detector: Detector, frame_size: tuple[int, int]) -> tuple[int, int]:
    """(W, H) of the network input ``detector`` runs a (W, H) frame at: its resize policy, padded as the model
    needs (what ``ImageResult.input_size`` reports)."""
    width, height = frame_size
    pad_h, pad_w = detector.resize.padded_size(height, width, detector.spec.input.pad_multiple)
    return pad_w, pad_h


@dataclass(frozen=True)
class StreamCost:
    """What detecting faces in (W, H) video frames costs one detector, measured at a few batch sizes.

    A batch holds one frame from each of ``batch`` streams (cross-stream batching), so ``ms_per_frame[b]`` is the
    median time of ``detector.run`` on ``b`` frames divided by ``b``: copy, pre-process, forward and post-process.
    """

    model: str
    backend: str
    """The detector's backend, as it names itself (e.g. ``openvino-fp32 CPU``)."""
    device: str
    frame: tuple[int, int]
    """(W, H) of the frames."""
    input: tuple[int, int]
    """(W, H) of the network input for such a frame."""
    ms_per_frame: dict[int, float]
    """Batch size -> median milliseconds per frame."""
    peak_mb: dict[int, float] = field(default_factory=dict)
    """Batch size -> memory the calls added over what the process held before them (MiB): inputs, activations and
    workspace, not the weights."""

    @property
    def best_batch(self) -> int:
        """The measured batch with the lowest time per frame (the smaller one on a tie)."""
        return min(sorted(self.ms_per_frame), key=lambda b: self.ms_per_frame[b])

    @property
    def best_ms(self) -> float:
        return self.ms_per_frame[self.best_batch]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "best_batch": self.best_batch, "best_ms": self.best_ms}


def _peak_added_mb(detector: Detector, before: dict[str, float]) -> float:
    """Peak memory of the calls since :func:`reset_peak_memory` over ``before`` (see :func:`_memory_state`)."""
    device = detector.device
    if device.type == "cuda":
        if detector.backend.name.startswith("onnx"):  # ONNX Runtime's arena is outside torch's allocator
            free, total = torch.cuda.mem_get_info(device)
            return max(0.0, (total - free) / float(1 << 20) - before["used"])
        return max(0.0, memory_mb(device)["peak_allocated"] - before["allocated"])
    return max(0.0, memory_mb(device).get("peak_rss", float("nan")) - before["rss"])


def _memory_state(device: torch.device) -> dict[str, float]:
    """What the process holds now (MiB), after returning freed memory: the baseline of :func:`_peak_added_mb`."""
    _release_memory()
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"used": (total - free) / float(1 << 20), "allocated": memory_mb(device)["allocated"]}
    return {"rss": process_rss_mb().get("rss", float("nan"))}


def measure_stream_cost(
    detector: Detector,
    frame_size: tuple[int, int],
    *,
    batches: Sequence[int] = (1, 2, 4),
    repeats: int = 5,
    warmup: int = 1,
    time_budget_s: float | None = None,
    frame: np.ndarray | None = None,
) -> StreamCost:
    """Time ``detector.run`` on ``b`` frames of ``frame_size`` (W, H) for each batch ``b``: ``warmup`` calls, then
    the median of ``repeats``; peak memory over the same calls.

    ``frame``: (H, W, 3) uint8 RGB content (default: :func:`sample_frame`). Batches above the detector's
    ``batch_size`` are not measured (it would split them). ``time_budget_s`` bounds the whole measurement: repeats
    are cut to fit it and larger batches are skipped once it is spent (batch 1 is always measured, at least once).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    width, height = frame_size
    pixels = sample_frame(frame_size) if frame is None else frame
    if pixels.shape[:2] != (height, width):
        raise ValueError(f"frame of shape {pixels.shape} is not {width}x{height}")
    sizes = sorted({1, *(b for b in batches if 1 <= b <= detector.batch_size)})
    skipped = sorted(set(batches) - set(sizes))
    if skipped:
        log.info("batches %s not measured: above %s's batch_size %d", skipped, detector.name, detector.batch_size)
    frames = [pixels.copy() for _ in range(max(sizes))]
    before = _memory_state(detector.device)
    start = time.perf_counter()
    ms_per_frame: dict[int, float] = {}
    peak_mb: dict[int, float] = {}
    input_size = network_input_size(detector, frame_size)
    for batch in sizes:
        spent = time.perf_counter() - start
        if time_budget_s is not None and batch > 1 and spent >= time_budget_s:
            log.info(
                "%s: time budget %.1f s spent, batches from %d on not measured", detector.name, time_budget_s, batch
            )
            break
        images = frames[:batch]
        reset_peak_memory(detector.device)
        call_s = 0.0
        for _ in range(warmup):
            t0 = time.perf_counter()
            result = detector.run(images)
            call_s = time.perf_counter() - t0
        count = repeats
        if time_budget_s is not None and call_s > 0:
            left = time_budget_s - (time.perf_counter() - start)
            count = max(1, min(repeats, int(left / call_s)))
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            result = detector.run(images)
            times.append(time.perf_counter() - t0)
        ms_per_frame[batch] = median(times) * 1e3 / batch
        peak_mb[batch] = _peak_added_mb(detector, before)
        if result[0].input_size != input_size:
            raise EngineError(f"{detector.name} ran {width}x{height} at {result[0].input_size}, not {input_size}")
    cost = StreamCost(
        detector.name, detector.backend.name, str(detector.device), (width, height), input_size, ms_per_frame, peak_mb
    )
    log.info("stream cost %s", cost)
    return cost


def measure_decode_ms(frame_size: tuple[int, int], *, frames: int = 48, passes: int = 2) -> float:
    """Milliseconds to decode one H.264 frame of ``frame_size`` (W, H) to RGB with PyAV, on this machine.

    The clip is the sample photo panning, encoded in memory (libx264 ``ultrafast``): camera footage with more
    detail and motion decodes slower, so take it as a lower bound. Best of ``passes`` over the clip.
    Raises :class:`EngineError` without PyAV (``pip install 'retinaserve[video]'``).
    """
    try:
        import av
    except ImportError as exc:
        raise EngineError(f"measuring decode needs PyAV ({exc}): pip install 'retinaserve[video]'") from exc
    width, height = frame_size
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sizes
    pixels = sample_frame((width, height))
    clip = io.BytesIO()
    with av.open(clip, "w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(frames):
            shifted = np.roll(pixels, 4 * index, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(shifted, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    best = math.inf
    for _ in range(passes):
        clip.seek(0)
        with av.open(clip, "r") as reader:
            start = time.perf_counter()
            decoded = 0
            for video_frame in reader.decode(video=0):
                video_frame.to_ndarray(format="rgb24")
                decoded += 1
            best = min(best, (time.perf_counter() - start) * 1e3 / max(decoded, 1))
    return best


def _real_time_streams(ms_per_frame: float, fps: float, headroom: float, decode_ms_per_frame: float) -> int:
    """floor((1 - headroom) * 1000 / (fps * (ms_per_frame + decode_ms_per_frame))), robust to rounding."""
    if fps <= 0 or not 0.0 <= headroom < 1.0:
        raise ValueError(f"fps must be > 0 and headroom in [0, 1), got {fps} and {headroom}")
    per_frame = ms_per_frame + decode_ms_per_frame
    if per_frame <= 0:
        raise ValueError(f"the cost of a frame must be > 0 ms, got {per_frame}")
    return max(0, math.floor((1.0 - headroom) * 1000.0 / (fps * per_frame) + 1e-9))


def _compute_limits(cost: StreamCost, fps: float, headroom: float, decode_ms_per_frame: float) -> dict[int, int]:
    """Batch -> streams in real time at that batch, for the batches that many streams can fill (one frame per
    stream per batch: 3 streams never fill a batch of 4); batch 1 always."""
    limits = {}
    for batch, ms in sorted(cost.ms_per_frame.items()):
        streams = _real_time_streams(ms, fps, headroom, decode_ms_per_frame)
        if batch == 1 or streams >= batch:
            limits[batch] = streams
    return limits


def streams_in_real_time(
    cost: StreamCost, fps: float, *, headroom: float = 0.1, decode_ms_per_frame: float = 0.0
) -> int:
    """How many streams at ``fps`` this detector keeps up with, keeping ``headroom`` of its time free:
    ``floor((1 - headroom) * 1000 / (fps * (ms_per_frame + decode_ms_per_frame)))`` at the best batch those streams
    can fill.

    ``decode_ms_per_frame`` (e.g. :func:`measure_decode_ms`) is added to every frame: exact when decoding shares the
    CPU with the detector, conservative when the detector runs on a GPU.
    """
    return max(_compute_limits(cost, fps, headroom, decode_ms_per_frame).values())


def stream_footprint(cost: StreamCost, weights_mb: float, *, backend: str, precision: str) -> Footprint:
    """The memory :class:`Footprint` of ``cost``'s measured peaks (plus ``weights_mb``, what building the backend
    added) at its network input size."""
    if not cost.peak_mb:
        raise ValueError("the stream cost has no memory measurements")
    measured = {batch: weights_mb + peak for batch, peak in cost.peak_mb.items()}
    fixed, per_image = fit_footprint(measured)
    return Footprint(cost.model, backend, precision, cost.input, cost.device, weights_mb, fixed, per_image, measured)


@dataclass(frozen=True)
class StreamPlanRow:
    """How many streams of one frame size and rate a model x backend x precision runs on this device: the smaller
    of what its measured time keeps up with (compute) and what its measured memory holds (memory)."""

    model: str
    backend: str
    precision: str
    device: str
    weights: Literal["real", "random"]
    """Random weights time and weigh the same as real ones; the detections mean nothing."""
    frame: tuple[int, int]
    input: tuple[int, int]
    fps: float
    batch: int
    """The cross-stream batch the plan runs at: the one that holds most streams (the smaller on a tie)."""
    ms_per_frame: float
    """Detector time per frame at ``batch``."""
    decode_ms_per_frame: float
    mib_per_stream: float
    """Memory one more stream costs at ``batch``: (peak(batch) - weights) / batch."""
    streams_compute: int
    streams_memory: int
    streams: int
    limited_by: Literal["compute", "memory"]
    wanted: int | None = None
    """The streams asked for (``--streams``), if any."""
    ms_per_frame_by_batch: dict[int, float] = field(default_factory=dict)
    """Every measured batch -> detector time per frame."""

    @property
    def fits(self) -> bool | None:
        """Whether the wanted streams run in real time here (None when none were asked for)."""
        return None if self.wanted is None else self.streams >= self.wanted

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}


def plan_streams(
    cost: StreamCost,
    footprint: Footprint,
    fps: float,
    budget_mb: float,
    *,
    headroom: float = 0.1,
    decode_ms_per_frame: float = 0.0,
    weights: Literal["real", "random"] = "real",
    wanted: int | None = None,
) -> StreamPlanRow:
    """Combine the compute limit (:func:`streams_in_real_time`) and the memory limit at each measured batch:
    ``streams = min(compute, memory)`` where memory holds ``streams_that_fit(footprint, budget_mb, batch)`` in-flight
    batches of ``batch`` streams each; the row is the batch that holds most streams."""
    compute = _compute_limits(cost, fps, headroom, decode_ms_per_frame)
    options = []
    for batch, by_compute in compute.items():
        by_memory = streams_that_fit(footprint, budget_mb, batch, headroom=headroom) * batch
        options.append((min(by_compute, by_memory), -batch, by_compute, by_memory))
    streams, negative_batch, by_compute, by_memory = max(options)
    batch = -negative_batch
    return StreamPlanRow(
        model=cost.model,
        backend=footprint.backend,
        precision=footprint.precision,
        device=cost.device,
        weights=weights,
        frame=cost.frame,
        input=cost.input,
        fps=fps,
        batch=batch,
        ms_per_frame=cost.ms_per_frame[batch],
        decode_ms_per_frame=decode_ms_per_frame,
        mib_per_stream=(footprint.peak_mb(batch) - footprint.weights_mb) / batch,
        streams_compute=by_compute,
        streams_memory=by_memory,
        streams=streams,
        limited_by="memory" if by_memory < by_compute else "compute",
        wanted=wanted,
        ms_per_frame_by_batch=dict(cost.ms_per_frame),
    )


RANDOM_WEIGHTS_TOP_K = 100
"""Candidates kept before NMS when planning with random weights (real weights find a few faces per frame)."""


def _build_detector(
    model: str, config: EngineConfig, batch_size: int
) -> tuple[Detector, float, Literal["real", "random"]]:
    """The detector ``config`` describes and what building its backend added to memory (MiB); with random weights
    where the model's own are not provisioned or do not verify (said in the log and the returned kind).

    Random weights score noise: thousands of anchors can pass the threshold (retinaface-mnv2: about 4000 on the
    sample frame, 0.3 s of NMS), so their candidates are capped at :data:`RANDOM_WEIGHTS_TOP_K`, a crowded frame."""
    device = resolve_engine(config).device
    before = _memory_baseline(device)
    try:
        backend = create_backend(model, config)
        kind: Literal["real", "random"] = "random" if config.random_weights else "real"
    except WeightsError as exc:
        log.warning("%s: random weights for planning (%s)", model, exc)
        _release_memory()
        backend, kind = create_backend(model, replace(config, random_weights=True)), "random"
    weights_mb = _memory_baseline(device) - before
    if kind == "random":
        return Detector(model, backend=backend, batch_size=batch_size, top_k=RANDOM_WEIGHTS_TOP_K), weights_mb, kind
    return Detector(model, backend=backend, batch_size=batch_size), weights_mb, kind


def plan_video_streams(
    models: Sequence[str],
    variants: Sequence[tuple[str, str]],
    frame_size: tuple[int, int],
    fps: float,
    budget_mb: float,
    *,
    device: str = "auto",
    wanted: int | None = None,
    headroom: float = 0.1,
    decode_ms_per_frame: float = 0.0,
    batches: Sequence[int] = (1, 2, 4),
    time_budget_s: float | None = 2.0,
    base: EngineConfig | None = None,
) -> list[StreamPlanRow]:
    """A :class:`StreamPlanRow` for every model x (backend, precision) the device runs (others are logged and
    skipped): each detector is built with the model's own resize, timed on frames of ``frame_size`` (W, H) by
    :func:`measure_stream_cost` within ``time_budget_s`` and weighed over the same calls. Models whose weights are
    not provisioned (or do not verify) run random weights, and the row says so; INT8 calibrates on the packaged
    sample photo."""
    from ..data import SAMPLE_PHOTO

    base = base or EngineConfig()
    frame = sample_frame(frame_size)
    rows = []
    for model in models:
        random_weights = base.random_weights
        for backend_name, precision in variants:
            config = replace(
                base,
                backend=backend_name,  # type: ignore[arg-type]
                precision=precision,  # type: ignore[arg-type]
                device=device,
                random_weights=random_weights,
                calibration_photos=base.calibration_photos or (SAMPLE_PHOTO,),
            )
            try:
                detector, weights_mb, weights = _build_detector(model, config, max(batches))
                cost = measure_stream_cost(
                    detector, frame_size, batches=batches, time_budget_s=time_budget_s, frame=frame
                )
            except EngineError as exc:
                log.warning("not planned: %s %s/%s: %s", model, backend_name, precision, exc)
                continue
            finally:
                detector = None  # type: ignore[assignment]  # free its backend before the next memory baseline
            random_weights = weights == "random"  # found once per model
            footprint = stream_footprint(cost, weights_mb, backend=backend_name, precision=precision)
            rows.append(
                plan_streams(
                    cost,
                    footprint,
                    fps,
                    budget_mb,
                    headroom=headroom,
                    decode_ms_per_frame=decode_ms_per_frame,
                    weights=weights,
                    wanted=wanted,
                )
            )
    return rows


def format_stream_plan_table(rows: Sequence[StreamPlanRow]) -> str:
    """One line per row: network input, time per frame at the chosen batch, memory per stream and the streams
    that compute, memory and both allow (and whether the wanted ones fit, when asked)."""
    wanted = next((r.wanted for r in rows if r.wanted is not None), None)
    header = [
        "model",
        "backend",
        "precision",
        "weights",
        "input",
        "ms/frame @batch",
        "MiB/stream",
        "streams (compute)",
        "streams (memory)",
        "streams",
        "limit",
    ]
    if wanted is not None:
        header.append(f"{wanted} fit?")
    lines = []
    for r in rows:
        line = [
            r.model,
            r.backend,
            r.precision,
            r.weights,
            f"{r.input[0]}x{r.input[1]}",
            f"{r.ms_per_frame:.1f} @{r.batch}",
            f"{r.mib_per_stream:.0f}",
            str(r.streams_compute),
            str(r.streams_memory),
            str(r.streams),
            r.limited_by,
        ]
        if wanted is not None:
            line.append("yes" if r.fits else "no")
        lines.append(line)
    return format_table(header, lines)


def stream_verdict(rows: Sequence[StreamPlanRow], wanted: int | None) -> str:
    """One line: the fastest row that holds ``wanted`` streams and the most accurate one (reported WIDER hard AP);
    without ``wanted``, the row that holds most streams. Rows timed with random weights say so."""
    if not rows:
        return "no model ran on this device"
    first = rows[0]
    what = f"{first.frame[0]}x{first.frame[1]} at {first.fps:g} fps"

    def name(row: StreamPlanRow) -> str:
        streams = f"{row.streams} stream{'' if row.streams == 1 else 's'}"
        random = ", random weights" if row.weights == "random" else ""
        return f"{row.model} {row.backend}/{row.precision} ({streams}, {row.ms_per_frame:.1f} ms/frame{random})"

    def accuracy(row: StreamPlanRow) -> float:
        spec = get_model_spec(row.model)
        return spec.accuracy.hard if spec.accuracy else 0.0

    most = max(rows, key=lambda r: (r.streams, -r.ms_per_frame))
    if most.streams == 0:
        return f"no model keeps up with one stream of {what}; the fastest is {name(most)}"
    if wanted is None:
        return f"most streams of {what}: {name(most)}"
    holding = [r for r in rows if r.streams >= wanted]
    if not holding:
        return f"no model holds {wanted} streams of {what}; the most any holds is {most.streams}: {name(most)}"
    fastest = min(holding, key=lambda r: r.ms_per_frame)
    accurate = max(holding, key=lambda r: (accuracy(r), r.streams))
    return f"{wanted} streams of {what}: fastest {name(fastest)}; most accurate that holds them {name(accurate)}"
