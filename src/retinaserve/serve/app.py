"""The HTTP app: ``create_app(settings)`` wires routes, errors, metrics and the web page; the model is loaded and
warmed up in the lifespan, so importing this module or building the app is cheap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .batching import BatchStats
from .errors import install_error_handlers
from .guard import Drain, RequestGuard
from .inference import DetectionService, DetectorLike, build_detector
from .jobs import JobStore
from .metrics import MetricsMiddleware, ServiceMetrics
from .openapi import install_docs, install_openapi
from .reconstruct import ReconstructionService
from .routers import beautify, detect, health, jobs, metrics, models, reconstruct, stream
from .settings import ServeSettings

__all__ = ["STATIC_DIR", "ServiceFactory", "create_app"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

ServiceFactory = Callable[[ServeSettings, Callable[[BatchStats], None]], DetectionService]
"""Builds the detection service of an app from its settings and the callback that records each model call."""

_DESCRIPTION = """Face detection with five landmarks, landmark-guided skin smoothing, and textured 3D face meshes
(at once with POST /v1/reconstruct, or as a job with live progress as server-sent events).

Upload an image as a multipart file or as the raw body. Its type is decided by its content. Errors always have
the shape `{"error": {"code": ..., "message": ...}}`. When the server runs with API keys, send one in the
`X-API-Key` header (health checks, this page and the web page need none)."""


def create_app(
    settings: ServeSettings | None = None,
    *,
    detector_factory: Callable[[ServeSettings], DetectorLike] = build_detector,
    service_factory: ServiceFactory | None = None,
) -> FastAPI:
    """A new app with its own metrics registry; the detector is built by ``detector_factory`` at start-up, or the
    whole detection service by ``service_factory`` (settings, the batch-metrics callback) where the model runs
    elsewhere (the Ray Serve application's model replicas)."""
    settings = settings or ServeSettings()
    service_metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service_factory is None:
            service = DetectionService(settings, detector_factory, on_batch=service_metrics.observe_batch)
        else:
            service = service_factory(settings, service_metrics.observe_batch)
        service_metrics.track_queue(lambda: service.queue_depth, lambda: service.images_in_flight)
        service_metrics.track_admission(service)
        app.state.service = service
        await service.start()  # builds the detector and warms it up on the thread that will run it
        service_metrics.model_info.labels(service.model_name, settings.precision).set(1)
        log.info(
            "serving %s (%s) on %s with max batch %d, max wait %g ms, queue %d; %s",
            service.model_name,
            settings.precision,
            service.engine["backend"],
            service.batcher.max_batch_size,
            settings.max_wait_ms,
            settings.max_queue,
            service.engine["reason"],
        )
        reconstruction = None
        if settings.reconstruction_enabled:
            reconstruction = ReconstructionService(
                settings,
                service,
                on_batch=service_metrics.observe_mesh_batch,
                on_stage=service_metrics.observe_stage,
            )
            service_metrics.track_jobs(reconstruction, app.state.jobs)
            app.state.reconstruction = reconstruction
            await reconstruction.start()
            log.info("serving 3D model %s", reconstruction.model_name)
        try:
            yield
        finally:
            log.info("shutting down: finishing queued work")
            if reconstruction is not None:
                reconstruction.ready = False
                for task in list(app.state.job_tasks):  # jobs are cancelled (their events say so), not awaited
                    task.cancel()
                await asyncio.gather(*app.state.job_tasks, return_exceptions=True)
                await reconstruction.stop()
                app.state.reconstruction = None
            await service.stop()
            app.state.service = None

    app = FastAPI(
        title="retinaserve",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = service_metrics
    app.state.service = None
    app.state.reconstruction = None
    app.state.jobs = JobStore(
        ttl_s=settings.job_result_ttl_s,
        max_results=settings.max_job_results,
        max_result_bytes=int(settings.max_job_result_mb * 1024 * 1024),
    )
    app.state.job_tasks = set()
    app.state.drain = Drain()
    install_error_handlers(app)
    for module in (health, detect, stream, beautify, reconstruct, jobs, models, metrics):
        app.include_router(module.router)
    install_openapi(app, settings)
    install_docs(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(
        RequestGuard,
        drain=app.state.drain,
        body_timeout_s=settings.body_timeout_s,
        on_disconnect=service_metrics.rejected.labels("client_disconnected").inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=service_metrics)  # outermost: it counts the guard's answers too
    return app
