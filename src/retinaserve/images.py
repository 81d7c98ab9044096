"""Turning what users pass (paths, bytes, numpy arrays, PIL images) into RGB uint8 arrays.

EXIF orientation is applied, grayscale is expanded to three channels, alpha is composited over white, and
anything that is not a decodable image raises :class:`~retinaserve.errors.InvalidImageError` with the reason.
:func:`load_image_reduced` decodes JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when the caller will
shrink them at least that much anyway, which is several times faster for large photos.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageInput",
    "ReducedImage",
    "TargetSize",
    "decode_image",
    "load_image",
    "load_image_reduced",
]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image accepted (width x height); larger inputs are refused before their pixels are decoded."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image
"""Anything :func:`load_image` accepts."""

ChannelOrder = Literal["rgb", "bgr"]

TargetSize = Callable[[int, int], tuple[int, int]]
"""(height, width) of the full, upright image -> (height, width) the caller will resize it to."""

_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that rotate by 90 or 270 degrees, so the stored width is the displayed height."""


@dataclass(frozen=True)
class ReducedImage:
    """Decoded pixels, possibly at 1/``reduction`` of the full size, with the full image's upright size.

    Pixel ``(i, j)`` stands for the ``reduction`` x ``reduction`` block of full-image pixels from row
    ``i * reduction`` and column ``j * reduction`` (fewer in the last row and column), so
    ``pixels.shape[:2] == (ceil(height / reduction), ceil(width / reduction))``.
    """

    pixels: np.ndarray
    """(h, w, 3) uint8 RGB, EXIF orientation applied."""
    height: int
    """Of the full image, EXIF orientation applied."""
    width: int
    reduction: int = 1
    """1 (full size), 2, 4 or 8."""

    def __post_init__(self) -> None:
        expected = (-(-self.height // self.reduction), -(-self.width // self.reduction), 3)
        if self.reduction not in (1, 2, 4, 8) or self.pixels.shape != expected:
            raise ValueError(
                f"pixels of shape {self.pixels.shape} do not fit a {self.width}x{self.height} image reduced by "
                f"{self.reduction} (expected {expected}; reduction 1, 2, 4 or 8)"
            )

    @classmethod
    def full(cls, pixels: np.ndarray) -> ReducedImage:
        """Pixels decoded at full size."""
        return cls(pixels, pixels.shape[0], pixels.shape[1], 1)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> (H, W, 3) uint8 RGB, alpha composited over white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / top)).astype(np.uint8))
    return np.array(image.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB with EXIF orientation applied; the type is read from content."""
    return _decode(data, max_pixels, None).pixels


def _decode(data: bytes | bytearray | memoryview, max_pixels: int, target_size: TargetSize | None) -> ReducedImage:
    """Encoded bytes -> upright RGB pixels; with ``target_size``, a JPEG is reduced by the largest DCT scale (1/2,
    1/4, 1/8) that keeps it at least that size. ``max_pixels`` is checked on the full size, before decoding."""
    if len(data) == 0:
        raise InvalidImageError("empty image data (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(bytes(data)))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(
                    f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels"
                )
            reduction = 1
            if target_size is not None:  # a JPEG's EXIF (APP1) is read with its header, before any pixel
                transposed = image.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS
                full_h, full_w = (width, height) if transposed else (height, width)
                reduction = _draft(image, target_size(full_h, full_w), transposed)
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError("not an image: the data is in no image format this server can decode") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # PIL's format plugins raise many types on hostile bytes; all mean a bad image
        raise InvalidImageError(f"corrupt or truncated image: {exc or type(exc).__name__}") from None
    if reduction == 1:  # the size as decoded, whatever the format: other formats may store EXIF after the pixels
        return ReducedImage.full(_to_rgb(image))
    return ReducedImage(_to_rgb(image), full_h, full_w, reduction)


def _draft(image: Image.Image, target: tuple[int, int], transposed: bool) -> int:
    """Ask the decoder for the largest DCT reduction (2, 4 or 8) that keeps ``image`` at least ``target`` (height,
    width) on both sides; returns the reduction it will apply (1 for formats other than JPEG).

    ``target`` is for the upright image; the decoder works on the stored one, whose axes a 90-degree EXIF
    rotation (``transposed``) swaps.
    """
    stored_width = image.size[0]
    target_h, target_w = max(1, target[0]), max(1, target[1])
    draft = image.draft(None, (target_h, target_w) if transposed else (target_w, target_h))
    if draft is None:  # not a JPEG (Image.draft is a no-op elsewhere), or one libjpeg cannot scale
        return 1
    _, box = draft  # the full image's extent in the reduced image's pixels: (0, 0, width / r, height / r)
    return round(stored_width / box[2])


def _array_to_rgb(array: np.ndarray, channels: ChannelOrder) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InvalidImageError(f"image arrays must be uint8 (0..255), got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    if channels == "bgr":
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    if array.shape[2] == 4:
        return _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
    return np.ascontiguousarray(array)


def load_image(
    source: ImageInput, *, channels: ChannelOrder = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Any supported input -> (H, W, 3) uint8 RGB.

    ``channels`` gives the channel order of numpy arrays only ("rgb", or "bgr" as from OpenCV); files, bytes
    and PIL images carry their own.
    """
    if isinstance(source, np.ndarray):
        if source.size > 3 * max_pixels:
            raise InvalidImageError(f"image array of shape {source.shape} exceeds the limit of {max_pixels} pixels")
        return _array_to_rgb(source, channels)
    if isinstance(source, Image.Image):
        if source.width * source.height > max_pixels:
            raise InvalidImageError(f"image of {source.width}x{source.height} exceeds the limit of {max_pixels} pixels")
        return _to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(source, max_pixels=max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"image file {path} does not exist")
        try:
            return decode_image(path.read_bytes(), max_pixels=max_pixels)
        except InvalidImageError as exc:
            raise InvalidImageError(f"{path}: {exc}") from None
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def load_image_reduced(
    source: ImageInput,
    target_size: TargetSize,
    *,
    channels: ChannelOrder = "rgb",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ReducedImage:
    """Like :func:`load_image`, but a JPEG file or bytes is decoded at 1/2, 1/4 or 1/8 scale when the image is at
    least that many times larger than ``target_size(height, width)`` on both sides (libjpeg's DCT scaling: much
    faster than a full decode, and an area average rather than aliasing).

    Other formats, numpy arrays and PIL images are loaded at full size (reduction 1). Limits and EXIF orientation
    are those of :func:`load_image`: ``max_pixels`` applies to the full size.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(source, max_pixels, target_size)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"image file {path} does not exist")
        try:
            return _decode(path.read_bytes(), max_pixels, target_size)
        except InvalidImageError as exc:
            raise InvalidImageError(f"{path}: {exc}") from None
    return ReducedImage.full(load_image(source, channels=channels, max_pixels=max_pixels))
