"""The HTTP service as a Ray Serve application: the same FastAPI app as ``retinaserve serve`` (routes, JSON, errors,
limits, API keys, web page, health, metrics) in an ingress deployment, and the detector in model replicas behind
``@serve.batch``, Serve's own batching.

The ingress parses, probes, admits and decodes each upload exactly as the plain server does, then sends the decoded
image to the model deployment through a DeploymentHandle. Serve routes it to a replica, whose ``@serve.batch``
method collects what arrives within ``max_wait_ms`` (up to the engine's batch size) into one engine call. The model
replicas are sized by the memory planner (:mod:`.sizing`): on a GPU a fraction of the card, on CPU a few cores and
the RAM they need; their number is fixed (``--replicas``) or left to Serve's autoscaler (``--autoscale MIN:MAX``).

``serve run retinaserve.ray:app`` reads the settings from ``RETINASERVE_*`` environment variables;
``serve run retinaserve.ray:build model=ultralight-slim replicas=2`` takes them as arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ..detection import ImageResult, ResizePolicy
from ..images import ReducedImage
from ..serve.admission import CostModel
from ..serve.app import create_app
from ..serve.batching import BatchStats, QueueFullError
from ..serve.errors import ApiError
from ..serve.inference import Detection, DetectionService, DetectOptions, preflight
from ..serve.settings import ServeSettings
from .sizing import ReplicaPlan, measure_replica, plan_replicas

__all__ = [
    "APP_NAME",
    "INGRESS_CPUS",
    "Ingress",
    "ModelReplica",
    "RemoteDetectionService",
    "build_application",
    "parse_autoscale",
    "plan_for",
    "run_until_stopped",
]

log = logging.getLogger(__name__)

APP_NAME = "retinaserve"
INGRESS_CPUS = 0.5
"""The ingress replica's CPU reservation: it parses and decodes uploads (a JPEG decode at the network's scale is
a few ms), so it needs a share of a core, not a whole one that the model replicas could use."""
_INGRESS_MAX_ONGOING = 1024
"""Requests one ingress replica takes at once: the app's own admission (429 with Retry-After) and its pixel budget
bound the work, as on the plain server, so Serve's limit sits above them."""


@dataclass(frozen=True)
class RemoteDetection:
    """A model replica's answer for one image: its detection or its error, and what the replica's engine did since
    its last answer (each engine call's stats reach the ingress once) with its current cost model."""

    detection: Detection | None
    error: Exception | None = None
    stats: tuple[BatchStats, ...] = ()
    costs: CostModel | None = None


SERVE_BATCHES_IN_FLIGHT = 8
"""``@serve.batch``'s ``max_concurrent_batches``: Serve fixes a batch when its wait ends, so with one batch at a time
the images arriving while the engine runs would form batches of one or two behind it (measured: mean batch 1.04 at
8 clients). With several in flight, every waiting image reaches the replica's engine batcher, which takes all of
them into its next engine call, as the plain server's does."""


