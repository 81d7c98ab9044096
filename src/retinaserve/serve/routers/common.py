"""What the detect and beautify routes share: query options, admission by cost, parsing and decoding off the
event loop, a deadline over every stage, and turning refusals into HTTP answers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Query

from ...detection import ResizePolicy
from ...errors import InvalidImageError
from ...images import ReducedImage
from ..admission import NeverFitsError, OverCapacityError, Ticket
from ..batching import BatcherClosedError, QueueFullError
from ..dependencies import MetricsDep, ServiceDep, SettingsDep
from ..errors import ApiError
from ..inference import Detection, DetectionService, DetectOptions
from ..metrics import ServiceMetrics
from ..settings import ServeSettings
from ..uploads import decode_upload_reduced

__all__ = [
    "UPLOAD_BODY",
    "DetectContext",
    "DetectContextDep",
    "admitted",
    "deadline",
    "detect_options",
    "probe",
    "run_detection",
]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image as a multipart file (any field name) or as the raw body; its type is read from "
        "its content (JPEG, PNG, WebP, BMP, GIF, TIFF, PPM)",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
"""OpenAPI description of an image upload (the body is read by hand, to enforce the size limit while streaming)."""


async def detect_options(
    threshold: float | None = Query(None, ge=0.0, lt=1.0, description="score threshold (default: the model's)"),
    nms: float | None = Query(None, gt=0.0, le=1.0, description="NMS IoU threshold (default 0.4)"),
    long_side: int | None = Query(None, ge=16, description="scale so the long side is N pixels"),
    det_size: str | None = Query(None, description="letterbox into a fixed WxH input, e.g. 640x640"),
    max_faces: int | None = Query(
        None, ge=1, description="keep at most this many faces (the highest scores; the server's max_faces at most)"
    ),
    *,
    settings: SettingsDep,
) -> DetectOptions:
    """Query parameters -> DetectOptions; sizes and face counts are bounded so no request can ask for a huge
    network input or answer."""
    if max_faces is not None and max_faces > settings.max_faces:
        raise ApiError(422, "invalid_parameter", f"max_faces must be at most {settings.max_faces}, got {max_faces}")
    if long_side is not None and det_size is not None:
        raise ApiError(422, "invalid_parameter", "give either long_side or det_size, not both")
    resize = None
    limit = settings.max_input_side
    if long_side is not None:
        if long_side > limit:
            raise ApiError(422, "invalid_parameter", f"long_side must be at most {limit}, got {long_side}")
        resize = ResizePolicy(long_side=long_side)
    elif det_size is not None:
        match = re.fullmatch(r"(\d{1,6})x(\d{1,6})", det_size.strip().lower())
        if match is None:
            raise ApiError(422, "invalid_parameter", f"det_size must be WxH such as 640x640, got {det_size!r}")
        width, height = int(match[1]), int(match[2])
        if not (16 <= width <= limit and 16 <= height <= limit):
            raise ApiError(422, "invalid_parameter", f"det_size sides must be in [16, {limit}], got {det_size}")
        resize = ResizePolicy(det_size=(width, height))
    faces = max_faces or settings.max_faces
    return DetectOptions(threshold=threshold, nms_threshold=nms, resize=resize, max_faces=faces)


@dataclass(frozen=True)
class DetectContext:
    """Everything a detecting route needs, gathered by FastAPI dependencies."""

    service: DetectionService
    settings: ServeSettings
    metrics: ServiceMetrics
    options: DetectOptions


async def detect_context(
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    options: Annotated[DetectOptions, Depends(detect_options)],
) -> DetectContext:
    """The route's context; 429 at once, before the body is read, when the engine's backlog admits nothing now."""
    ctx = DetectContext(service, settings, metrics, options)
    try:
        service.admission.check()
    except OverCapacityError as exc:
        raise _busy(ctx, "engine_backlog", exc) from None
    return ctx


@asynccontextmanager
async def deadline(ctx: DetectContext) -> AsyncIterator[float]:
    """Every stage inside (parsing, queueing, inference, rendering) within ``request_timeout_s``, else 504; work
    of the request not yet started is dropped when it expires. Yields the deadline (``time.monotonic``) for work
    on threads, which must check it themselves."""
    try:
        async with asyncio.timeout(ctx.settings.request_timeout_s):
            yield time.monotonic() + ctx.settings.request_timeout_s
    except TimeoutError:
        raise _timed_out(ctx) from None


async def probe(data: bytes, ctx: DetectContext) -> tuple[int, int]:
    """(height, width) from the image's header, never stalling the event loop (415/413/400 without decoding)."""
    _, width, height = await ctx.service.probe(data)
    return height, width


