"""retinaserve: RetinaFace-family face detection with five landmarks, and textured 3D faces from one photo,
from a laptop CPU to a GPU server."""

from __future__ import annotations

from typing import Any

from .detection import LANDMARK_NAMES, Detector, Face, ImageResult, Landmarks, ResizePolicy
from .errors import (
    InvalidImageError,
    RetinaServeError,
    UnknownModelError,
    WeightsError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)
from .images import load_image
from .registry import DEFAULT_MODEL, get_model_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "LANDMARK_NAMES",
    "Detector",
    "Face",
    "FaceMesh",
    "ImageResult",
    "InvalidImageError",
    "Landmarks",
    "Reconstructor",
    "ResizePolicy",
    "RetinaServeError",
    "UnknownModelError",
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "get_model_spec",
    "list_models",
    "load_image",
]


def __getattr__(name: str) -> Any:
    """``Reconstructor`` and ``FaceMesh`` load on first use (they bring OpenCV and the mesh code along)."""
    if name in ("Reconstructor", "FaceMesh"):
        from . import reconstruction

        return getattr(reconstruction, name)
    raise AttributeError(f"module 'retinaserve' has no attribute {name!r}")
