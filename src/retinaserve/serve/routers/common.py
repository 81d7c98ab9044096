"""What the detect and beautify routes share: query options, decoding off the event loop, and turning the
batcher's refusals into HTTP answers."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Query
from starlette.concurrency import run_in_threadpool

from ...detection import ResizePolicy
from ...errors import InvalidImageError
from ...images import ReducedImage
from ..batching import BatcherClosedError, QueueFullError
from ..dependencies import MetricsDep, ServiceDep, SettingsDep
from ..errors import ApiError
from ..inference import Detection, DetectionService, DetectOptions, PixelReservation
from ..metrics import ServiceMetrics
from ..settings import ServeSettings
from ..uploads import decode_upload, decode_upload_reduced, probe_image

__all__ = ["UPLOAD_BODY", "DetectContext", "DetectContextDep", "detect_options", "run_detection"]

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


def detect_options(
    threshold: float | None = Query(None, ge=0.0, lt=1.0, description="score threshold (default: the model's)"),
    nms: float | None = Query(None, gt=0.0, le=1.0, description="NMS IoU threshold (default 0.4)"),
    long_side: int | None = Query(None, ge=16, description="scale so the long side is N pixels"),
    det_size: str | None = Query(None, description="letterbox into a fixed WxH input, e.g. 640x640"),
    max_faces: int | None = Query(None, ge=1, le=10_000, description="keep at most this many faces"),
    *,
    settings: SettingsDep,
) -> DetectOptions:
    """Query parameters -> DetectOptions; sizes are bounded so no request can ask for a huge network input."""
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
    return DetectOptions(threshold=threshold, nms_threshold=nms, resize=resize, max_faces=max_faces)


@dataclass(frozen=True)
class DetectContext:
    """Everything a detecting route needs, gathered by FastAPI dependencies."""

    service: DetectionService
    settings: ServeSettings
    metrics: ServiceMetrics
    options: DetectOptions


def detect_context(
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    options: Annotated[DetectOptions, Depends(detect_options)],
) -> DetectContext:
    return DetectContext(service, settings, metrics, options)


def admit(data: bytes, ctx: DetectContext) -> PixelReservation:
    """Read the image's size from its header (415/413/400 without decoding) and reserve its pixels in the
    in-flight budget (429 when spent); hold it while the image is decoded and used."""
    _, width, height = probe_image(data, max_pixels=ctx.settings.max_pixels)
    try:
        return ctx.service.reserve(width * height)
    except QueueFullError:
        raise _busy(ctx, "pixel_budget") from None


async def decode(data: bytes, ctx: DetectContext) -> np.ndarray:
    """Decode in the thread pool, so a large image never blocks the event loop."""
    return await run_in_threadpool(decode_upload, data, max_pixels=ctx.settings.max_pixels)


async def decode_for_detection(data: bytes, ctx: DetectContext) -> ReducedImage:
    """Decode in the thread pool, a JPEG at the DCT scale the network input needs when the detector decodes
    "fast" (limits are still checked on the full size, and results come back in full-size pixels)."""
    target_size = ctx.service.decode_target(ctx.options)
    return await run_in_threadpool(
        decode_upload_reduced, data, max_pixels=ctx.settings.max_pixels, target_size=target_size
    )


def _busy(ctx: DetectContext, reason: str) -> ApiError:
    ctx.metrics.rejected.labels(reason).inc()
    return ApiError(
        429,
        "too_many_requests",
        "the server is busy: its queue is full; retry after a moment",
        headers={"Retry-After": "1"},
    )


async def run_detection(image: np.ndarray | ReducedImage, ctx: DetectContext) -> Detection:
    """One decoded image through the batcher; refusals become 429 / 503 / 504 / 422."""
    try:
        return await ctx.service.detect(image, ctx.options)
    except QueueFullError:
        raise _busy(ctx, "queue_full") from None
    except TimeoutError:
        ctx.metrics.rejected.labels("timeout").inc()
        raise ApiError(504, "timeout", f"no result within {ctx.settings.request_timeout_s:g} s") from None
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
