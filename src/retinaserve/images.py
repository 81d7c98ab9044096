"""Turning what users pass (paths, bytes, numpy arrays, PIL images) into RGB uint8 arrays.

EXIF orientation is applied, grayscale is expanded to three channels, alpha is composited over white, and
anything that is not a decodable image raises :class:`~retinaserve.errors.InvalidImageError` with the reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageInput", "decode_image", "load_image"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image accepted (width x height); larger inputs are refused before their pixels are decoded."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image
"""Anything :func:`load_image` accepts."""

ChannelOrder = Literal["rgb", "bgr"]


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
    return _to_rgb(image)


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
