"""Errors of the inference engine: each says what was asked, why it cannot be done here, and what to do instead."""

from __future__ import annotations

from ..errors import RetinaServeError

__all__ = ["BackendUnavailableError", "EngineError", "ExportError", "PrecisionNotSupportedError"]


class EngineError(RetinaServeError):
    """Base class of the engine's errors."""


class PrecisionNotSupportedError(EngineError, ValueError):
    """A precision the chosen device or backend cannot run well (FP16 on CPU, BF16 on a CPU without BF16 units)."""


class BackendUnavailableError(EngineError, RuntimeError):
    """A backend whose runtime is not installed or whose device is not present."""


class ExportError(EngineError, RuntimeError):
    """An ONNX export, conversion or quantisation that failed or does not reproduce the torch outputs."""
