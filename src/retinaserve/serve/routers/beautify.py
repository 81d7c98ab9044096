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
from ..beautify import beautify
from ..dependencies import require_api_key
from ..uploads import read_uploads
from .common import UPLOAD_BODY, DetectContextDep, admitted, deadline, decode, ms_since, probe, run_detection
from .detect import _ERRORS

router = APIRouter(prefix="/v1", tags=["beautify"], dependencies=[Depends(require_api_key)])


def _render(image: np.ndarray, faces: list[Face], strength: float, fmt: str, until: float) -> bytes:
    smoothed = beautify(image, faces, strength=strength, deadline=until)
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(smoothed).save(buffer, format="PNG", compress_level=3)
    else:
        Image.fromarray(smoothed).save(buffer, format="JPEG", quality=92)
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
        async with admitted([size], ctx):
            image = await decode(data, ctx)
            detection = await run_detection(image, ctx)
            faces = sorted(detection.result.faces, key=lambda face: face.score, reverse=True)
            smoothed = faces[: ctx.settings.max_render_faces]
            body = await ctx.service.in_workers(_render, image, smoothed, strength, format, until)
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
