"""POST /v1/reconstruct: a photo in, the textured mesh of one face (GLB, OBJ zip) or every face as JSON out; and
what it shares with the reconstruct jobs (options, admission, turning failures into HTTP answers)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...errors import InvalidImageError
from ...registry import list_models
from ..batching import BatcherClosedError, QueueFullError
from ..dependencies import MetricsDep, ReconstructionDep, SettingsDep, require_api_key
from ..errors import ApiError
from ..jobs import Ticket
from ..metrics import ServiceMetrics
from ..reconstruct import ReconstructionOutcome, ReconstructionService, ReconstructOptions
from ..schemas import ErrorResponse
from ..settings import ServeSettings
from ..uploads import read_uploads
from .common import UPLOAD_BODY

router = APIRouter(prefix="/v1", tags=["3d"], dependencies=[Depends(require_api_key)])

Format = Literal["glb", "obj", "json"]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "empty, corrupt or truncated image; malformed multipart"),
        (404, "3D turned off on this server"),
        (413, "body, image or pixel count over the limit"),
        (415, "not an image in a supported format (decided by content)"),
        (422, "invalid parameter; no face to export"),
        (429, "too many reconstructions admitted; see Retry-After"),
        (503, "model not ready or shutting down"),
        (504, "no result within the request timeout"),
    )
}


async def reconstruct_options(
    service: ReconstructionDep,
    model: str | None = Query(None, description="the 3D model; the server serves one (see /v1/models)"),
    max_faces: int | None = Query(None, ge=1, description="reconstruct at most this many faces (highest scores)"),
    texture_size: int | None = Query(None, description="UV texture side in pixels: 256, 512 (default), 1024, ..."),
) -> ReconstructOptions:
    """Query parameters -> ReconstructOptions within the server's limits (422 otherwise)."""
    if model is not None and model != service.model_name:
        registered = list_models("reconstruction")
        why = "is registered but not loaded here" if model in registered else "is not a registered 3D model"
        raise ApiError(
            422,
            "invalid_parameter",
            f"model {model!r} {why}; this server serves {service.model_name!r} (registered: {', '.join(registered)})",
        )
    try:
        return service.options(max_faces, texture_size)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


OptionsDep = Annotated[ReconstructOptions, Depends(reconstruct_options)]


def busy(metrics: ServiceMetrics, reason: str, message: str) -> ApiError:
    metrics.rejected.labels(reason).inc()
    return ApiError(429, "too_many_requests", message, headers={"Retry-After": "2"})


async def admit_upload(
    request: Request,
    service: ReconstructionService,
    settings: ServeSettings,
    metrics: ServiceMetrics,
    options: ReconstructOptions,
) -> tuple[bytes, Ticket]:
    """Read the image (413 while streaming), check its header (415/413/400 before any decoding), and take a place
    in the admission queue sized by the job's memory estimate (429 when the queue is full)."""
    uploads = await read_uploads(request, limit=settings.max_upload_bytes, max_files=1)
    data = uploads[0].data
    _, width, height = await service.detection.probe(data)  # never stalls the event loop
    try:
        return data, service.admit(width * height, options)
    except QueueFullError:
        raise busy(
            metrics,
            "job_queue_full",
            f"the server is busy: {settings.max_jobs} reconstructions are already queued or running; retry later",
        ) from None


def failure(exc: BaseException, timeout_s: float) -> ApiError | None:
    """The HTTP answer for a reconstruction that raised ``exc``, or None for an unexpected error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TimeoutError):
        return ApiError(504, "timeout", f"no result within {timeout_s:g} s")
    if isinstance(exc, QueueFullError):
        return ApiError(429, "too_many_requests", f"the server is busy: {exc}", headers={"Retry-After": "2"})
    if isinstance(exc, BatcherClosedError):
        return ApiError(503, "unavailable", "the server is shutting down", headers={"Retry-After": "1"})
    if isinstance(exc, InvalidImageError):
        return ApiError(400, "invalid_image", str(exc))
    return None


def check_face(outcome: ReconstructionOutcome, face: int) -> None:
    """422 ``no_face`` when nothing was reconstructed, 422 ``invalid_parameter`` when ``face`` is out of range."""
    try:
        outcome.mesh(face)
    except LookupError as exc:
        raise ApiError(422, "no_face", str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


async def export_response(outcome: ReconstructionOutcome, fmt: Format, face: int) -> Response:
    """The outcome in ``fmt``: JSON for every face, or one face's GLB / OBJ zip (422 when there is no such face)."""
    headers = {"X-Faces": str(len(outcome.meshes))}
    if fmt == "json":
        return JSONResponse(outcome.to_dict(), headers=headers)
    check_face(outcome, face)
    if fmt == "glb":
        data = await run_in_threadpool(outcome.glb_bytes, face)
        name, media = f"face{face}.glb", "model/gltf-binary"
    else:
        data = await run_in_threadpool(outcome.obj_zip_bytes, face)
        name, media = f"face{face}_obj.zip", "application/zip"
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(data, media_type=media, headers=headers)


@router.post(
    "/reconstruct",
    summary="Textured 3D face meshes from one photo (waits for the result; see /v1/jobs/reconstruct for progress)",
    responses={
        **ERRORS,
        200: {
            "description": "format=glb: binary glTF of face N; obj: zip of OBJ + MTL + PNG; json: every face",
            "content": {"model/gltf-binary": {}, "application/zip": {}, "application/json": {}},
        },
    },
    openapi_extra=UPLOAD_BODY,
    response_class=Response,
)
async def reconstruct(
    request: Request,
    options: OptionsDep,
    service: ReconstructionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    format: Annotated[Format, Query(description="glb, obj (zip) or json")] = "glb",
    face: int = Query(0, ge=0, description="which face to export as glb or obj (0: the highest score)"),
) -> Response:
    start = time.perf_counter()
    data, ticket = await admit_upload(request, service, settings, metrics, options)
    try:
        async with asyncio.timeout(settings.request_timeout_s), ticket:
            metrics.observe_stage("queue", ticket.waited_s)
            outcome = await service.run(data, options, lambda *_: None, export=False)
    except Exception as exc:
        error = failure(exc, settings.request_timeout_s)
        if error is None:
            raise
        if error.status == 504:
            metrics.rejected.labels("timeout").inc()
        raise error from None
    finally:
        ticket.abandon()
    outcome.timings_ms = {"queue": round(ticket.waited_s * 1e3, 3), **outcome.timings_ms}
    response = await export_response(outcome, format, face)
    response.headers["X-Total-Ms"] = f"{(time.perf_counter() - start) * 1e3:.1f}"
    return response
