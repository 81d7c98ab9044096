"""Drawing detections on an image: boxes, scores and the five landmarks (a picture beats a JSON dump)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detection.results import LANDMARK_NAMES, Face

__all__ = ["LANDMARK_COLOURS", "draw_faces"]

LANDMARK_COLOURS = {
    "left_eye": (255, 64, 64),
    "right_eye": (64, 160, 255),
    "nose": (255, 220, 0),
    "mouth_left": (255, 64, 255),
    "mouth_right": (0, 230, 230),
}
_BOX = (40, 220, 60)


def draw_faces(
    image: np.ndarray | Image.Image,
    faces: Sequence[Face],
    *,
    landmarks: bool = True,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with each face's box, label (default: its score) and five points drawn, scaled to
    the image size."""
    if labels is not None and len(labels) != len(faces):
        raise ValueError(f"{len(labels)} labels for {len(faces)} faces")
    canvas = image.copy() if isinstance(image, Image.Image) else Image.fromarray(image)
    canvas = canvas.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    base_line = max(1, round(max(canvas.size) / 500))
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        # small faces get thin lines and small labels so that crowds stay readable
        line = max(1, min(base_line, round(min(face.width, face.height) / 40)))
        font_size = int(max(8, min(6 * base_line + 6, face.height * 0.3)))
        font = fonts.setdefault(font_size, ImageFont.load_default(size=font_size))
        draw.rectangle((x1, y1, x2, y2), outline=_BOX, width=line)
        label = labels[index] if labels is not None else f"{face.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        text_h = bottom - top
        draw.rectangle((x1, y1 - text_h - 2 * line, x1 + right - left + 2 * line, y1), fill=_BOX)
        draw.text((x1 + line, y1 - text_h - line - (top - y1)), label, fill=(0, 0, 0), font=font)
        if landmarks:
            radius = max(1.5, min(face.width, face.height) / 40, line)
            for name, (x, y) in zip(LANDMARK_NAMES, face.landmarks.points()):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=LANDMARK_COLOURS[name])
    return canvas
