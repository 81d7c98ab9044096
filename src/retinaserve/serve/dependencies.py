"""Shared resources for the routes (settings, the detection service, metrics) and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request

from .errors import ApiError
from .inference import DetectionService
from .jobs import JobStore, owner_of
from .metrics import ServiceMetrics
from .reconstruct import ReconstructionService
from .settings import ServeSettings

__all__ = [
    "JobStoreDep",
    "MetricsDep",
    "OwnerDep",
    "ReconstructionDep",
    "ServiceDep",
    "SettingsDep",
    "get_metrics",
    "get_service",
    "get_settings",
    "require_api_key",
]


# The dependencies are coroutines, so FastAPI runs them on the event loop: a plain ``def`` would cost every request
# a hop to the thread pool and back for each of them, which under load is latency and GIL churn for nothing.


def _settings(request: Request) -> ServeSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_settings(request: Request) -> ServeSettings:
    return _settings(request)


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_service(request: Request) -> DetectionService:
    """The detection service; 503 while the model is loading, warming up or shutting down."""
    service: DetectionService = _ready(getattr(request.app.state, "service", None), "the model")
    return service


def _ready(service: Any, what: str) -> Any:
    """``service`` when it is started and ready, else 503 with Retry-After."""
    if service is None or not service.ready:
        raise ApiError(
            503,
            "not_ready",
            f"{what} is not loaded yet (or the server is shutting down); retry shortly",
            headers={"Retry-After": "1"},
        )
    return service


async def get_reconstruction(request: Request) -> ReconstructionService:
    """The reconstruction service; 404 when the server runs without 3D, 503 while it loads or shuts down."""
    settings = _settings(request)
    if not settings.reconstruction_enabled:
        raise ApiError(
            404, "not_enabled", "3D reconstruction is off on this server (it runs with reconstruction_model none)"
        )
    service: ReconstructionService = _ready(getattr(request.app.state, "reconstruction", None), "the 3D model")
    return service


async def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs  # type: ignore[no-any-return]


async def get_owner(request: Request) -> str | None:
    """Who is asking, for job ownership: a digest of their API key (None when the server has no keys)."""
    settings = _settings(request)
    return owner_of(request.headers.get(settings.api_key_header)) if settings.auth_enabled else None


def key_matches(settings: ServeSettings, given: str | None) -> bool:
    """Whether ``given`` is one of the server's API keys (compared in constant time); HTTP and WebSocket routes."""
    if not given:
        return False
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys)


async def require_api_key(request: Request) -> None:
    """401 unless the server has no keys or the request carries one of them (compared in constant time).

    The header is read by hand, not declared as a parameter: OpenAPI shows the scheme only when keys are configured
    (``openapi.py`` adds it then, under the configured header name)."""
    settings = _settings(request)
    if not settings.auth_enabled or key_matches(settings, request.headers.get(settings.api_key_header)):
        return
    raise ApiError(
        401,
        "unauthorized",
        f"missing or wrong API key: send it in the {settings.api_key_header} header",
        headers={"WWW-Authenticate": f'ApiKey header="{settings.api_key_header}"'},
    )


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ServiceDep = Annotated[DetectionService, Depends(get_service)]
ReconstructionDep = Annotated[ReconstructionService, Depends(get_reconstruction)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
