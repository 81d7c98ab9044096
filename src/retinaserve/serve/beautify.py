"""Landmark-guided skin smoothing: an edge-preserving filter blended into facial skin only.

For each face a mask is built from its box and five points (an ellipse of the face minus the eyes, brows and
mouth, feathered), and a bilateral filter of the face region is blended in with weight ``strength * mask``: skin
texture softens, while edges (face outline, nostrils, lips) and the features themselves stay sharp. Pixels
outside every face are never touched. OpenCV provides the bilateral filter, rotated ellipses and the Gaussian
feathering in C++; in numpy they would be orders of magnitude slower.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..detection import Face

__all__ = ["FaceRegion", "beautify", "face_region", "render_budget", "skin_mask"]

_WORK_SIZE = 320
"""Faces larger than this (pixels, box side) are filtered at a reduced scale, so the cost stays bounded."""


@dataclass(frozen=True)
class FaceRegion:
    """Where one face's skin mask lives: the region of interest (x0, y0, x1, y1) in image pixels, and the face's
    geometry derived from its box and landmarks."""

    roi: tuple[int, int, int, int]
    centre: tuple[float, float]
    axes: tuple[float, float]
    angle_deg: float
    """Roll of the face (the eye line against the horizontal)."""
    eye_distance: float


def face_region(face: Face, height: int, width: int) -> FaceRegion:
    """The face ellipse and region of interest for one face; landmarks that disagree with the box (unreliable
    points) fall back to box proportions."""
    x1, y1, x2, y2 = face.box
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    (lx, ly), (rx, ry) = face.landmarks.left_eye, face.landmarks.right_eye
    eye_distance = math.hypot(rx - lx, ry - ly)
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    if not 0.2 * bw <= eye_distance <= 0.8 * bw or abs(angle) > 60:
        eye_distance, angle = 0.4 * bw, 0.0
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    axes = (0.48 * bw, 0.55 * bh)
    margin = 0.15 * max(bw, bh)
    roi = (
        max(0, math.floor(x1 - margin)),
        max(0, math.floor(y1 - margin)),
        min(width, math.ceil(x2 + margin)),
        min(height, math.ceil(y2 + margin)),
    )
    return FaceRegion(roi, centre, axes, angle, eye_distance)


def _ellipse(
    mask: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    value: float,
    origin: tuple[int, int],
) -> None:
    cx, cy = round(centre[0] - origin[0]), round(centre[1] - origin[1])
    cv2.ellipse(mask, (cx, cy), (max(1, round(axes[0])), max(1, round(axes[1]))), angle, 0, 360, value, -1)


def skin_mask(face: Face, region: FaceRegion) -> np.ndarray:
    """(H_roi, W_roi) float32 in [0, 1]: 1 on facial skin, 0 on eyes, brows, mouth and outside the face, feathered."""
    x0, y0, x1, y1 = region.roi
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    origin = (x0, y0)
    angle = region.angle_deg
    _ellipse(mask, region.centre, region.axes, angle, 1.0, origin)
    d = region.eye_distance
    up = (math.sin(math.radians(angle)), -math.cos(math.radians(angle)))  # towards the forehead
    for ex, ey in (face.landmarks.left_eye, face.landmarks.right_eye):
        _ellipse(mask, (ex, ey), (0.34 * d, 0.22 * d), angle, 0.0, origin)
        brow = (ex + up[0] * 0.33 * d, ey + up[1] * 0.33 * d)
        _ellipse(mask, brow, (0.42 * d, 0.18 * d), angle, 0.0, origin)
    (mlx, mly), (mrx, mry) = face.landmarks.mouth_left, face.landmarks.mouth_right
    mouth_width = math.hypot(mrx - mlx, mry - mly)
    if not 0.3 * d <= mouth_width <= 1.5 * d:
        mouth_width = 0.8 * d
    _ellipse(mask, ((mlx + mrx) / 2, (mly + mry) / 2), (0.5 * mouth_width + 0.15 * d, 0.3 * d), angle, 0.0, origin)
    sigma = max(1.0, 0.04 * min(region.axes))
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _smooth(roi: np.ndarray, face_size: float, strength: float) -> np.ndarray:
    """Edge-preserving smoothing of a face region, at a reduced scale for large faces; same shape as ``roi``."""
    scale = min(1.0, _WORK_SIZE / max(face_size, 1.0))
    small = roi if scale == 1.0 else cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    sigma_space = max(2.0, 0.025 * face_size * scale)
    sigma_color = 20.0 + 30.0 * strength
    smoothed = cv2.bilateralFilter(small, 0, sigma_color, sigma_space)
    smoothed = cv2.bilateralFilter(smoothed, 0, sigma_color, sigma_space)
    if scale < 1.0:
        smoothed = cv2.resize(smoothed, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_LINEAR)
    return smoothed


def beautify(
    image: np.ndarray, faces: Sequence[Face], *, strength: float = 0.6, deadline: float | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 -> a smoothed copy: skin inside each face softened by ``strength`` (0 = unchanged, 1 =
    fully filtered); pixels outside the faces are unchanged. TimeoutError when ``deadline`` (``time.monotonic``)
    passes between two faces, so an abandoned render stops instead of holding its thread."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    out = np.array(image, dtype=np.uint8, copy=True)
    if strength == 0.0:
        return out
    height, width = out.shape[:2]
    for face in faces:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"smoothing stopped at its deadline after some of {len(faces)} faces")
        region = face_region(face, height, width)
        x0, y0, x1, y1 = region.roi
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        roi = np.ascontiguousarray(out[y0:y1, x0:x1])
        weight = strength * skin_mask(face, region)
        smoothed = _smooth(roi, 2 * max(region.axes), strength)
        # in uint8, per pixel in OpenCV: no float copies of a region that may be most of a large photo
        out[y0:y1, x0:x1] = cv2.blendLinear(roi, smoothed, 1.0 - weight, weight)
    return out


def render_budget(faces: Sequence[Face], height: int, width: int, *, max_faces: int, pixel_factor: float) -> int:
    """How many of ``faces`` (best first) to smooth: at most ``max_faces``, and no more than fit regions of
    ``pixel_factor`` times the image's pixels in all, which bounds the work whatever boxes a low threshold finds
    (a real group photo's faces cover far less than the image). The first face is always smoothed."""
    budget = pixel_factor * height * width
    used = 0.0
    for count, face in enumerate(faces[:max_faces]):
        x0, y0, x1, y1 = face_region(face, height, width).roi
        used += max(0, x1 - x0) * max(0, y1 - y0)
        if used > budget and count > 0:
            return count
    return min(len(faces), max_faces)
