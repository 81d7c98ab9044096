"""Where a stream's results go: an annotated or anonymised H.264 MP4, one JSON line per frame, or a list."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import IO

import numpy as np

from ..draw import draw_faces
from .anonymise import AnonymiseMode, anonymise
from .runtime import FrameResult
from .writer import VideoWriter

__all__ = ["CollectSink", "JsonlSink", "VideoSink"]


class VideoSink:
    """Writes each frame to an MP4: faces anonymised (``blur``/``pixelate``) and/or drawn with their track ids."""

    def __init__(self, path: str | Path, fps: float, *, draw: bool = False, anonymise: AnonymiseMode | None = None):
        if not draw and anonymise is None:
            raise ValueError("a video output needs draw=True or an anonymise mode")
        self.writer = VideoWriter(path, fps)
        self.draw = draw
        self.mode = anonymise

    @property
    def path(self) -> Path:
        return self.writer.path

    def render(self, result: FrameResult) -> np.ndarray:
        """The frame as written: anonymised first (the faces, and where lost tracks are expected), then drawn
        (boxes over the blur show what was hidden)."""
        image = result.frame.image
        if self.mode is not None:
            image = anonymise(image, [*result.faces, *result.held_boxes], self.mode)
        if self.draw:
            labels = [f"#{k} {face.score:.2f}" for face, k in zip(result.faces, result.track_ids)]
            image = np.asarray(draw_faces(image, result.faces, labels=labels))
        return image

    def write(self, result: FrameResult) -> None:
        self.writer.write(self.render(result), result.frame.pts)

    def close(self) -> None:
        self.writer.close()


class JsonlSink:
    """One JSON line per frame (:meth:`FrameResult.to_dict`) into a file that several streams share."""

    def __init__(self, stream: IO[str], source_name: str, lock: threading.Lock) -> None:
        self.stream = stream
        self.source_name = source_name
        self.lock = lock

    def write(self, result: FrameResult) -> None:
        line = json.dumps(result.to_dict(self.source_name))
        with self.lock:
            self.stream.write(line + "\n")

    def close(self) -> None:
        with self.lock:
            self.stream.flush()


class CollectSink:
    """Keeps every result in memory, in order (tests, notebooks)."""

    def __init__(self) -> None:
        self.results: list[FrameResult] = []

    def write(self, result: FrameResult) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass
