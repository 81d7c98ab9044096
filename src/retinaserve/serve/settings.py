"""Typed server settings, read once at the edge (CLI flags over ``RETINASERVE_*`` environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..registry import DEFAULT_MODEL, DEFAULT_RECONSTRUCTION_MODEL

__all__ = ["BACKENDS", "PRECISIONS", "TEXTURE_SIZES", "ServeSettings"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
"""Precisions the ``--precision`` flag accepts; anything but fp32 needs an engine backend."""

BACKENDS = ("auto", "openvino", "onnx", "torch", "torch-baseline")
"""Backends the ``--backend`` flag accepts for fp32."""

TEXTURE_SIZES = (256, 512, 1024, 2048)
"""UV texture sizes the service bakes: a fixed set, so the per-size UV raster tables it caches stay bounded."""

_MIB = 1024 * 1024
_PATHS = ("weights", "reconstruction_weights")


@dataclass(frozen=True)
class ServeSettings:
    """Everything the HTTP service needs; limits are validated here so a bad value fails at start-up."""

    host: str = "127.0.0.1"
    port: int = 8080
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    backend: str = "auto"
    """What runs an fp32 network: ``auto`` (the fastest exact backend on this machine, measured once and cached),
    ``openvino``, ``onnx``, ``torch`` or ``torch-baseline`` (eager reference)."""
    decode: str = "fast"
    """JPEG decoding for detection: ``fast`` decodes at 1/2, 1/4 or 1/8 scale in the DCT domain when the network
    input is at least 2x smaller (a 12 Mpx photo: 241 -> 26 ms), ``exact`` decodes every pixel (original parity)."""
    max_batch: int = 0
    """Most images per model call; 1 turns dynamic batching off; 0 (default): the batch size that paid when the
    engine measured the model on this machine (1 where batching does not pay, as on small CPUs)."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for company before the batch runs."""
    max_queue: int = 64
    """Images waiting for the model; beyond this requests get 429 with Retry-After."""
    max_queue_delay_ms: float = 0.0
    """Admission by cost: a request queues only while the engine time already admitted ahead of it (each request's
    estimated cost, learnt from measured batches) is at most this long; otherwise 429 at once, with Retry-After
    when it will be. 0 (default): one full batch of the default input, so the engine never idles and admitted
    requests barely wait."""
    request_timeout_s: float = 30.0
    """Per-request deadline from the end of the body to the answer (parsing, queueing, inference, rendering);
    past it the caller gets 504, and a request whose estimated cost alone exceeds it gets 413 at once."""
    header_parse_ms: float = 100.0
    """Most time an upload's image header may take to parse (chunks, markers, extensions before the pixels);
    longer is a hostile or broken file: 413, and the parse stops."""
    image_workers: int = 0
    """Threads that parse, decode and render images (never the event loop); 0: the CPU count, at least 2."""
    max_faces: int = 1000
    """Most faces one image's answer lists (the highest scores); a request's ``max_faces`` may only lower it."""
    max_render_faces: int = 64
    """Most faces /v1/beautify smooths in one image (the highest scores); the rest are returned untouched."""
    header_timeout_s: float = 10.0
    """A connection must deliver a complete request head within this (idle and slow-header clients are closed)."""
    body_timeout_s: float = 60.0
    """A request's whole body must arrive within this (slow-body clients get 408)."""
    keep_alive_s: float = 5.0
    """Idle keep-alive connections are closed after this."""
    max_connections: int = 1024
    """Open connections at once; beyond this new ones get a JSON 503 and are closed."""
    max_upload_bytes: int = 10 * _MIB
    """Largest body of /v1/detect and /v1/beautify, and largest single image in a batch request (413)."""
    max_batch_upload_bytes: int = 40 * _MIB
    """Largest body of /v1/detect/batch (413)."""
    max_images_per_request: int = 16
    max_pixels: int = 25_000_000
    """Largest decoded image (width x height), checked from the header before any pixel is decoded (413)."""
    max_pixels_in_flight: int = 100_000_000
    """Decoded pixels admitted at once (decoding, queued or running; ~3 bytes each); beyond it requests get 429.
    Bounds the server's memory whatever the mix of image sizes."""
    max_input_side: int = 2048
    """Largest long_side / det_size a client may ask for, so a request cannot make a huge network input."""
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """When non-empty, every route but health, the web page and the docs needs one of these in ``api_key_header``."""
    api_key_header: str = "X-API-Key"
    reconstruction_model: str = DEFAULT_RECONSTRUCTION_MODEL
    """3D model behind /v1/reconstruct and the reconstruct jobs; "none" serves detection only."""
    reconstruction_weights: Path | None = None
    max_reconstruct_faces: int = 16
    """Most faces reconstructed per request or job (the highest-scoring ones); a request may ask for fewer."""
    max_texture_size: int = 1024
    """Largest UV texture a request may ask for (one of TEXTURE_SIZES)."""
    max_jobs: int = 16
    """Reconstructions admitted at once (jobs and /v1/reconstruct requests, queued or running); beyond it 429."""
    job_memory_mb: float = 768.0
    """Memory the running reconstructions may use together, by the per-job estimate measured in
    ``serve/jobs.py``; jobs beyond it wait in the queue. This, not a thread count, sizes the concurrency."""
    max_running_jobs: int = 4
    """Most reconstructions past the queue at once, whatever their memory estimate (CPU cores are the other limit)."""
    job_timeout_s: float = 300.0
    """A job still unfinished after this long (queue included) fails with a timeout."""
    job_result_ttl_s: float = 600.0
    """Finished jobs (their meshes) are kept this long, then their URLs answer 404."""
    max_job_results: int = 64
    """Most finished jobs kept; the oldest go first."""
    max_job_result_mb: float = 256.0
    """Most memory the kept results may hold together; the oldest go first."""
    warmup: bool = True
    graceful_shutdown_s: float = 30.0
    """On SIGTERM / Ctrl-C: new requests get 503 at once, running ones get this long to finish, the rest get 503."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        positive = {
            "port": self.port,
            "max_queue": self.max_queue,
            "max_upload_bytes": self.max_upload_bytes,
            "max_batch_upload_bytes": self.max_batch_upload_bytes,
            "max_images_per_request": self.max_images_per_request,
            "max_pixels": self.max_pixels,
            "max_pixels_in_flight": self.max_pixels_in_flight,
            "max_input_side": self.max_input_side,
            "max_reconstruct_faces": self.max_reconstruct_faces,
            "max_jobs": self.max_jobs,
            "max_running_jobs": self.max_running_jobs,
            "max_job_results": self.max_job_results,
            "max_faces": self.max_faces,
            "max_render_faces": self.max_render_faces,
            "max_connections": self.max_connections,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_pixels_in_flight < self.max_pixels:
            raise ValueError(
                f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be >= max_pixels ({self.max_pixels})"
            )
        if self.decode not in ("fast", "exact"):
            raise ValueError(f"decode must be fast or exact, got {self.decode!r}")
        if self.max_batch < 0:
            raise ValueError(f"max_batch must be >= 1, or 0 for auto, got {self.max_batch}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend != "auto" and self.precision != "fp32":
            raise ValueError(f"--backend {self.backend} is for fp32; precision {self.precision} picks its own backend")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("request_timeout_s", "header_parse_ms", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue_delay_ms < 0 or self.image_workers < 0:
            raise ValueError("max_queue_delay_ms and image_workers must be >= 0 (0: automatic)")
        if self.max_texture_size not in TEXTURE_SIZES:
            raise ValueError(f"max_texture_size must be one of {TEXTURE_SIZES}, got {self.max_texture_size}")
        for name in ("job_memory_mb", "job_timeout_s", "job_result_ttl_s", "max_job_result_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if any(not key for key in self.api_keys):
            raise ValueError("API keys must not be empty strings")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def reconstruction_enabled(self) -> bool:
        return self.reconstruction_model.lower() not in ("", "none", "off")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Defaults, then ``RETINASERVE_<FIELD>`` variables (``RETINASERVE_API_KEYS`` comma-separated), then
        ``overrides`` whose value is not None (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"RETINASERVE_{f.name.upper()}")
            if raw is None or (f.name in _PATHS and not raw):
                continue
            values[f.name] = _parse(f.name, raw, getattr(cls(), f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "api_keys" in values:
            values["api_keys"] = tuple(values["api_keys"])
        return replace(cls(), **values)


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if name == "api_keys":
            return tuple(key.strip() for key in raw.split(",") if key.strip())
        if name in _PATHS:
            return Path(raw)
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"environment variable RETINASERVE_{name.upper()}={raw!r} is not a valid {name}") from None
    return raw
