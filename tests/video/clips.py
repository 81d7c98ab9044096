"""Real clips made from the shared photos with PyAV: pans and zooms over a photo, and a slide show of portraits.

Each clip also returns the exact affine map from frame pixels to photo pixels of every frame, so that tests can say
which face of the photo a detection in a frame is (track ids), and the benchmark can use the same clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class Clip:
    path: Path
    size: tuple[int, int]
    """(W, H) of the frames."""
    fps: float
    windows: list[tuple[float, float, float]]
    """Per frame: (x0, y0, scale) with photo = x0 + frame_x / scale, y0 + frame_y / scale (pans and zooms)."""

    @property
    def frames(self) -> int:
        return len(self.windows)


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def write_clip(
    path: Path, frames: list[np.ndarray], fps: float, *, crf: int = 16, movflags_faststart: bool = False
) -> None:
    """H.264 yuv420p MP4 of RGB frames (even sides); ``movflags_faststart`` puts the index first."""
    options = {"movflags": "faststart"} if movflags_faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def pan_clip(
    photo: Path,
    path: Path,
    *,
    size: tuple[int, int] = (640, 360),
    frames: int = 40,
    fps: float = 25.0,
    crop: float = 0.6,
    zoom: float = 1.0,
) -> Clip:
    """A window of ``crop`` of the photo's width (the frame's aspect) panning left to right over ``frames`` frames,
    its width shrinking to ``crop / zoom`` by the end (a zoom in)."""
    image = load_rgb(photo)
    height, width = image.shape[:2]
    out_w, out_h = size
    images, windows = [], []
    for i in range(frames):
        t = i / max(1, frames - 1)
        crop_w = width * crop / (1 + (zoom - 1) * t)
        crop_h = min(height, crop_w * out_h / out_w)
        crop_w = crop_h * out_w / out_h
        x0 = (width - crop_w) * t
        y0 = (height - crop_h) / 2
        scale = out_w / crop_w
        matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
        images.append(cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA))
        windows.append((x0, y0, scale))
    write_clip(path, images, fps)
    return Clip(path, size, fps, windows)


def slideshow_clip(photos: list[Path], path: Path, *, size: tuple[int, int], per_photo: int, fps: float) -> Clip:
    """Each photo letterboxed into the frame for ``per_photo`` frames, one after the other."""
    out_w, out_h = size
    images, windows = [], []
    for photo in photos:
        image = load_rgb(photo)
        height, width = image.shape[:2]
        scale = min(out_w / width, out_h / height)
        matrix = np.array([[scale, 0, 0], [0, scale, 0]])
        frame = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_AREA)
        images += [frame] * per_photo
        windows += [(0.0, 0.0, scale)] * per_photo
    write_clip(path, images, fps)
    return Clip(path, size, fps, windows)


def decode_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as RGB, as PyAV decodes it (what the runtime sees)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
