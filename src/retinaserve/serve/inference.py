"""The model behind the service: a narrow detector interface, how one is built from settings, and the batched
detection service that the routes call (the model code never sees HTTP)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np

from ..detection import ImageResult, ResizePolicy
from ..errors import RetinaServeError
from ..images import ReducedImage, TargetSize
from ..memory import trim_heap
from .admission import LOW_THRESHOLD, Backlog, CostModel, Ticket, network_pixels
from .batching import Batcher, BatchStats, QueueFullError
from .settings import ServeSettings
from .uploads import HeaderNeedsTime, probe_image

__all__ = ["DetectOptions", "Detection", "DetectionService", "DetectorLike", "ServeConfigError", "build_detector"]

log = logging.getLogger(__name__)

R = TypeVar("R")

_TRIM_AFTER_BYTES = 12_000_000
"""Decoded pixels in one batch (bytes, ~4 Mpx RGB) above which freed memory is handed back to the OS."""
_TRIM_INTERVAL_S = 1.0
_LOOP_HEADER_READS = 256
"""Reads of a header parse allowed on the event loop (~1 us each): the shared photos and every format PIL writes
need 3-41."""
_RENDER_S_PER_PIXEL = 6e-8
"""Prior for beautify's pool work until a render is measured: 1.5 s for a 24 Mpx photo (decode, 64 faces, encode)."""
_RENDER_S_PER_IMAGE = 0.01
_RENDER_TARGET_S = 2.0
"""Render work admitted ahead of a new beautify request, at most."""


class ServeConfigError(RetinaServeError, ValueError):
    """Settings the service cannot honour (e.g. a precision this machine cannot run), with what to do instead."""


class DetectorLike(Protocol):
    """What the service needs from a detector: the Detector, or an engine backend with the same ``run``."""

    @property
    def name(self) -> str: ...

    def run(
        self,
        images: Sequence[Any],
        *,
        threshold: float | None = ...,
        nms_threshold: float | None = ...,
        resize: ResizePolicy | None = ...,
        max_faces: int | None = ...,
    ) -> list[ImageResult]: ...


@dataclass(frozen=True)
class DetectOptions:
    """Per-request detection options; None means the detector's default. Hashable: requests group by it."""

    threshold: float | None = None
    nms_threshold: float | None = None
    resize: ResizePolicy | None = None
    max_faces: int | None = None


@dataclass(frozen=True)
class Detection:
    """One image's result and the size of the model call it ran in."""

    result: ImageResult
    batch_size: int
    replica: str | None = None
    """Which model replica ran it, where several do (the Ray Serve application); None in one process."""


@dataclass(frozen=True)
class _Job:
    image: np.ndarray | ReducedImage  # (H, W, 3) uint8 RGB (or reduced, with its full size), decoded and checked
    options: DetectOptions
    pixels: int
    """Network input pixels, for learning the engine's cost per pixel."""


def build_detector(settings: ServeSettings) -> DetectorLike:
    """The detector the settings ask for: the reference torch Detector for fp32, an engine backend otherwise.

    Never falls back silently: a precision that needs an engine which is not available is an error.
    """
    if settings.precision == "fp32":
        from ..detection import Detector

        return Detector(
            settings.model,
            weights=settings.weights,
            device=settings.device,
            backend=settings.backend,
            batch_size=settings.max_batch or None,
            decode=settings.decode,  # type: ignore[arg-type]
        )
    engine_detector = _engine_detector_factory()
    if engine_detector is None:
        where = "on CPU " if settings.device == "cpu" else ""
        raise ServeConfigError(
            f"precision {settings.precision} {where}needs an engine backend (retinaserve.engine), which this "
            "installation does not provide; run with --precision fp32"
        )
    return engine_detector(settings)