@asynccontextmanager
async def admitted(sizes: Sequence[tuple[int, int]], ctx: DetectContext) -> AsyncIterator[Ticket]:
    """Hold the decoded pixels of these images (height, width) in the in-flight budget and their estimated engine
    time in the backlog while the block runs (give each image's time back with the yielded ticket's ``release``
    once the engine is done with it): 413 when the request could never fit (more pixels than the whole budget,
    more engine time than its deadline), 429 with Retry-After when it cannot now."""
    settings = ctx.settings
    pixels = sum(h * w for h, w in sizes)
    if pixels > settings.max_pixels_in_flight:
        ctx.metrics.rejected.labels("never_fits").inc()
        raise ApiError(
            413,
            "request_too_large",
            f"the images add up to {pixels} pixels, more than the {settings.max_pixels_in_flight} this server holds "
            "at once; send them in smaller requests",
        )
    with ExitStack() as held:
        deadline_s = settings.request_timeout_s
        ticket = held.enter_context(_ticket(ctx, "engine_backlog", ctx.service.admit, sizes, ctx.options, deadline_s))
        try:
            held.enter_context(ctx.service.reserve(pixels))
        except QueueFullError:
            raise _busy(ctx, "pixel_budget") from None
        yield ticket


@asynccontextmanager
async def render_admitted(pixels: int, ctx: DetectContext) -> AsyncIterator[Ticket]:
    """Hold the estimated render-pool time of work over an image of ``pixels`` decoded pixels while the block runs:
    413 when it alone cannot finish within the deadline, 429 with Retry-After when too much is admitted ahead."""
    with _ticket(ctx, "render_backlog", ctx.service.admit_render, pixels, ctx.settings.request_timeout_s) as ticket:
        yield ticket


def _ticket(ctx: DetectContext, reason: str, admit: Callable[..., Ticket], *args: Any) -> Ticket:
    """``admit(*args)`` (the engine's or the render pool's), its refusals as 413 ``request_too_expensive`` (never
    fits) or 429 with Retry-After (counted under ``reason``)."""
    try:
        return admit(*args)
    except NeverFitsError as exc:
        ctx.metrics.rejected.labels("never_fits").inc()
        raise ApiError(413, "request_too_expensive", str(exc)) from None
    except OverCapacityError as exc:
        raise _busy(ctx, reason, exc) from None


async def decode_for_detection(data: bytes, ctx: DetectContext) -> ReducedImage:
    """Decode on the worker pool, a JPEG at the DCT scale the network input needs when the detector decodes
    "fast" (limits are still checked on the full size, and results come back in full-size pixels)."""
    target_size = ctx.service.decode_target(ctx.options)
    return await ctx.service.in_workers(
        decode_upload_reduced, data, max_pixels=ctx.settings.max_pixels, target_size=target_size
    )


def _timed_out(ctx: DetectContext) -> ApiError:
    ctx.metrics.rejected.labels("timeout").inc()
    return ApiError(504, "timeout", f"no result within {ctx.settings.request_timeout_s:g} s")


def _busy(ctx: DetectContext, reason: str, exc: OverCapacityError | None = None) -> ApiError:
    ctx.metrics.rejected.labels(reason).inc()
    message = f"the server is busy: {exc}; retry after a moment" if exc else "the server is busy; retry in a moment"
    return ApiError(
        429, "too_many_requests", message, headers={"Retry-After": exc.retry_after if exc is not None else "1"}
    )


async def run_detection(image: np.ndarray | ReducedImage, ctx: DetectContext) -> Detection:
    """One decoded image through the batcher; refusals become 429 / 503 / 504 / 422."""
    try:
        return await ctx.service.detect(image, ctx.options)
    except QueueFullError:
        raise _busy(ctx, "queue_full") from None
    except TimeoutError:
        raise _timed_out(ctx) from None
    except BatcherClosedError:
        ctx.metrics.rejected.labels("shutting_down").inc()
        raise ApiError(503, "unavailable", "the server is shutting down", headers={"Retry-After": "1"}) from None
    except InvalidImageError as exc:
        raise ApiError(400, "invalid_image", str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


DetectContextDep = Annotated[DetectContext, Depends(detect_context)]


def ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 3)
