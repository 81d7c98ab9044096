"""Reconstruct jobs: create (202), poll, follow as server-sent events, fetch the result, cancel.

A job runs as an asyncio task through the same admission queue and pipeline as POST /v1/reconstruct; its result
stays in memory for the store's TTL and caps, then its URLs answer 404 with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from ..dependencies import (
    JobStoreDep,
    MetricsDep,
    OwnerDep,
    ReconstructionDep,
    SettingsDep,
    get_job_store,
    get_owner,
    require_api_key,
)
from ..errors import ApiError
from ..jobs import Job, JobGoneError, JobState, JobStore, Ticket
from ..metrics import ServiceMetrics
from ..reconstruct import ReconstructionOutcome, ReconstructionService, ReconstructOptions
from ..schemas import ErrorResponse
from ..settings import ServeSettings
from .common import UPLOAD_BODY
from .reconstruct import ERRORS, Format, OptionsDep, admit_upload, check_face, export_response, failure

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

log = logging.getLogger(__name__)

_GONE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job: unknown, deleted or expired (the message says)"}
}
_NOT_DONE: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "not done, failed or cancelled"}
}


async def get_job(
    store: Annotated[JobStore, Depends(get_job_store)],
    owner: Annotated[str | None, Depends(get_owner)],
    job_id: str = Path(max_length=64, description="the id from POST /v1/jobs/reconstruct"),
) -> Job:
    try:
        return store.get(job_id, owner)
    except JobGoneError as exc:
        raise ApiError(404, "job_not_found", str(exc)) from None


JobDep = Annotated[Job, Depends(get_job)]


async def _run(
    job: Job,
    data: bytes,
    ticket: Ticket,
    options: ReconstructOptions,
    service: ReconstructionService,
    settings: ServeSettings,
    metrics: ServiceMetrics,
) -> None:
    """The job's task: wait for its turn, run the pipeline with progress, keep the outcome or the error."""

    def report(state: JobState, done: int, total: int) -> None:
        job.advance(state, total)
        if done:
            job.step(done, total)

    try:
        async with asyncio.timeout(settings.job_timeout_s), ticket:
            metrics.observe_stage("queue", ticket.waited_s)
            outcome = await service.run(data, options, report)
        del data
        outcome.timings_ms = {"queue": round(ticket.waited_s * 1e3, 3), **outcome.timings_ms}
        job.succeed(outcome, nbytes=outcome.nbytes, faces=len(outcome.meshes))
    except asyncio.CancelledError:
        job.cancel()  # DELETE already marked it; a server shutdown lands here too
    except Exception as exc:
        error = failure(exc, settings.job_timeout_s)
        if error is None:
            log.exception("reconstruct job %s failed", job.id)
            job.fail("internal_error", "internal server error; the server log has the details")
        else:
            job.fail(error.code, error.message)
    finally:
        ticket.abandon()


@router.post(
    "/reconstruct",
    status_code=202,
    summary="Start a 3D reconstruction job; follow it at its events URL, fetch the result when done",
    responses={
        **{k: v for k, v in ERRORS.items() if k != 504},
        202: {"description": "the job, queued; Location names it"},
    },
    openapi_extra=UPLOAD_BODY,
)
async def create_reconstruct_job(
    request: Request,
    options: OptionsDep,
    service: ReconstructionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    store: JobStoreDep,
    owner: OwnerDep,
) -> JSONResponse:
    data, ticket = await admit_upload(request, service, settings, metrics, options)
    job = store.add(Job("reconstruct", owner))
    job.task = asyncio.create_task(_run(job, data, ticket, options, service, settings, metrics), name=f"job-{job.id}")
    request.app.state.job_tasks.add(job.task)
    job.task.add_done_callback(request.app.state.job_tasks.discard)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/{job_id}", summary="A job's state, stage, progress and timings", responses=_GONE)
async def get_job_state(job: JobDep) -> dict[str, Any]:
    return job.to_dict()


@router.get(
    "/{job_id}/events",
    summary="The job's state changes as server-sent events (event: stage | progress), until it ends",
    response_class=EventSourceResponse,
    responses=_GONE,
)
async def job_events(
    job: JobDep,
    last_event_id: str | None = Header(None, description="resume after this event id (sent by EventSource)"),
) -> AsyncIterator[ServerSentEvent]:
    after = -1  # no id, or one that is not a decimal number: from the start
    if last_event_id is not None and re.fullmatch(r"[0-9]+", last_event_id.strip()):
        digits = last_event_id.strip()
        after = int(digits) if len(digits) <= 9 else 2**31  # beyond any event: only the end, if it is to come
    async for event in job.follow(after):
        yield ServerSentEvent(data=event.to_dict(), event=event.kind, id=str(event.id))


def _finished(job: Job) -> ReconstructionOutcome:
    """The job's outcome, or 409 saying it is still running, failed or was cancelled."""
    if job.state == JobState.DONE:
        outcome: ReconstructionOutcome = job.result
        return outcome
    if job.finished:
        error = job.error or {}
        raise ApiError(409, f"job_{job.state.value}", f"the job {job.state.value}: {error.get('message', '')}")
    raise ApiError(
        409,
        "job_not_done",
        f"the job is still {job.state.value} ({job.progress:.0%}); follow its events or retry",
        headers={"Retry-After": "1"},
    )


@router.get(
    "/{job_id}/result",
    summary="The finished job's meshes: one face as GLB or OBJ zip, or every face as JSON",
    responses={
        **_GONE,
        **_NOT_DONE,
        200: {
            "description": "format=glb: binary glTF of face N; obj: zip of OBJ + MTL + PNG; json: every face",
            "content": {"model/gltf-binary": {}, "application/zip": {}, "application/json": {}},
        },
    },
    response_class=Response,
)
async def job_result(
    job: JobDep,
    format: Annotated[Format, Query(description="glb, obj (zip) or json")] = "glb",
    face: int = Query(0, ge=0, description="which face for glb or obj (0: the highest score)"),
) -> Response:
    return await export_response(_finished(job), format, face)


@router.get(
    "/{job_id}/texture",
    summary="One face's UV texture map as PNG",
    responses={**_GONE, **_NOT_DONE, 200: {"description": "the texture", "content": {"image/png": {}}}},
    response_class=Response,
)
async def job_texture(job: JobDep, face: int = Query(0, ge=0)) -> Response:
    outcome = _finished(job)
    check_face(outcome, face)
    return Response(await run_in_threadpool(outcome.texture_png, face), media_type="image/png")


@router.delete("/{job_id}", summary="Cancel a queued or running job, or delete a finished one", responses=_GONE)
async def delete_job(job: JobDep, store: JobStoreDep) -> dict[str, Any]:
    if job.cancel():
        return {**job.to_dict(), "deleted": False}
    store.remove(job, f"job {job.id!r} was deleted")
    return {**job.to_dict(), "deleted": True}
