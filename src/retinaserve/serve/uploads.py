"""Getting images out of requests safely: size limits enforced while the body streams in, multipart or raw
bodies, the type decided by content (magic bytes) and the pixel count read from the header before decoding."""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from ..errors import InvalidImageError
from ..images import ReducedImage, TargetSize, decode_image, load_image_reduced
from .errors import ApiError

__all__ = [
    "ACCEPTED_FORMATS",
    "HeaderNeedsTime",
    "Upload",
    "decode_upload",
    "decode_upload_reduced",
    "probe_image",
    "read_uploads",
    "sniff_format",
]

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
"""Formats the server decodes, identified from their magic bytes; anything else is 415."""

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and the name the client gave it (informational only, never trusted)."""

    data: bytes
    filename: str | None = None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"request body exceeds the limit of {limit} bytes ({limit / _MIB:.1f} MiB)"
    )


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so that reading more than ``limit`` body bytes raises 413 mid-stream."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


async def read_uploads(request: Request, *, limit: int, max_files: int) -> list[Upload]:
    """The images of a request (see :func:`_read_uploads`); a client that disconnects mid-body gets 400 (which it
    will not see) instead of an unhandled error in the log."""
    try:
        return await _read_uploads(request, limit=limit, max_files=max_files)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before the body was complete") from None


async def _read_uploads(request: Request, *, limit: int, max_files: int) -> list[Upload]:
    """The images of a request: every file part of a multipart form, or else the raw body as one image.

    The body is counted while it streams in (413 past ``limit``, and at once when Content-Length says so);
    no image is parsed here. The declared content type only tells multipart from raw, never the image type.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    limited = Request(request.scope, _limited_receive(request.receive, limit))
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        try:
            form = await limited.form(max_files=max_files, max_fields=32)
        except (MultiPartException, StarletteHTTPException) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "detail", None) or str(exc)
            if "Too many files" in str(message):
                raise ApiError(413, "too_many_files", f"at most {max_files} files per request") from None
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {message}") from None
        try:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            uploads = [Upload(await f.read(), f.filename) for f in files]
        finally:
            await form.close()
        if not uploads:
            raise ApiError(400, "missing_file", "the multipart body has no file part; send the image as a file")
        return uploads
    chunks = bytearray()
    async for chunk in limited.stream():
        chunks.extend(chunk)
    if not chunks:
        raise ApiError(400, "empty_body", "empty request body: send an image as the body or as a multipart file")
    return [Upload(bytes(chunks))]


def sniff_format(data: bytes) -> str | None:
    """The image format named by the data's magic bytes (one of ACCEPTED_FORMATS), or None."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "PPM"
    return None


class _ParseTimeUp(Exception):
    """Raised inside PIL's header parser when it has used up its time (not one of the errors PIL catches)."""


class HeaderNeedsTime(Exception):
    """The header needs more reads than the caller allowed (``max_reads``): parse it again off the event loop, with a
    CPU-time budget. Normal headers take a few dozen reads; a header of a million empty chunks does not."""


class _BoundedBytes(io.BytesIO):
    """In-memory bytes whose reads stop the parser past ``max_reads`` reads, or once the reading thread has used
    ``budget_s`` of CPU time: PIL's parsers read chunk by chunk and marker by marker, so a header of a million empty
    chunks stops within the budget instead of holding a thread (and the GIL) for seconds. CPU time, not wall time,
    so that a thread starved by others is not mistaken for a slow parse."""

    _CHECK_EVERY = 256
    """Reads between two looks at the clock (a thread's CPU clock is a system call: ~1 us, as long as a read)."""

    def __init__(self, data: bytes, budget_s: float | None, max_reads: int | None) -> None:
        super().__init__(data)
        self.deadline = None if budget_s is None else time.thread_time() + budget_s
        self.max_reads = max_reads
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.max_reads is not None and self.reads > self.max_reads:
            raise HeaderNeedsTime
        if self.deadline is not None and self.reads % self._CHECK_EVERY == 0 and time.thread_time() > self.deadline:
            raise _ParseTimeUp
        return super().read(size)


def probe_image(
    data: bytes, *, max_pixels: int, budget_s: float | None = None, max_reads: int | None = None
) -> tuple[str, int, int]:
    """(format, width, height) from the magic bytes and the header alone: 415 for data that is not one of
    ACCEPTED_FORMATS, 413 for too many pixels or for a header that takes more than ``budget_s`` of CPU time to
    parse, 400 for empty data or a broken header; HeaderNeedsTime past ``max_reads`` reads. CPU-bound on hostile
    input: without ``max_reads``, call it off the event loop."""
    if not data:
        raise ApiError(400, "invalid_image", "empty image data (0 bytes)")
    sniffed = sniff_format(data)
    if sniffed is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the data is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)}); "
            "the type is read from the content, not the file name or content type",
        )
    bounded = budget_s is not None or max_reads is not None
    stream = _BoundedBytes(data, budget_s, max_reads) if bounded else io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=[sniffed]) as image:
                fmt, (width, height) = str(image.format), image.size
    except HeaderNeedsTime:
        raise
    except _ParseTimeUp:
        raise ApiError(
            413,
            "image_too_complex",
            f"the {sniffed} header did not parse within {(budget_s or 0) * 1e3:.0f} ms of CPU time (too many "
            "chunks, markers or extensions before the pixels); re-encode the image",
        ) from None
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", f"corrupt {sniffed} image: its header cannot be read") from None
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # any parser failure on untrusted bytes is the input's fault, not the server's
        raise ApiError(400, "invalid_image", f"corrupt {sniffed} image header: {type(exc).__name__}") from None
    if width < 1 or height < 1:
        raise ApiError(400, "invalid_image", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels",
        )
    return fmt, width, height


def decode_upload(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB: probe first (415/413 without decoding), then decode (400 if corrupt)."""
    return decode_upload_reduced(data, max_pixels=max_pixels, target_size=None).pixels


def decode_upload_reduced(data: bytes, *, max_pixels: int, target_size: TargetSize | None) -> ReducedImage:
    """As :func:`decode_upload`, but a JPEG is decoded at the DCT scale that ``target_size`` (height, width) ->
    (height, width) allows (:func:`~retinaserve.images.load_image_reduced`); None decodes at full size. The limits
    apply to the full size."""
    probe_image(data, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data": the pixels may still be fine
            if target_size is None:
                return ReducedImage.full(decode_image(data, max_pixels=max_pixels))
            return load_image_reduced(data, target_size, max_pixels=max_pixels)
    except InvalidImageError as exc:  # the decoders turn every failure into this
        raise ApiError(400, "invalid_image", str(exc)) from None
