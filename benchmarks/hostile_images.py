"""Valid images whose headers are slow to parse: a real image with a huge run of empty metadata before its pixels.

Each builder inserts ``count`` tiny, well-formed metadata blocks where a decoder must walk through them before it
learns the image's size (PNG: ancillary chunks after IHDR; JPEG: COM markers after SOI; GIF: comment extensions
before the image descriptor), so ``Image.open(...).size`` pays for every block. The defaults make files of about
9.6 MB, just under the server's default 10 MiB upload limit; tests pass a small ``count``. Deterministic, and
needs only the standard library, NumPy and Pillow.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = [
    "GIF_COMMENTS",
    "JPEG_COMMENTS",
    "PNG_CHUNKS",
    "PNG_CHUNK_TYPE",
    "gif_with_comments",
    "jpeg_with_comments",
    "png_chunk",
    "png_with_empty_chunks",
    "sample_image",
]

PNG_CHUNK_TYPE = b"zzZz"
"""Ancillary (lowercase 1st letter), private (lowercase 2nd), reserved bit clear (uppercase 3rd), safe to copy."""
PNG_CHUNKS = 800_000
"""Empty chunks in the full-size PNG: 12 bytes each, 9.6 MB."""
JPEG_COMMENTS = 1_900_000
"""One-byte COM segments in the full-size JPEG: 5 bytes each, 9.5 MB."""
GIF_COMMENTS = 1_900_000
"""Comment extensions with one one-byte sub-block in the full-size GIF: 5 bytes each, 9.5 MB."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sample_image(width: int = 64, height: int = 48) -> Image.Image:
    """A deterministic RGB gradient, the default pixels behind the metadata."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_empty_chunks(count: int = PNG_CHUNKS, *, template: bytes | None = None) -> bytes:
    """A PNG (``template``, else :func:`sample_image`) with ``count`` empty ``zzZz`` chunks between IHDR and the
    rest (IDAT ... IEND): 12 bytes each, every CRC correct."""
    data = template if template is not None else _encode(sample_image(), "PNG")
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("template is not a PNG that starts with its IHDR chunk")
    end_of_ihdr = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    return data[:end_of_ihdr] + png_chunk(PNG_CHUNK_TYPE) * count + data[end_of_ihdr:]


def jpeg_with_comments(count: int = JPEG_COMMENTS, *, template: bytes | None = None) -> bytes:
    """A JPEG (``template``, else :func:`sample_image`) with ``count`` COM (0xFFFE) segments of one byte right
    after SOI, before everything the template has (APPn, DQT, SOF, ...): 5 bytes each."""
    data = template if template is not None else _encode(sample_image(), "JPEG")
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("template is not a JPEG (no SOI marker)")
    return data[:2] + b"\xff\xfe\x00\x03c" * count + data[2:]


def gif_with_comments(count: int = GIF_COMMENTS, *, template: bytes | None = None) -> bytes:
    """A GIF (``template``, else :func:`sample_image` quantised) with ``count`` comment extensions (0x21 0xFE, one
    sub-block of one byte, terminator) after the global colour table, before any other block: 5 bytes each."""
    data = template if template is not None else _encode(sample_image().quantize(64), "GIF")
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        raise ValueError("template is not a GIF")
    flags = data[10]
    end_of_palette = 13 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0)
    return b"GIF89a" + data[6:end_of_palette] + b"\x21\xfe\x01c\x00" * count + data[end_of_palette:]
