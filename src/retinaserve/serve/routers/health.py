"""Liveness and readiness: no API key needed, never touches the model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import ApiError
from ..schemas import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="The model is loaded and warmed up",
    responses={503: {"model": ErrorResponse, "description": "not ready; see Retry-After"}},
)
async def readyz(request: Request) -> dict[str, object]:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ApiError(
            503, "not_ready", "model not loaded or warmed up yet, or shutting down", headers={"Retry-After": "1"}
        )
    return {"status": "ready", "model": service.model_name, "auth_required": request.app.state.settings.auth_enabled}