class ModelReplica:
    """One copy of the detector (built, warmed up and timed as the plain server's) behind ``@serve.batch``, which
    hands each batch to the replica's engine batcher (grouping by options, merging what waits while the engine is
    busy, one thread owning the model)."""

    async def __init__(self, settings: ServeSettings) -> None:  # type: ignore[misc]  # Serve awaits it
        if settings.device.startswith("cuda"):  # Ray shows a replica only its own GPU (CUDA_VISIBLE_DEVICES)
            settings = dataclasses.replace(settings, device="cuda")
        self._stats: list[BatchStats] = []
        self.service = DetectionService(settings, on_batch=self._stats.append)
        await self.service.start()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.detect.set_max_batch_size(self.service.batcher.max_batch_size)  # type: ignore[attr-defined,misc]
        self.detect.set_batch_wait_timeout_s(settings.max_wait_ms / 1000.0)  # type: ignore[attr-defined,misc]
        log.info(
            "model replica %s: %s on %s, batch %d",
            self.replica,
            self.service.model_name,
            self.service.engine["backend"],
            self.service.batcher.max_batch_size,
        )

    def info(self) -> dict[str, Any]:
        """What the ingress needs to act as if the model were local: its name, resize and decode policies, engine
        and calibrated cost model."""
        service = self.service
        detector = service.detector
        return {
            "model": service.model_name,
            "resize": getattr(detector, "resize", None),
            "decode": getattr(detector, "decode", "exact"),
            "engine": service.engine,
            "max_batch": service.batcher.max_batch_size,
            "costs": service.costs,
            "replica": self.replica,
        }

    @serve.batch(  # type: ignore[arg-type]  # sized in __init__
        max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=SERVE_BATCHES_IN_FLIGHT
    )
    async def detect(  # type: ignore[misc]
        self, images: list[np.ndarray | ReducedImage], options_per_image: list[DetectOptions]
    ) -> list[RemoteDetection]:
        """Serve's batch of single-image requests (``handle.detect.remote(image, options)``) -> each image's
        answer; one image's error (a bad option, the queue full) is its own."""
        outcomes = await asyncio.gather(
            *(self.service.detect(image, options) for image, options in zip(images, options_per_image)),
            return_exceptions=True,
        )
        stats, self._stats[:] = tuple(self._stats), []
        answers = []
        for rank, outcome in enumerate(outcomes):
            extra: dict[str, Any] = {"stats": stats, "costs": self.service.costs} if rank == 0 else {}
            if isinstance(outcome, Exception):
                answers.append(RemoteDetection(None, outcome, **extra))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answers.append(RemoteDetection(dataclasses.replace(outcome, replica=self.replica), **extra))
        return answers

    def check_health(self) -> None:
        """Serve's periodic check: a replica whose engine is not ready is restarted."""
        if not self.service.ready:
            raise RuntimeError("the detector is not ready")


class _RemoteDetector:
    """What the ingress' routes and the 3D service read from "the detector" (name, resize, decode), with ``run``
    going to the model replicas."""

    def __init__(self, info: dict[str, Any], handle: DeploymentHandle) -> None:
        self.name: str = info["model"]
        self.resize: ResizePolicy | None = info["resize"]
        self.decode: str = info["decode"]
        self._handle = handle

    def run(self, images: Sequence[Any], **options: Any) -> list[ImageResult]:
        """Images through the model replicas, from a worker thread (the Reconstructor's own detection path)."""
        from ..images import load_image

        detect_options = DetectOptions(**{k: v for k, v in options.items() if v is not None})
        arrays = [load_image(image) if not isinstance(image, np.ndarray) else image for image in images]
        responses = [self._handle.detect.remote(array, detect_options) for array in arrays]
        results = []
        for response in responses:
            answer: RemoteDetection = response.result()
            if answer.error is not None:
                raise answer.error
            assert answer.detection is not None
            results.append(answer.detection.result)
        return results