def preflight(settings: ServeSettings) -> None:
    """Cheap checks before a server binds its port (unknown model, missing weights file, a precision without an
    engine), so that the CLI reports them in one line; loading itself happens in the app's start-up."""
    from ..registry import get_model_spec, get_reconstruction_spec

    get_model_spec(settings.model)
    if settings.weights is not None and not settings.weights.is_file():
        raise ServeConfigError(f"weights file {settings.weights} for {settings.model} does not exist")
    if settings.reconstruction_enabled:
        get_reconstruction_spec(settings.reconstruction_model)
        weights = settings.reconstruction_weights
        if weights is not None and not weights.is_file():
            raise ServeConfigError(f"weights file {weights} for {settings.reconstruction_model} does not exist")
    if settings.precision == "fp32":
        return
    if settings.precision == "int8":
        raise ServeConfigError(
            "int8 needs calibration photos, which the server does not take; serve fp32 or bf16, or use "
            "`retinaserve detect --backend onnx --precision int8 --calibration DIR` for INT8"
        )
    if _engine_detector_factory() is None:
        raise ServeConfigError(
            f"precision {settings.precision} needs an engine backend (retinaserve.engine), which this installation "
            "does not provide; run with --precision fp32"
        )
    factory = importlib.import_module("retinaserve.engine.factory")
    resolve_engine = getattr(factory, "resolve_engine", None)
    if callable(resolve_engine):  # refuses e.g. fp16 on CPU, with the engine's reason, before any model is loaded
        resolve_engine(factory.EngineConfig(precision=settings.precision, device=settings.device))


def _engine_detector_factory() -> Callable[[ServeSettings], DetectorLike] | None:
    """A builder of engine-backed detectors when :mod:`retinaserve.engine` provides one, else None."""
    try:
        factory = importlib.import_module("retinaserve.engine.factory")
    except ImportError:
        return None
    create_detector = getattr(factory, "create_detector", None)
    engine_config = getattr(factory, "EngineConfig", None)
    if create_detector is None or engine_config is None:
        return None

    def build(settings: ServeSettings) -> DetectorLike:
        config = engine_config(precision=settings.precision, device=settings.device)
        detector: DetectorLike = create_detector(
            settings.model,
            config,
            weights=settings.weights,
            batch_size=settings.max_batch or None,
            decode=settings.decode,
        )
        return detector

    return build


class PixelReservation:
    """A share of the service's in-flight pixel budget, given back when the ``with`` block ends."""

    def __init__(self, service: DetectionService, pixels: int) -> None:
        self.service = service
        self.pixels = pixels

    def __enter__(self) -> PixelReservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.service.pixels_in_flight -= self.pixels


