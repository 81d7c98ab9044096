"""POST /v1/detect and /v1/detect/batch: images in, faces out in the wire format of ``Face.to_dict``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..dependencies import require_api_key
from ..errors import ApiError
from ..inference import Detection
from ..schemas import BatchResponse, DetectResponse, ErrorResponse
from ..uploads import Upload, read_uploads
from .common import (
    UPLOAD_BODY,
    DetectContext,
    DetectContextDep,
    admitted,
    deadline,
    decode_for_detection,
    ms_since,
    probe,
    run_detection,
)

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["detection"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "empty, corrupt or truncated image; malformed multipart"),
        (408, "the body did not arrive within the body timeout"),
        (
            413,
            "body, image or pixel count over the limit; an image header too slow to parse; a request that could "
            "never finish within its deadline or fit the in-flight pixel budget",
        ),
        (415, "not an image in a supported format (decided by content)"),
        (422, "invalid parameter"),
        (429, "the engine has more work admitted than a new request may wait for; see Retry-After"),
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


async def detect_uploads(
    uploads: list[Upload], ctx: DetectContext, landmarks: bool
) -> list[tuple[dict[str, Any], Detection] | ApiError]:
    """Each upload's answer body and detection (its model call's size, its replica), or the ApiError that is that
    image's fault (unreadable, too large, corrupt). Refusals that are the server's state (413 for the request as a
    whole, 429, 503, 504) raise instead and stop every image of the request. Must run inside :func:`deadline`."""
    start = time.perf_counter()
    limit = ctx.settings.max_upload_bytes

    async def size_of(upload: Upload) -> tuple[int, int] | ApiError:
        if len(upload.data) > limit:
            return ApiError(413, "payload_too_large", f"image exceeds the limit of {limit} bytes")
        try:
            return await probe(upload.data, ctx)
        except ApiError as exc:
            return exc

    sizes = await asyncio.gather(*(size_of(upload) for upload in uploads))
    answers: dict[int, tuple[dict[str, Any], Detection] | ApiError] = {
        i: size for i, size in enumerate(sizes) if isinstance(size, ApiError)
    }
    good = {i: size for i, size in enumerate(sizes) if not isinstance(size, ApiError)}

    async def one(index: int) -> None:
        upload = uploads[index]
        try:
            image = await decode_for_detection(upload.data, ctx)
        except ApiError as exc:
            answers[index] = exc
            return
        decoded = time.perf_counter()
        try:
            detection = await run_detection(image, ctx)
        except ApiError as exc:
            if exc.status in (429, 503, 504):
                raise  # the server's state, not this image's fault
            answers[index] = exc
            return
        finally:
            ticket.release(ctx.service.estimate_s([good[index]], ctx.options))  # the engine is done with it
        del image
        inference = detection.result.timings_ms.get("total", 0.0)
        timings = {
            "decode": round((decoded - start) * 1e3, 3),
            "queue": round(max(0.0, (time.perf_counter() - decoded) * 1e3 - inference), 3),
            "inference": round(inference, 3),
        }
        answers[index] = (_payload(detection, landmarks=landmarks, timings=timings), detection)

    if good:
        async with admitted(list(good.values()), ctx) as ticket, asyncio.TaskGroup() as group:
            for index in good:
                group.create_task(one(index))
    return [answers[i] for i in range(len(uploads))]


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
    async with deadline(ctx):
        (answer,) = await unwrap_group(detect_uploads(uploads, ctx, landmarks))
    if isinstance(answer, ApiError):
        raise answer
    body, detection = answer
    body["model"] = ctx.service.model_name
    body["timings_ms"] = {"receive": received, **body["timings_ms"], "total": ms_since(start)}
    headers = {"X-Batch-Size": str(detection.batch_size)}
    if detection.replica is not None:
        headers["X-Replica"] = detection.replica
    return JSONResponse(body, headers=headers)


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
    async with deadline(ctx):
        answers = await unwrap_group(detect_uploads(uploads, ctx, landmarks))
    results: list[dict[str, Any]] = []
    for index, (upload, answer) in enumerate(zip(uploads, answers)):
        item: dict[str, Any] = {"index": index, "filename": upload.filename}
        if isinstance(answer, ApiError):
            results.append({**item, "status": answer.status, "error": answer.to_dict()})
        else:
            results.append({**item, "status": 200, **answer[0]})
    return JSONResponse(
        {
            "results": results,
            "model": ctx.service.model_name,
            "timings_ms": {"receive": received, "total": ms_since(start)},
        }
    )


async def unwrap_group(work: Awaitable[T]) -> T:
    """``await work``, re-raising the first ApiError of a failed TaskGroup as itself (the other images' tasks are
    cancelled by then)."""
    try:
        return await work
    except* ApiError as group:
        raise group.exceptions[0] from None
