"""The inference engine: backends (torch, ONNX Runtime), precisions, bucketed batching, reused and pinned
buffers, the memory planner, the benchmark and the parity check.

>>> from retinaserve.engine import EngineConfig, create_detector
>>> detector = create_detector("retinaface-mnet025-edge", EngineConfig(backend="onnx"))   # doctest: +SKIP
"""

from __future__ import annotations

from .bucketing import BucketedResize, choose_bucket, default_buckets
from .buffers import BufferPool, PinnedUploader
from .errors import BackendUnavailableError, EngineError, ExportError, PrecisionNotSupportedError
from .factory import EngineChoice, EngineConfig, create_backend, create_detector, resolve_engine
from .precision import Precision, check_precision, pick_device
from .torch_backend import TorchBackend, TorchOptions

__all__ = [
    "BackendUnavailableError",
    "BucketedResize",
    "BufferPool",
    "EngineChoice",
    "EngineConfig",
    "EngineError",
    "ExportError",
    "PinnedUploader",
    "Precision",
    "PrecisionNotSupportedError",
    "TorchBackend",
    "TorchOptions",
    "check_precision",
    "choose_bucket",
    "create_backend",
    "create_detector",
    "default_buckets",
    "pick_device",
    "resolve_engine",
]