class RemoteDetectionService(DetectionService):
    """The ingress' detection service: the plain server's parsing, admission and decoding, with every decoded image
    sent to the model deployment (where Serve batches it) instead of a local batcher."""

    def __init__(
        self,
        settings: ServeSettings,
        handle: DeploymentHandle,
        *,
        parallel: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        super().__init__(settings, on_batch=on_batch)
        self.handle = handle
        self.parallel = max(1, parallel)
        """Model replicas working at once: the engine backlog drains this many times faster than one replica's."""
        self.on_batch = on_batch
        self._info: dict[str, Any] = {}
        self._waiting = 0

    @property
    def engine(self) -> dict[str, object]:
        return {**self._info.get("engine", {}), "replicas": self.parallel, "batching": "ray serve"}

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def images_in_flight(self) -> int:
        return 0  # the replicas know; Serve's own metrics report their queues

    async def start(self) -> None:
        """Ask a model replica what it serves (Serve starts the ingress after its replicas are up)."""
        self.start_pools()
        self._info = await self.handle.info.remote()
        self._detector = _RemoteDetector(self._info, self.handle)
        self.batcher.max_batch_size = int(self._info["max_batch"])
        self.costs = self._info["costs"]  # calibrated on the replica's own hardware
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.stop_pools()

    def estimate_s(self, sizes: Sequence[tuple[int, int]], options: DetectOptions) -> float:
        return super().estimate_s(sizes, options) / self.parallel

    async def detect(self, image: np.ndarray | ReducedImage, options: DetectOptions) -> Detection:
        """One decoded image -> its result from whichever model replica Serve picks (batched there)."""
        self._waiting += 1
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                answer: RemoteDetection = await self.handle.detect.remote(image, options)
        except BackPressureError:
            raise QueueFullError("the model replicas' queues are full") from None
        except RayTaskError as exc:  # the replica's own exception (bad option, corrupt image), not Ray's wrapper
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except RayActorError:
            raise ApiError(
                503, "unavailable", "a model replica went away; retry in a moment", headers={"Retry-After": "1"}
            ) from None
        finally:
            self._waiting -= 1
        if answer.costs is not None:
            self.costs = answer.costs  # the replica's, learnt from every engine call it made
        if self.on_batch is not None:
            for stats in answer.stats:
                self.on_batch(stats)
        if answer.error is not None:
            raise answer.error
        assert answer.detection is not None
        return answer.detection


class Ingress:
    """The HTTP front: ``create_app`` with the remote detection service, built on the replica at start-up."""

    def __init__(self, model: DeploymentHandle, settings: ServeSettings, parallel: int = 1) -> None:
        self.model = model
        self.settings = settings
        self.parallel = parallel

    def __serve_build_asgi_app__(self) -> Any:
        def service(settings: ServeSettings, on_batch: Callable[[BatchStats], None]) -> DetectionService:
            return RemoteDetectionService(settings, self.model, parallel=self.parallel, on_batch=on_batch)

        return create_app(self.settings, service_factory=service)


def _cluster_cpus() -> float:
    """CPUs of the Ray cluster when connected to one, else of this machine."""
    import ray

    if ray.is_initialized():
        return float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return float(os.cpu_count() or 1)


def plan_for(
    settings: ServeSettings,
    *,
    replicas: int | None = None,
    cpus: float | None = None,
    gpu_memory_mb: float | None = None,
) -> ReplicaPlan:
    """The memory planner's size for one model replica of these settings (:func:`.sizing.measure_replica`: where
    it will run, ``auto`` resolved as the replicas will resolve it); ``replicas`` None: one on CPU (its engine uses
    the cores), as many per card as fit on a GPU."""
    import ray

    from ..registry import DEFAULT_MODEL

    backend = settings.backend if settings.backend != "torch-baseline" else "torch"
    measured = measure_replica(
        settings.model,
        backend=backend,
        precision=settings.precision,
        device=settings.device,
        weights=settings.weights,
        download=settings.model == DEFAULT_MODEL,  # the default model provisions itself, as on the plain server
    )
    batch = settings.max_batch or measured.batch or 8
    total = cpus if cpus is not None else _cluster_cpus()
    if settings.device.startswith("cuda"):
        gpus = float(ray.cluster_resources().get("GPU", 1.0)) if ray.is_initialized() else 1.0
        capacity = gpu_memory_mb or measured.card_mb
        return plan_replicas(
            measured.footprint, batch=batch, replicas=replicas, cpus=total, gpus=gpus, capacity_mb=capacity
        )
    import psutil

    return plan_replicas(
        measured.footprint,
        batch=batch,
        replicas=replicas or 1,
        cpus=total,
        capacity_mb=psutil.virtual_memory().total / float(1 << 20),
        reserve_cpus=INGRESS_CPUS,
    )


def build_application(
    settings: ServeSettings,
    *,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    plan: ReplicaPlan | None = None,
    ingress_replicas: int = 1,
) -> serve.Application:
    """The Serve application: ``ingress_replicas`` HTTP ingress replicas in front of model replicas sized by
    ``plan`` (measured by :func:`plan_for` when not given), ``replicas`` of them or autoscaled in ``autoscale``."""
    if replicas is not None and autoscale is not None:
        raise ValueError("give either replicas or autoscale, not both")
    preflight(settings)
    if plan is None:
        plan = plan_for(settings, replicas=autoscale[1] if autoscale else replicas)
    log.info("model replica plan: %s", plan.reason)
    batch = settings.max_batch or 8
    options: dict[str, Any] = {
        "name": "model",
        "ray_actor_options": plan.actor_options(),
        "max_ongoing_requests": SERVE_BATCHES_IN_FLIGHT * batch,  # each batch in flight may be full
        "max_queued_requests": settings.max_queue,
        "health_check_period_s": 10.0,
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_s,
    }
    if autoscale is not None:
        low, high = autoscale
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"autoscale wants MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}")
        options["autoscaling_config"] = {
            "min_replicas": max(low, 1),  # the ingress asks a replica what it serves at start-up
            "max_replicas": high,
            "target_ongoing_requests": batch,  # one full batch in each replica, the next filling
        }
        parallel = high
    else:
        options["num_replicas"] = replicas or plan.replicas
        parallel = options["num_replicas"]
    model: Any = serve.deployment(ModelReplica, **options)
    ingress: Any = serve.deployment(
        serve.ingress()(Ingress),
        name="http",
        num_replicas=ingress_replicas,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        max_ongoing_requests=_INGRESS_MAX_ONGOING,
        graceful_shutdown_timeout_s=settings.graceful_shutdown_s,
    )
    application: serve.Application = ingress.bind(model.bind(settings), settings, parallel)
    return application


