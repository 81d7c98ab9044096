"""retinaserve: RetinaFace-family face detection with five landmarks, from a laptop CPU to a GPU server."""

from __future__ import annotations

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
    "ImageResult",
    "InvalidImageError",
    "Landmarks",
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
