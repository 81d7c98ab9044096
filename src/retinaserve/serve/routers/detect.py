"""POST /v1/detect and /v1/detect/batch: images in, faces out in the wire format of ``Face.to_dict``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..dependencies import require_api_key
from ..errors import ApiError
from ..inference import Detection
from ..schemas import BatchResponse, DetectResponse, ErrorResponse
from ..uploads import Upload, read_uploads
from .common import UPLOAD_BODY, DetectContext, DetectContextDep, admit, decode_for_detection, ms_since, run_detection

router = APIRouter(prefix="/v1", tags=["detection"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "empty, corrupt or truncated image; malformed multipart"),
        (401, "missing or wrong API key"),
        (413, "body, image or pixel count over the limit"),
        (415, "not an image in a supported format (decided by content)"),
        (422, "invalid parameter"),
        (429, "queue full; see Retry-After"),
        (503, "model not ready or shutting down"),
        (504, "no result within the request timeout"),
    )
}


BATCH_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "multipart/form-data with one file part per image, in the order of the results; every file "
        "part is read whatever its field name (`files` by convention: `curl -F files=@a.jpg -F files=@b.jpg`), "
        "other fields are ignored; each image's type is read from its content",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            }
        },
    }
}
"""OpenAPI description of the batch upload: the field name is free; ``files`` is what the docs and examples use."""


def _payload(detection: Detection, *, landmarks: bool, timings: dict[str, float]) -> dict[str, Any]:
    result = detection.result
    stages = {k: round(result.timings_ms.get(k, 0.0), 3) for k in ("preprocess", "forward", "postprocess")}
    return {
        "faces": [face.to_dict(landmarks=landmarks) for face in result.faces],
        "image": {"width": result.width, "height": result.height},
        "timings_ms": {**timings, **stages},
    }


async def _detect_upload(upload: Upload, ctx: DetectContext, landmarks: bool) -> tuple[dict[str, Any], int]:
    start = time.perf_counter()
    with admit(upload.data, ctx):
        image = await decode_for_detection(upload.data, ctx)
        decoded = time.perf_counter()
        detection = await run_detection(image, ctx)
        del image
    inference = detection.result.timings_ms.get("total", 0.0)
    timings = {
        "decode": round((decoded - start) * 1e3, 3),
        "queue": round(max(0.0, (time.perf_counter() - decoded) * 1e3 - inference), 3),
        "inference": round(inference, 3),
    }
    return _payload(detection, landmarks=landmarks, timings=timings), detection.batch_size


@router.post(
    "/detect",
    summary="Detect faces in one image",
    response_model=DetectResponse,
    responses=_ERRORS,
    openapi_extra=UPLOAD_BODY,
)
async def detect(
    request: Request,
    landmarks: bool = Query(True, description="include the five points"),
    *,
    ctx: DetectContextDep,
) -> JSONResponse:
    start = time.perf_counter()
    uploads = await read_uploads(request, limit=ctx.settings.max_upload_bytes, max_files=1)
    received = ms_since(start)
    body, batch_size = await _detect_upload(uploads[0], ctx, landmarks)
    body["model"] = ctx.service.model_name
    body["timings_ms"] = {"receive": received, **body["timings_ms"], "total": ms_since(start)}
    return JSONResponse(body, headers={"X-Batch-Size": str(batch_size)})


@router.post(
    "/detect/batch",
    summary="Detect faces in several images (multipart, one file part per image)",
    response_model=BatchResponse,
    responses=_ERRORS,
    openapi_extra=BATCH_UPLOAD_BODY,
)
async def detect_batch(
    request: Request,
    landmarks: bool = Query(True, description="include the five points"),
    *,
    ctx: DetectContextDep,
) -> JSONResponse:
    """One result per file, in order; an unusable image gets an ``error`` entry and the others still run."""
    start = time.perf_counter()
    settings = ctx.settings
    uploads = await read_uploads(
        request, limit=settings.max_batch_upload_bytes, max_files=settings.max_images_per_request
    )
    received = ms_since(start)

    async def one(index: int, upload: Upload) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "filename": upload.filename}
        if len(upload.data) > settings.max_upload_bytes:
            error = ApiError(413, "payload_too_large", f"image exceeds the limit of {settings.max_upload_bytes} bytes")
            return {**item, "status": error.status, "error": error.to_dict()}
        try:
            body, _ = await _detect_upload(upload, ctx, landmarks)
        except ApiError as exc:
            if exc.status in (429, 503, 504):
                raise  # the server's state, not this image's fault: the whole request gets it
            return {**item, "status": exc.status, "error": exc.to_dict()}
        return {**item, "status": 200, **body}

    results = await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads)))
    return JSONResponse(
        {
            "results": results,
            "model": ctx.service.model_name,
            "timings_ms": {"receive": received, "total": ms_since(start)},
        }
    )