def build(args: dict[str, str]) -> serve.Application:
    """``serve run retinaserve.ray:build key=value ...``: any ServeSettings field (``model=``, ``precision=``,
    ``max_batch=`` ...) over ``RETINASERVE_*`` variables, plus ``replicas=N`` or ``autoscale=MIN:MAX``."""
    args = dict(args)
    replicas = int(args.pop("replicas")) if "replicas" in args else None
    autoscale = parse_autoscale(args.pop("autoscale")) if "autoscale" in args else None
    known = {f.name for f in fields(ServeSettings)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}: use ServeSettings fields, replicas, autoscale")
    environ = {**os.environ, **{f"RETINASERVE_{k.upper()}": v for k, v in args.items()}}
    return build_application(ServeSettings.from_env(environ), replicas=replicas, autoscale=autoscale)


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"1:4"`` -> (1, 4)."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"autoscale wants MIN:MAX such as 1:4, got {text!r}") from None
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"autoscale wants MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return low, high


def run_until_stopped(
    settings: ServeSettings,
    *,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    address: str | None = None,
) -> int:
    """``retinaserve serve --ray``: join the cluster at ``address`` (or ``RAY_ADDRESS``; else start a local one),
    run the application on ``settings.host:settings.port`` and keep it up until SIGINT or SIGTERM, then take it
    down (and the local cluster, if this run started it). Exit status 0; Ctrl-C before it serves: 130."""
    import signal
    import threading

    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    stop, serving = threading.Event(), threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()
        if not serving.is_set():  # still deploying: interrupt the wait (a set flag alone wedged serve.run)
            raise KeyboardInterrupt

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    started_cluster = False
    try:
        ray.init(address=address, log_to_driver=True)
        started_cluster = address is None
        for sig in signals:  # Ray's core worker installs its own (aborting) SIGTERM handler
            signal.signal(sig, on_signal)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings, replicas=replicas, autoscale=autoscale), name=APP_NAME)
        serving.set()
        print(f"serving on http://{settings.host}:{settings.port} (Ray Serve; Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        log.info("stopping: taking the application down")
    except KeyboardInterrupt:
        if received[-1:] != [signal.SIGTERM]:  # Ctrl-C while deploying: 130 (the CLI's); a service stop: 0
            raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ray.is_initialized():
            try:
                serve.delete(APP_NAME)
                if started_cluster:
                    serve.shutdown()
            finally:
                if started_cluster:
                    ray.shutdown()
    return 0
