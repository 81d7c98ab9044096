"""Head pose: rotations between a face model's frame and the camera, as yaw, pitch and roll in degrees.

Frames are right-handed with y up and +z toward the camera (image vertices are converted by flipping y).
``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``: positive yaw turns the nose toward the image's right (the subject's
left), positive pitch tilts it down, positive roll turns the face counter-clockwise as the viewer sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Pose", "euler_from_rotation", "image_to_y_up", "rotation_from_points"]


@dataclass(frozen=True)
class Pose:
    """Head pose in degrees (see the module docstring for the signs); all zero for a frontal, upright face."""

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float]:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll}


def euler_from_rotation(rotation: np.ndarray) -> Pose:
    """(3, 3) rotation matrix (model frame -> camera frame, both y up) -> :class:`Pose`."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = math.atan2(float(r[2, 1]), float(r[2, 2]))
    roll = math.atan2(float(r[1, 0]), float(r[0, 0]))
    return Pose(math.degrees(yaw), math.degrees(pitch), math.degrees(roll))


def image_to_y_up(vertices: np.ndarray) -> np.ndarray:
    """(..., 3) image-frame points (x right, y down, larger z nearer) -> the y-up, +z-toward-camera frame."""
    return vertices * np.array([1.0, -1.0, 1.0], dtype=vertices.dtype)


def rotation_from_points(reference: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The rotation of the similarity transform that best maps ``reference`` (N, 3) onto ``observed`` (N, 3).

    Umeyama's least-squares solution (SVD of the cross-covariance), with the reflection removed.
    """
    src = reference - reference.mean(axis=0)
    dst = observed - observed.mean(axis=0)
    u, _, vt = np.linalg.svd(dst.T @ src)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt
