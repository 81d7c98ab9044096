"""Prometheus metrics with a registry per app (several apps in one process, e.g. in tests, never collide)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import BatchStats

__all__ = ["MetricsMiddleware", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServiceMetrics:
    """The service's counters, histograms and gauges, all in one ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter(
            "retinaserve_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retinaserve_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "retinaserve_batch_size",
            "Images per model call made by the dynamic batcher.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "retinaserve_batch_queue_wait_seconds",
            "How long the oldest image of a model call waited in the queue.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "retinaserve_batch_inference_seconds",
            "Duration of one model call (pre-process, forward, post-process of the whole batch).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("retinaserve_queue_depth", "Images waiting for the model.", registry=self.registry)
        self.in_flight = Gauge(
            "retinaserve_batch_in_flight", "Images in the model call running now.", registry=self.registry
        )
        self.engine_backlog = Gauge(
            "retinaserve_engine_backlog_seconds",
            "Estimated engine time of the admitted detection work not yet done (what admission compares with the "
            "target queue delay).",
            registry=self.registry,
        )
        self.engine_cost = Gauge(
            "retinaserve_engine_cost_seconds_per_megapixel",
            "The cost model's engine seconds per megapixel of network input, by score threshold class.",
            ["threshold"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "retinaserve_rejected_requests",
            "Requests refused before inference, by reason (queue_full, timeout, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.reconstruct_stage = Histogram(
            "retinaserve_reconstruct_stage_seconds",
            "Time per stage of a reconstruction (queue, decode, detect, crop, geometry, texture, export), jobs and "
            "/v1/reconstruct alike.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.mesh_batch_size = Histogram(
            "retinaserve_mesh_batch_size",
            "Faces per mesh-network call made by the mesh batcher (faces of concurrent requests share a call).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Gauge("retinaserve_jobs", "Jobs the server holds, by state.", ["state"], registry=self.registry)
        self.job_queue_depth = Gauge(
            "retinaserve_job_queue_depth",
            "Reconstructions admitted and waiting for their turn (memory budget or running limit).",
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "retinaserve_jobs_running", "Reconstructions past the admission queue.", registry=self.registry
        )
        self.job_memory = Gauge(
            "retinaserve_job_memory_estimate_bytes",
            "Estimated memory of the running reconstructions (what the admission queue budgets).",
            registry=self.registry,
        )
        self.job_results = Gauge(
            "retinaserve_job_result_bytes", "Memory held by finished jobs' results.", registry=self.registry
        )
        self.stream_connections = Gauge(
            "retinaserve_stream_connections", "Open /v1/stream WebSockets.", registry=self.registry
        )
        self.stream_received = Counter(
            "retinaserve_stream_frames_received", "Frames received on /v1/stream WebSockets.", registry=self.registry
        )
        self.stream_frames = Counter(
            "retinaserve_stream_frames",
            "What became of /v1/stream frames: processed, dropped (a newer frame of the same socket replaced it "
            "before it ran) or failed (answered with an error).",
            ["outcome"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "retinaserve_model_info",
            "The model being served (value 1).",
            ["model", "precision"],
            registry=self.registry,
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.queue_wait.observe(stats.queue_wait_s)
        self.inference.observe(stats.run_s)

    def observe_mesh_batch(self, stats: BatchStats) -> None:
        self.mesh_batch_size.observe(stats.size)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.reconstruct_stage.labels(stage).observe(seconds)

    def track_jobs(self, service: Any, store: Any) -> None:
        """Read the job gauges at scrape time from the reconstruction service's admission queue and job store."""
        from .jobs import JobState

        for state in JobState:
            self.jobs.labels(state.value).set_function(partial(store.count, state))
        self.job_queue_depth.set_function(lambda: len(service.admission.waiting))
        self.jobs_running.set_function(lambda: service.admission.running)
        self.job_memory.set_function(lambda: service.admission.used_mb * 1024 * 1024)
        self.job_results.set_function(lambda: store.result_bytes)

    def track_queue(self, depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read the queue depth and in-flight count at scrape time."""
        self.queue_depth.set_function(depth)
        self.in_flight.set_function(in_flight)

    def track_admission(self, service: Any) -> None:
        """Read the engine backlog and the cost model at scrape time from the detection service."""
        self.engine_backlog.set_function(lambda: service.admission.backlog_s)
        for label, low in (("normal", False), ("low", True)):
            self.engine_cost.labels(label).set_function(partial(lambda low: service.costs.rates[low] * 1e6, low))


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its raw path, so random URLs cannot blow up label
    cardinality) and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        answered = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
            if status == 500 and not answered:
                status = 499  # nothing sent and nothing raised: the client went away and its request was cancelled
        finally:
            route = _route_template(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path", "other"))
    return "unmatched"
