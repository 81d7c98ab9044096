"""Detection: priors, decoding, NMS and the Detector that ties pre-processing, network and post-processing."""

from __future__ import annotations

from .detector import DecodeMode, Detector, ResizePolicy, resolve_device
from .results import LANDMARK_NAMES, Face, ImageResult, Landmarks

__all__ = [
    "LANDMARK_NAMES",
    "DecodeMode",
    "Detector",
    "Face",
    "ImageResult",
    "Landmarks",
    "ResizePolicy",
    "resolve_device",
]
