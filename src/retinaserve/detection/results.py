"""Typed detection results and their one wire format (``to_dict``), shared by the CLI, the server and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LANDMARK_NAMES", "Face", "ImageResult", "Landmarks", "Point"]

Point = tuple[float, float]
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Order of the five points; "left" is the image's left (the subject's right eye)."""


@dataclass(frozen=True)
class Landmarks:
    """Five facial points in original-image pixels."""

    left_eye: Point
    right_eye: Point
    nose: Point
    mouth_left: Point
    mouth_right: Point

    def points(self) -> list[Point]:
        """The five points in :data:`LANDMARK_NAMES` order."""
        return [self.left_eye, self.right_eye, self.nose, self.mouth_left, self.mouth_right]

    def to_dict(self) -> dict[str, list[float]]:
        return {name: [x, y] for name, (x, y) in zip(LANDMARK_NAMES, self.points())}


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) and landmarks in original-image pixels, score in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: Landmarks

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def to_dict(self, *, landmarks: bool = True) -> dict[str, Any]:
        """JSON-ready ``{"box": [x1, y1, x2, y2], "score": s, "landmarks": {name: [x, y]}}``."""
        out: dict[str, Any] = {"box": list(self.box), "score": self.score}
        if landmarks:
            out["landmarks"] = self.landmarks.to_dict()
        return out


@dataclass(frozen=True)
class ImageResult:
    """The faces found in one image, with the image's size and the network input it was run at."""

    faces: list[Face]
    width: int
    height: int
    input_size: tuple[int, int]
    """(width, height) of the network input after resizing and padding."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage of the call: decode, copy, preprocess, forward, postprocess, total."""
    memory_mb: dict[str, float] = field(default_factory=dict)
    """Memory of the call in MiB: ``peak_allocated``/``peak_reserved`` on CUDA, ``peak_rss``/``rss`` on CPU."""

    def to_dict(self, *, landmarks: bool = True) -> dict[str, Any]:
        return {
            "faces": [face.to_dict(landmarks=landmarks) for face in self.faces],
            "image": {"width": self.width, "height": self.height},
        }
