"""``retinaserve serve``: the argument parser (added to the main CLI by ``add_serve_parser``) and the runner."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..memory import limit_heap_arenas, tune_allocator
from ..registry import DEFAULT_MODEL, DEFAULT_RECONSTRUCTION_MODEL
from .settings import BACKENDS, PRECISIONS, ServeSettings

__all__ = ["add_serve_parser", "cmd_serve", "settings_from_args"]

log = logging.getLogger(__name__)


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    from ..cli import at_least_one

    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP service (detect, batch, beautify, 3D reconstruction and jobs, web page, metrics)",
        description="Unset flags fall back to RETINASERVE_<NAME> environment variables, e.g. RETINASERVE_API_KEYS.",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--model", help=f"registered model name (default {DEFAULT_MODEL})")
    serve.add_argument("--weights", help="weights file (default: resolved from env var and cache)")
    serve.add_argument("--device", help="cpu, cuda, cuda:N (default cpu)")
    serve.add_argument("--precision", choices=PRECISIONS, help="fp32 (default); others need an engine backend")
    serve.add_argument(
        "--backend", choices=BACKENDS, help="what runs fp32 (default auto: the fastest here, measured once, cached)"
    )
    serve.add_argument(
        "--decode", choices=("fast", "exact"), help="JPEG decode at the size the network needs (default fast)"
    )
    serve.add_argument(
        "--max-batch", type=int, help="most images per model call; 1: no batching (default 0: what paid when measured)"
    )
    serve.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill up (default 5)")
    serve.add_argument("--max-queue", type=int, help="images waiting before requests get 429 (default 64)")
    serve.add_argument(
        "--max-queue-delay-ms",
        type=float,
        help="admit a request only while the engine work ahead of it is this short, else 429 (default 0: two batches)",
    )
    serve.add_argument("--timeout", type=float, dest="request_timeout_s", help="per-request deadline, s (default 30)")
    serve.add_argument(
        "--header-timeout", type=float, dest="header_timeout_s", help="seconds to send a request head (default 10)"
    )
    serve.add_argument("--body-timeout", type=float, dest="body_timeout_s", help="seconds to send a body (default 60)")
    serve.add_argument("--keep-alive", type=float, dest="keep_alive_s", help="idle keep-alive seconds (default 5)")
    serve.add_argument("--max-connections", type=int, help="open connections at once (default 1024)")
    serve.add_argument(
        "--header-parse-ms", type=float, help="CPU time an image header may take to parse, else 413 (default 100)"
    )
    serve.add_argument("--max-faces", type=int, help="most faces in one image's answer (default 1000)")
    serve.add_argument(
        "--graceful-shutdown", type=float, dest="graceful_shutdown_s", help="seconds to drain on SIGTERM (default 30)"
    )
    serve.add_argument("--max-upload-mb", type=float, help="largest upload in MiB (default 10)")
    serve.add_argument("--max-pixels", type=int, help="largest image, width x height (default 25000000)")
    serve.add_argument(
        "--reconstruction-model",
        help=f"3D model for /v1/reconstruct and jobs (default {DEFAULT_RECONSTRUCTION_MODEL}; none: off)",
    )
    serve.add_argument("--reconstruction-weights", help="the 3D model's weights file (default: resolved)")
    serve.add_argument("--max-jobs", type=int, help="reconstructions queued or running before 429 (default 16)")
    serve.add_argument("--job-memory-mb", type=float, help="memory budget of the running reconstructions (default 768)")
    serve.add_argument("--max-running-jobs", type=int, help="most reconstructions running at once (default 4)")
    serve.add_argument("--job-ttl", type=float, dest="job_result_ttl_s", help="seconds finished jobs are kept (600)")
    serve.add_argument("--api-key", action="append", dest="api_keys", help="require this key in X-API-Key (repeatable)")
    serve.add_argument("--no-warmup", action="store_false", dest="warmup", default=None, help="skip the warm-up run")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ray = serve.add_argument_group("Ray Serve (the 'ray' extra): the same API with the model in Serve replicas")
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve application instead of one process")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument(
        "--replicas", type=at_least_one, help="model replicas (default: what the memory planner sizes: 1 on CPU)"
    )
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="let Serve scale the model replicas between MIN and MAX")
    ray.add_argument(
        "--ray-address", help="Ray cluster to join (default $RAY_ADDRESS, else a local cluster started for the run)"
    )
    serve.set_defaults(func=cmd_serve)
    return serve


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """CLI flags over environment variables over defaults."""
    overrides = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "model",
            "weights",
            "device",
            "precision",
            "backend",
            "decode",
            "max_batch",
            "max_wait_ms",
            "max_queue",
            "max_queue_delay_ms",
            "request_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
            "keep_alive_s",
            "max_connections",
            "header_parse_ms",
            "max_faces",
            "graceful_shutdown_s",
            "max_pixels",
            "api_keys",
            "warmup",
            "reconstruction_model",
            "reconstruction_weights",
            "max_jobs",
            "job_memory_mb",
            "max_running_jobs",
            "job_result_ttl_s",
        )
    }
    for name in ("weights", "reconstruction_weights"):
        value = overrides[name]
        if value is not None:
            overrides[name] = Path(value)
    if getattr(args, "max_upload_mb", None) is not None:
        overrides["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    return ServeSettings.from_env(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the settings (errors are one line, before the port is bound), then run uvicorn until stopped."""
    from .inference import ServeConfigError, preflight

    try:
        from .app import create_app
        from .server import server_for
    except ImportError as exc:
        raise ServeConfigError(
            f"the HTTP service needs the 'serve' extra ({exc.name} is missing): pip install 'retinaserve[serve]'"
        ) from None

    if not args.ray and (args.replicas is not None or args.autoscale is not None):
        raise ServeConfigError("--replicas and --autoscale are for --ray")
    run_on_ray = _ray_runner(args) if args.ray else None  # its argument errors too come before anything starts
    settings = settings_from_args(args)
    preflight(settings)  # unknown model, missing weights file, precision without an engine: one line, no port bound
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if run_on_ray is not None:
        return run_on_ray(settings)
    app = create_app(settings)
    limit_heap_arenas(2)  # before uvicorn and the batcher start their threads
    tune_allocator()  # torch's CPU paths would fault their activations in afresh on every call
    server = server_for(app, settings, log_level=args.log_level, access_log=args.log_level == "debug")
    server.run()  # returns after a signal and a graceful drain (the signal is not re-raised: exit status 0)
    return 0


def _ray_runner(args: argparse.Namespace) -> Callable[[ServeSettings], int]:
    """``serve --ray``: what runs the Serve application on a Ray cluster until SIGINT or SIGTERM (the ray extra and
    ``--autoscale`` checked now)."""
    from .inference import ServeConfigError

    try:
        from ..ray.serve_app import parse_autoscale, run_until_stopped
    except ImportError as exc:
        raise ServeConfigError(
            f"--ray needs the 'ray' extra ({exc.name} is missing): pip install 'retinaserve[ray]'"
        ) from None
    autoscale = parse_autoscale(args.autoscale) if args.autoscale is not None else None
    return partial(run_until_stopped, replicas=args.replicas, autoscale=autoscale, address=args.ray_address)
