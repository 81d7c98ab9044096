"""MediaPipe Face Mesh around its network: the rotated crop, decoding to image pixels, pose and the 68 points.

The crop follows MediaPipe's face landmark pipeline: a square of 1.5x the face box's long side around the box
centre, rotated so that the eyes are level (the angle from the detector's two eye points), scaled to 192x192.
The network returns 468 points in crop pixels with a relative depth in the same scale, smaller z nearer;
they are mapped back through the inverse of the crop transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..detection.results import Face
from ..registry import CropSpec
from .pose import Pose, euler_from_rotation, image_to_y_up, rotation_from_points
from .topology import MeshTopology

__all__ = ["FACEMESH_TO_IBUG68", "FaceMeshDecoder", "RotatedCrop", "rotated_crop"]

FACEMESH_TO_IBUG68: tuple[tuple[int, int], ...] = (
    # jaw 0-16
    (127, 127), (234, 234), (93, 93), (132, 58), (58, 172), (136, 136), (150, 150), (176, 176), (152, 152),
    (400, 400), (379, 379), (365, 365), (397, 288), (361, 361), (323, 323), (454, 454), (356, 356),
    # brows 17-26
    (70, 70), (63, 63), (105, 105), (66, 66), (107, 107), (336, 336), (296, 296), (334, 334), (293, 293),
    (300, 300),
    # nose 27-35
    (168, 6), (197, 195), (5, 5), (4, 4), (75, 75), (97, 97), (2, 2), (326, 326), (305, 305),
    # eyes 36-47
    (33, 33), (160, 160), (158, 158), (133, 133), (153, 153), (144, 144),
    (362, 362), (385, 385), (387, 387), (263, 263), (373, 373), (380, 380),
    # outer lips 48-59
    (61, 61), (39, 39), (37, 37), (0, 0), (267, 267), (269, 269), (291, 291), (321, 321), (314, 314), (17, 17),
    (84, 84), (91, 91),
    # inner lips 60-67
    (78, 78), (82, 82), (13, 13), (312, 312), (308, 308), (317, 317), (14, 14), (87, 87),
)  # fmt: skip
"""Face Mesh vertex pairs whose mean is each iBUG-68 point, in iBUG order. The correspondence published by
Peizhi Yan, github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks (``mp2dlib_correspondence``, commit db9e81e2),
one or two Face Mesh vertices per dlib point."""


@dataclass(frozen=True)
class RotatedCrop:
    """A square, rotated crop: ``to_image`` (2, 3) maps crop pixel coordinates to image pixel coordinates."""

    to_image: np.ndarray
    size: int
    side: float
    """The crop's side in image pixels."""

    def map_to_image(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) crop coordinates -> (N, 2) image coordinates."""
        return points @ self.to_image[:, :2].T + self.to_image[:, 2]


def rotated_crop(image: np.ndarray, face: Face, size: int, scale: float) -> tuple[np.ndarray, RotatedCrop]:
    """(H, W, 3) uint8 image and a detected face -> the (size, size, 3) crop and its transform.

    Centre: the box centre; side: ``scale`` x the box's long side; rotation: the eye line made level.
    Pixels outside the image are black, as in MediaPipe's ``ImageToTensor`` with zero border.
    """
    x1, y1, x2, y2 = face.box
    (lx, ly), (rx, ry) = face.landmarks.left_eye, face.landmarks.right_eye
    angle = math.atan2(ry - ly, rx - lx)
    side = scale * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    step = side / size
    # crop (u, v) -> image: centre + R @ ((u, v) * step - side / 2), continuous coordinates
    to_image = np.array(
        [
            [cos * step, -sin * step, cx - (cos - sin) * side / 2],
            [sin * step, cos * step, cy - (sin + cos) * side / 2],
        ],
        dtype=np.float64,
    )
    # cv2 samples at pixel indices (centre of pixel i at i): shift by half a pixel on both sides
    to_index = to_image.copy()
    to_index[:, 2] += to_image[:, :2] @ np.array([0.5, 0.5]) - 0.5
    pixels = cv2.warpAffine(
        image, to_index, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=(0, 0, 0)
    )
    return pixels, RotatedCrop(to_image, size, side)


class FaceMeshDecoder:
    """Pre- and post-processing of ``facemesh-468``: crop rule, network input, vertices and pose."""

    outputs: tuple[tuple[str, int], ...] = (("landmarks", 1404), ("presence", 1))

    def __init__(self, crop: CropSpec, topology: MeshTopology, canonical: np.ndarray) -> None:
        self.spec = crop
        self.topology = topology
        self.canonical = canonical.astype(np.float64)
        """(468, 3) the canonical face model (y up, +z toward the viewer, centimetres): the pose reference."""
        self._rigid = np.unique(np.asarray(FACEMESH_TO_IBUG68)[17:48])  # brows, nose, eyes: little expression

    @classmethod
    def from_files(cls, crop: CropSpec, geometry_pbtxt: Path) -> FaceMeshDecoder:
        """Load the canonical model's topology and vertices from MediaPipe's geometry pipeline metadata."""
        from .facemesh_topology import load_facemesh_topology

        topology, canonical = load_facemesh_topology(geometry_pbtxt, np.asarray(FACEMESH_TO_IBUG68, dtype=np.int32))
        return cls(crop, topology, canonical)

    def crop(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, RotatedCrop]:
        """The network's (3, S, S) float32 input for one face, and the crop transform."""
        pixels, transform = rotated_crop(image, face, self.spec.size, self.spec.scale)
        x = (pixels.astype(np.float32) - self.spec.mean) / self.spec.std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), transform

    def decode(self, outputs: tuple[torch.Tensor, ...], crops: list[RotatedCrop]) -> list[tuple[np.ndarray, dict]]:
        """Raw outputs for N faces -> per face (V, 3) float32 image-frame vertices and extras (presence)."""
        landmarks = outputs[0].float().reshape(len(crops), -1, 3).cpu().numpy().astype(np.float64)
        presence = torch.sigmoid(outputs[1].float()).reshape(-1).cpu().numpy()
        decoded = []
        for points, transform, score in zip(landmarks, crops, presence):
            xy = transform.map_to_image(points[:, :2])
            z = -points[:, 2] * (transform.side / transform.size)  # the network's z grows away from the camera
            vertices = np.concatenate([xy, z[:, None]], axis=1)
            vertices[:, 2] -= vertices[:, 2].mean()
            decoded.append((vertices.astype(np.float32), {"presence": float(score)}))
        return decoded

    def pose(self, vertices: np.ndarray, extras: dict) -> Pose:
        """Head pose from the rotation that maps the canonical model's rigid points onto the mesh."""
        rotation = rotation_from_points(self.canonical[self._rigid], image_to_y_up(vertices[self._rigid]))
        return euler_from_rotation(rotation)
