"""POST /v1/beautify: landmark-guided skin smoothing; returns the image."""

from __future__ import annotations

import io
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from PIL import Image

from ...detection import Face
from ...memory import trim_heap
from ..beautify import beautify, render_budget
from ..dependencies import require_api_key
from ..uploads import decode_upload, read_uploads
from .common import (
    UPLOAD_BODY,
    DetectContextDep,
    admitted,
    deadline,
    ms_since,
    probe,
    render_admitted,
    run_detection,
)
from .detect import _ERRORS

router = APIRouter(prefix="/v1", tags=["beautify"], dependencies=[Depends(require_api_key)])


_TRIM_AFTER_BYTES = 12_000_000
"""Images above this (~4 Mpx RGB) hand their freed memory back to the OS once rendered."""


def _render(image: np.ndarray, faces: list[Face], strength: float, fmt: str, until: float) -> bytes:
    smoothed = beautify(image, faces, strength=strength, deadline=until)
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(smoothed).save(buffer, format="PNG", compress_level=3)
    else:
        Image.fromarray(smoothed).save(buffer, format="JPEG", quality=92)
    if image.nbytes > _TRIM_AFTER_BYTES:
        del smoothed
        trim_heap()
    return buffer.getvalue()


@router.post(
    "/beautify",
    summary="Smooth facial skin (eyes, brows and mouth kept sharp) and return the image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **_ERRORS},
    openapi_extra=UPLOAD_BODY,
)
async def beautify_route(
    request: Request,
    strength: float = Query(0.6, ge=0.0, le=1.0, description="0 = unchanged, 1 = fully smoothed skin"),
    format: Literal["jpeg", "png"] = Query("jpeg", description="encoding of the returned image"),
    *,
    ctx: DetectContextDep,
) -> Response:
    start = time.perf_counter()
    uploads = await read_uploads(request, limit=ctx.settings.max_upload_bytes, max_files=1)
    data = uploads[0].data
    async with deadline(ctx) as until:
        size = await probe(data, ctx)
        pixels = size[0] * size[1]
        async with admitted([size], ctx) as ticket, render_admitted(pixels, ctx):
            render_start = time.perf_counter()
            image = await ctx.service.in_renderers(decode_upload, data, max_pixels=ctx.settings.max_pixels)
            decode_s = time.perf_counter() - render_start
            detection = await run_detection(image, ctx)
            ticket.release()  # the engine is done; smoothing runs on the render pool
            faces = sorted(detection.result.faces, key=lambda face: face.score, reverse=True)
            height, width = image.shape[:2]
            count = render_budget(faces, height, width, max_faces=ctx.settings.max_render_faces, pixel_factor=2.0)
            smoothed = faces[:count]
            render_start = time.perf_counter()
            body = await ctx.service.in_renderers(_render, image, smoothed, strength, format, until)
            ctx.service.render_costs.observe(pixels, 1, decode_s + time.perf_counter() - render_start)
            del image
    return Response(
        body,
        media_type=f"image/{format}",
        headers={
            "X-Faces": str(len(faces)),
            "X-Faces-Smoothed": str(len(smoothed)),
            "X-Model": ctx.service.model_name,
            "Server-Timing": f"total;dur={ms_since(start)}",
        },
    )