class DetectionService:
    """Decoded images in, ImageResults out, through a dynamic batcher in front of one detector."""

    def __init__(
        self,
        settings: ServeSettings,
        detector_factory: Callable[[ServeSettings], DetectorLike] = build_detector,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self._last_trim = 0.0
        self.detector_factory = detector_factory
        self._detector: DetectorLike | None = None
        self.ready = False
        self.pixels_in_flight = 0
        self.costs = CostModel()
        self.admission = Backlog(self.target_wait_s)
        self.render_costs = CostModel(_RENDER_S_PER_PIXEL, _RENDER_S_PER_IMAGE)
        """Render-pool seconds per decoded pixel (decode, smoothing, encode), learnt from every render."""
        self.render_admission = Backlog(
            lambda: _RENDER_TARGET_S, "the render pool", "rendering time", "send a smaller image"
        )
        self.workers: ThreadPoolExecutor | None = None
        self.parsers: ThreadPoolExecutor | None = None
        self.renderers: ThreadPoolExecutor | None = None
        self.batcher: Batcher[_Job, Detection] = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch or 8,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            group_key=lambda job: job.options,
            on_batch=on_batch,
            name="detect-batcher",
        )

    @property
    def detector(self) -> DetectorLike:
        if self._detector is None:
            raise RuntimeError("the detection service is not started")
        return self._detector

    @property
    def model_name(self) -> str:
        return self.detector.name

    @property
    def queue_depth(self) -> int:
        """Images waiting for the model (for the metrics)."""
        return self.batcher.depth

    @property
    def images_in_flight(self) -> int:
        """Images in the model call running now (for the metrics)."""
        return self.batcher.in_flight

    @property
    def engine(self) -> dict[str, object]:
        """What runs the model and why: backend, max batch, and what ``auto`` measured (for the log and /v1/models)."""
        backend = getattr(self.detector, "backend", None)
        profile = getattr(self.detector, "engine_profile", None)
        return {
            "backend": getattr(backend, "name", type(self.detector).__name__),
            "max_batch": self.batcher.max_batch_size,
            "reason": profile.reason if profile is not None else "backend named in the settings",
            "forward_ms": dict(profile.forward_ms) if profile is not None else {},
        }

    def _run_batch(self, jobs: list[_Job]) -> list[Detection]:
        options = jobs[0].options  # the batcher groups by options, so they are equal within a call
        start = time.perf_counter()
        results = self.detector.run(
            [job.image for job in jobs],
            threshold=options.threshold,
            nms_threshold=options.nms_threshold,
            resize=options.resize,
            max_faces=options.max_faces,
        )
        seconds = time.perf_counter() - start
        self.costs.observe(sum(job.pixels for job in jobs), len(jobs), seconds, low_threshold=_low_threshold(options))
        now = time.monotonic()
        if (
            sum(_pixels(job.image).size for job in jobs) > _TRIM_AFTER_BYTES
            and now - self._last_trim > _TRIM_INTERVAL_S
        ):
            # large decoded images would otherwise stay resident after they are freed; at most once a second,
            # since trimming after every batch of ordinary photos cost a third of the throughput under load
            trim_heap()
            self._last_trim = now
        return [Detection(result, len(jobs)) for result in results]

    def warm_up(self) -> None:
        """Run the model once alone and once at full batch, so the first real request pays no start-up cost."""
        image = np.full((480, 640, 3), 128, dtype=np.uint8)
        self.detector.run([image])
        if self.batcher.max_batch_size > 1:
            self.detector.run([image] * self.batcher.max_batch_size)

    def calibrate(self) -> None:
        """Time the model on a 640x480 and a 320x240 input (the faster of two runs each: the first may pay one-time
        costs) and set the cost model's per-image and per-pixel parts from them, so admission starts from this
        machine's speed rather than a prior."""
        image = np.full((480, 640, 3), 128, dtype=np.uint8)
        timed = []
        for side in (320, 640):
            resize = ResizePolicy(long_side=side)
            seconds = []
            for _ in range(2):
                start = time.perf_counter()
                self.detector.run([image], resize=resize)
                seconds.append(time.perf_counter() - start)
            timed.append((network_pixels(480, 640, resize), min(seconds)))
        self.costs.calibrate(timed[0], timed[1])

    def network_pixels(self, height: int, width: int, options: DetectOptions) -> int:
        """Network input pixels for an image of ``height x width`` under ``options`` (the detector's resize when
        they name none)."""
        return network_pixels(height, width, options.resize or getattr(self.detector, "resize", None))

    def estimate_s(self, sizes: Sequence[tuple[int, int]], options: DetectOptions) -> float:
        """Engine seconds to detect faces in images of these (height, width) under ``options``."""
        pixels = sum(self.network_pixels(h, w, options) for h, w in sizes)
        return self.costs.estimate(pixels, len(sizes), low_threshold=_low_threshold(options))

    def target_wait_s(self) -> float:
        """How long admitted work may wait for the engine: ``max_queue_delay_ms``, or (0, auto) the time of one full
        batch of the default input, so the engine always has its next batch ready and admitted requests wait for
        little more than the batch that is running."""
        if self.settings.max_queue_delay_ms > 0:
            return self.settings.max_queue_delay_ms / 1000.0
        batch = self.batcher.max_batch_size
        one = self.costs.estimate(batch * self.network_pixels(480, 640, DetectOptions()), batch)
        return max(0.01, one)

    def admit(self, sizes: Sequence[tuple[int, int]], options: DetectOptions, deadline_s: float) -> Ticket:
        """A place in the engine's backlog for these images (OverCapacityError / NeverFitsError otherwise)."""
        return self.admission.admit(self.estimate_s(sizes, options), deadline_s)

    async def probe(self, data: bytes) -> tuple[str, int, int]:
        """(format, width, height) from an upload's header (415/413/400 as ApiError, see ``probe_image``). A header
        that parses in a few hundred reads, as every normal photo's does (well under a millisecond), is read right
        here on the event loop; a longer one is parsed again on a pool of its own with ``header_parse_ms`` of CPU
        time, so hostile headers queue behind each other, never in front of normal uploads' decoding."""
        max_pixels = self.settings.max_pixels
        try:
            return probe_image(data, max_pixels=max_pixels, max_reads=_LOOP_HEADER_READS)
        except HeaderNeedsTime:
            budget_s = self.settings.header_parse_ms / 1000
            return await _in_pool(self.parsers, probe_image, data, max_pixels=max_pixels, budget_s=budget_s)

    async def in_workers(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run ``fn`` on the bounded pool that parses headers and decodes images for detection, never on the
        event loop; a call not yet started when its caller is cancelled never runs."""
        return await _in_pool(self.workers, fn, *args, **kwargs)

    async def in_renderers(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """As :meth:`in_workers`, on the smaller pool for heavy image work outside the model (full decodes,
        smoothing, encoding), so that it never takes more than half the cores from the engine; admitted by
        :attr:`render_admission`."""
        return await _in_pool(self.renderers, fn, *args, **kwargs)

    def admit_render(self, pixels: int, deadline_s: float) -> Ticket:
        """A place in the render backlog for work over an image of ``pixels`` decoded pixels (OverCapacityError /
        NeverFitsError otherwise)."""
        return self.render_admission.admit(self.render_costs.estimate(pixels), deadline_s)

    async def start(self) -> None:
        """Start the batcher, then build (and warm up, if configured) the detector on the batcher's own thread,
        the one that will run it."""
        self.start_pools()
        await self.batcher.start()
        self._detector = await self.batcher.run_in_worker(self.detector_factory, self.settings)
        if not self.settings.max_batch:  # auto: what paid when the engine measured the model here
            self.batcher.max_batch_size = max(1, int(getattr(self._detector, "batch_size", 8)))
        if self.settings.warmup:
            await self.batcher.run_in_worker(self.warm_up)
        await self.batcher.run_in_worker(self.calibrate)
        self.ready = True

    def start_pools(self) -> None:
        """The thread pools that parse headers, decode images and render, off the event loop."""
        threads = self.settings.image_workers or max(2, os.cpu_count() or 2)
        self.workers = ThreadPoolExecutor(threads, "image")
        self.parsers = ThreadPoolExecutor(1, "parse")
        self.renderers = ThreadPoolExecutor(max(1, threads // 2), "render")

    async def stop(self) -> None:
        """Stop taking work and finish what is queued (graceful shutdown)."""
        self.ready = False
        await self.batcher.stop()
        self.stop_pools()

    def stop_pools(self) -> None:
        for pool in (self.workers, self.parsers, self.renderers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def reserve(self, pixels: int) -> PixelReservation:
        """Reserve ``pixels`` of the in-flight budget for an image being decoded, queued and run (release it by
        leaving the returned context); QueueFullError when the budget is spent, so memory stays bounded."""
        limit = self.settings.max_pixels_in_flight
        if self.pixels_in_flight + pixels > limit:
            raise QueueFullError(f"{self.pixels_in_flight} decoded pixels already in flight (limit {limit})")
        self.pixels_in_flight += pixels
        return PixelReservation(self, pixels)

    def decode_target(self, options: DetectOptions) -> TargetSize | None:
        """What an image will be resized to under these options, when the detector decodes JPEGs at the DCT scale
        its input needs (its ``decode`` is "fast") and says its resize policy; None: decode at full size."""
        if getattr(self.detector, "decode", "exact") != "fast":
            return None
        resize = options.resize or getattr(self.detector, "resize", None)
        return None if resize is None else resize.scaled_size

    async def detect(self, image: np.ndarray | ReducedImage, options: DetectOptions) -> Detection:
        """One decoded image -> its result, batched with whatever else is waiting."""
        height, width = _full_size(image)
        job = _Job(image, options, self.network_pixels(height, width, options))
        return await self.batcher.submit(job, timeout_s=self.settings.request_timeout_s)


async def _in_pool(pool: ThreadPoolExecutor | None, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    if pool is None:
        raise RuntimeError("the detection service is not started")
    return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))


def _low_threshold(options: DetectOptions) -> bool:
    return options.threshold is not None and options.threshold < LOW_THRESHOLD


def _full_size(image: np.ndarray | ReducedImage) -> tuple[int, int]:
    if isinstance(image, ReducedImage):
        return image.height, image.width
    return int(image.shape[0]), int(image.shape[1])


def _pixels(image: np.ndarray | ReducedImage) -> np.ndarray:
    return image.pixels if isinstance(image, ReducedImage) else image
