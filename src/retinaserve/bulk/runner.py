"""Bulk detection in this process: images decoded ahead by a thread pool, detected in batches by one Detector built
as ``retinaserve detect`` builds it, one row per image handed on as soon as its batch is done.

The pieces (:class:`DetectorOptions`, :class:`ImageDecoder`, :func:`decode_path`, :func:`detect_rows`) are also what
the Ray Data runner (:mod:`retinaserve.ray.data`) runs in its tasks and actors, so both modes give the same rows.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..detection import Detector, ResizePolicy
from ..detection.detector import DecodeMode, load_for_detection
from ..errors import RetinaServeError
from ..images import DEFAULT_MAX_PIXELS, ReducedImage, load_image
from ..registry import DEFAULT_MODEL, get_model_spec
from .results import Row, error_row, image_row

if TYPE_CHECKING:
    from ..detection.results import ImageResult
    from .meshes import MeshStage

__all__ = [
    "DEFAULT_BATCH",
    "Decoded",
    "DetectorOptions",
    "ImageDecoder",
    "calibration_photos",
    "decode_path",
    "detect_rows",
    "run_in_process",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8
"""Images per model call where neither ``--batch-size`` nor the detector says otherwise."""


@dataclass(frozen=True)
class DetectorOptions:
    """The detector a bulk run builds, from ``detect``'s flags: built the same way in this process and in each Ray
    actor, so that the rows equal ``retinaserve detect --json``'s faces."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    precision: str = "fp32"
    device: str = "cpu"
    weights: Path | None = None
    threshold: float | None = None
    batch_size: int | None = None
    """Images per network call at most; None: the detector's own (what ``auto`` measured, else 8)."""
    decode: DecodeMode = "fast"
    download: bool = False
    calibration: tuple[Path, ...] = ()
    """Photos that INT8 calibrates on."""

    def build(self) -> Detector:
        """The Detector, exactly as ``cmd_detect`` builds it (``detector_for`` with the same options)."""
        from ..engine.factory import detector_for

        return detector_for(
            self.model,
            backend=self.backend,
            precision=self.precision,
            device=self.device,
            weights=self.weights,
            calibration_photos=self.calibration if self.precision == "int8" else (),
            download=self.download,
            threshold=self.threshold,
            batch_size=self.batch_size,
            decode=self.decode,
        )


@dataclass(frozen=True)
class ImageDecoder:
    """How a file becomes pixels outside the Detector, exactly as the Detector loads a path itself (``fast``: a
    JPEG decoded at the 1/2, 1/4 or 1/8 scale its resize needs), so that decoding apart changes no result."""

    resize: ResizePolicy
    decode: DecodeMode = "fast"
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, detector: Detector) -> ImageDecoder:
        """The decoding ``detector`` would do for a path."""
        return cls(detector.resize, detector.decode, detector.max_pixels)

    @classmethod
    def for_model(cls, model: str, decode: DecodeMode = "fast") -> ImageDecoder:
        """The decoding a Detector of ``model`` with its default resize does (without building it)."""
        spec = get_model_spec(model)
        return cls(ResizePolicy(long_side=spec.default_long_side).for_model(spec.input.resize_rule), decode)

    def load(self, path: str | Path) -> ReducedImage:
        """A file -> upright RGB pixels (possibly reduced) with the full image's size; InvalidImageError if bad."""
        return load_for_detection(path, self.resize, self.decode, max_pixels=self.max_pixels)


@dataclass(frozen=True)
class Decoded:
    """One image after decoding: its pixels, or why there are none."""

    path: str
    image: ReducedImage | None
    decode_ms: float
    error: str | None = None


def calibration_photos(paths: Sequence[str], count: int = 16) -> tuple[Path, ...]:
    """The first ``count`` of ``paths`` that decode: what INT8 calibrates on when no photos are given (the run's
    own kind of images; a bad file would stop the calibration)."""
    found: list[Path] = []
    for path in paths:
        try:
            load_image(path)
        except (RetinaServeError, OSError):
            continue
        found.append(Path(path))
        if len(found) == count:
            break
    return tuple(found)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a row's ``error``)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_path(decoder: ImageDecoder, path: str) -> Decoded:
    """Decode one file; a bad or unreadable file gives its error instead of raising."""
    start = time.perf_counter()
    try:
        image: ReducedImage | None = decoder.load(path)
        error = None
    except (RetinaServeError, OSError) as exc:
        image, error = None, one_line(exc)
    return Decoded(path, image, (time.perf_counter() - start) * 1e3, error)


def detect_rows(detector: Detector, batch: Sequence[Decoded], meshes: MeshStage | None = None) -> list[Row]:
    """Rows for ``batch`` in its order: the decoded images in one ``detector.run`` call (images of the same input
    shape share a network call; the results equal each image's alone), the others with their decode error. A call
    that refuses an image is retried one image at a time, so one bad image never sinks the batch. ``detect`` ms is
    each image's share of its call. With ``meshes`` (``--reconstruct``), each row also gets its faces' meshes."""
    model = detector.name
    good = [item for item in batch if item.image is not None]
    done: dict[int, Row] = {}
    found: dict[int, ImageResult] = {}
    if good:
        try:
            results = detector.run([item.image for item in good if item.image is not None])
            share = results[0].timings_ms["total"] / len(good)
            done = {id(item): image_row(item.path, model, r, item.decode_ms, share) for item, r in zip(good, results)}
            found = {id(item): r for item, r in zip(good, results)}
        except (RetinaServeError, ValueError) as exc:
            log.warning("a batch of %d images was refused (%s); running them one by one", len(good), one_line(exc))
            for item in good:
                start = time.perf_counter()
                try:
                    result = detector.run([item.image])[0]  # type: ignore[list-item]
                    done[id(item)] = image_row(item.path, model, result, item.decode_ms, result.timings_ms["total"])
                    found[id(item)] = result
                except (RetinaServeError, ValueError) as one:
                    ms = (time.perf_counter() - start) * 1e3
                    done[id(item)] = error_row(item.path, model, one_line(one), item.decode_ms, ms)
    rows = [
        done[id(item)] if item.image is not None else error_row(item.path, model, item.error or "", item.decode_ms)
        for item in batch
    ]
    if meshes is None:
        return rows
    detected = {}
    for index, item in enumerate(batch):
        if item.image is not None and id(item) in found:
            if item.image.reduction != 1:
                raise ValueError("--reconstruct needs images decoded at full size (--decode exact)")
            detected[index] = (item.image.pixels, found[id(item)])
    return meshes.add(rows, detected)


def run_in_process(
    detector: Detector,
    paths: Sequence[str],
    on_row: Callable[[Row], None],
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    lookahead: int = 2,
    meshes: MeshStage | None = None,
) -> None:
    """Detect faces in every path, calling ``on_row`` for each image's row in order. ``threads`` decode up to
    ``lookahead`` batches ahead of the detector (bounded memory); ``batch_size`` None: the detector's own;
    ``meshes``: also reconstruct the faces (``--reconstruct``)."""
    batch_size = batch_size or detector.batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decoder = ImageDecoder.of(detector)
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1), thread_name_prefix="decode")
    pending: deque[list[Future[Decoded]]] = deque()
    try:
        for chunk in chunks:
            pending.append([pool.submit(decode_path, decoder, path) for path in chunk])
            if len(pending) <= lookahead:
                continue
            for row in detect_rows(detector, [future.result() for future in pending.popleft()], meshes):
                on_row(row)
        while pending:
            for row in detect_rows(detector, [future.result() for future in pending.popleft()], meshes):
                on_row(row)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: no more decoding of images no one will see
