"""Video sources decoded through PyAV (FFmpeg): files, image sequences, network streams and cameras, each an
iterator of RGB frames with their index and presentation time.

PyAV rather than OpenCV's ``VideoCapture``: it gives each frame's timestamp, the stream's real errors (a
truncated file, a refused connection, a missing camera) as exceptions instead of a silent ``False``, demuxer
options such as RTSP over TCP and read timeouts, and its wheel carries FFmpeg with libx264 for writing.
"""

from __future__ import annotations

import glob
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InvalidImageError, RetinaServeError
from ..images import load_image

__all__ = ["Frame", "SourceKind", "VideoError", "VideoSource", "import_av", "open_source", "source_kind"]

log = logging.getLogger(__name__)

SourceKind = Literal["file", "sequence", "url", "camera"]
_URL = re.compile(r"^(rtsp|rtsps|rtmp|rtmps|http|https|udp|tcp|srt|rtp)://", re.IGNORECASE)
_CAMERA = re.compile(r"^(/dev/video\d+|video=.+|\d+)$")
_SEQUENCE_FPS = 25.0


class VideoError(RetinaServeError):
    """A source that cannot be opened or read: missing, corrupt, truncated, refused, or not a video."""


def import_av() -> Any:
    """PyAV, or a clear error saying how to install it (it comes with the ``video`` extra)."""
    try:
        import av
    except ImportError:  # pragma: no cover - the dev install has it
        raise VideoError("video needs PyAV: pip install 'retinaserve[video]'") from None
    return av


@dataclass(frozen=True)
class Frame:
    """One decoded frame: (H, W, 3) uint8 RGB pixels, its index among the source's frames and its time."""

    source: int
    """The index of the source among those being run."""
    index: int
    """0-based index among all frames the source decoded (skipped ones included)."""
    pts: float | None
    """Presentation time in seconds (None where the container has none)."""
    image: np.ndarray
    decoded_at: float
    """``time.perf_counter()`` when decoding finished: where latency is measured from."""


def source_kind(spec: str) -> SourceKind:
    """What a SRC argument names: a stream URL, a camera device, an image-sequence pattern or a video file."""
    if _URL.match(spec):
        return "url"
    if _CAMERA.match(spec):
        return "camera"
    if "%" in spec or any(ch in spec for ch in "*?["):
        return "sequence"
    return "file"


class VideoSource:
    """An opened source: ``frames()`` yields its decoded frames in order; ``close()`` releases it (any thread).

    ``size`` (width, height) and ``fps`` are known once it is open; the first frame is decoded on opening so
    that a source that is not a video fails there, with its name in the message.
    """

    def __init__(self, spec: str, index: int = 0, *, timeout_s: float = 10.0, decode_threads: int = 0) -> None:
        self.spec = spec
        self.index = index
        self.kind: SourceKind = source_kind(spec)
        self.name = _display_name(spec, self.kind)
        self._container: Any = None
        self._paths: list[str] = []
        self._closed = False
        self.fps: float = _SEQUENCE_FPS
        if self.kind == "sequence" and "%" not in spec:
            self._paths = sorted(glob.glob(spec))
            if not self._paths:
                raise VideoError(f"{spec}: no files match this pattern")
            first = self._load_still(self._paths[0])
            self.size = (first.shape[1], first.shape[0])
            self.live = False
            return
        av = import_av()
        options: dict[str, str] = {}
        container_format: str | None = None
        if self.kind == "url" and spec.lower().startswith("rtsp"):
            options["rtsp_transport"] = "tcp"  # UDP loses packets behind NAT and on busy links
        if self.kind == "camera":
            container_format, spec = _camera_format(spec)
        if self.kind == "file" and not Path(spec).is_file():
            raise VideoError(f"{spec}: no such file")
        try:
            self._container = av.open(spec, format=container_format, options=options, timeout=(timeout_s, timeout_s))
        except av.FFmpegError as exc:
            raise VideoError(f"{self.name}: cannot open ({_reason(exc, self.kind)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.name}: has no video stream")
        stream = self._container.streams.video[0]
        if decode_threads != 1:
            stream.thread_type = "AUTO"  # frame and slice threads: the decoder's own parallelism
        stream.thread_count = decode_threads  # 0: FFmpeg's choice (one per core); 1 when streams share few cores
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else _SEQUENCE_FPS
        self.size = (stream.codec_context.width, stream.codec_context.height)
        self.live = self.kind in ("url", "camera")
        """Whether frames arrive at their own pace (a camera or a network stream) rather than on demand."""

    def __repr__(self) -> str:
        return f"VideoSource({self.name!r}, {self.kind}, {self.size[0]}x{self.size[1]} @ {self.fps:g} fps)"

    def frames(self) -> Iterator[tuple[int, float | None, np.ndarray]]:
        """(index, pts in seconds, RGB pixels) per frame, in order; a read error after some frames raises
        :class:`VideoError` saying how many were read."""
        if self._paths:
            for index, path in enumerate(self._paths):
                if self._closed:
                    return
                yield index, index / self.fps, self._load_still(path)
            return
        av = import_av()
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                yield index, (float(frame.time) if frame.time is not None else None), frame.to_ndarray(format="rgb24")
                index += 1
        except av.FFmpegError as exc:
            if self._closed:
                return
            reason = _reason(exc, self.kind)
            raise VideoError(f"{self.name}: read failed after {self._read(index)} ({reason})") from None
        except (OSError, ValueError) as exc:  # a closed container mid-read
            if self._closed:
                return
            raise VideoError(f"{self.name}: read failed after {self._read(index)} ({exc})") from None
        if index == 0:
            raise VideoError(f"{self.name}: no frame could be decoded (corrupt or not a video)")
        declared = self._stream.frames  # from the container's index (MP4, MKV); 0 where it has none (MPEG-TS, live)
        if not self._closed and declared and index < declared * 0.98:
            raise VideoError(f"{self.name}: ended after {self._read(index)} (truncated?)")

    def _read(self, index: int) -> str:
        """``7 frames``, or ``7 of its 30 frames`` where the container says how many it has."""
        declared = self._stream.frames if self._container is not None else 0
        return f"{index} of its {declared} frames" if declared else f"{index} frames"

    @property
    def time_base(self) -> Any:
        """The stream's time base (a ``fractions.Fraction``), for writers that keep the source's timing."""
        return self._stream.time_base if self._container is not None else None

    def close(self) -> None:
        """Stop reading; a ``frames()`` loop in another thread ends at its next frame."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing twice or mid-read: nothing to release any more
                log.debug("closing %s", self.name, exc_info=True)

    def _load_still(self, path: str) -> np.ndarray:
        try:
            return load_image(path)
        except InvalidImageError as exc:
            raise VideoError(f"{self.name}: {exc}") from None


def open_source(spec: str, index: int = 0, *, timeout_s: float = 10.0, decode_threads: int = 0) -> VideoSource:
    """Open one SRC (see :func:`source_kind`); raises :class:`VideoError` with the source's name.

    ``decode_threads``: the decoder's threads (0: one per core, FFmpeg's default; 1 where many streams share few
    cores and a thread per stream already decodes in parallel)."""
    return VideoSource(spec, index, timeout_s=timeout_s, decode_threads=decode_threads)


def _display_name(spec: str, kind: SourceKind) -> str:
    if kind == "url":
        return re.sub(r"//[^/@]*@", "//***@", spec)  # credentials in a camera URL stay out of logs
    return spec


def _camera_format(spec: str) -> tuple[str, str]:
    """FFmpeg's capture device format for this platform and the device name it expects."""
    if sys.platform.startswith("linux"):
        device = spec if spec.startswith("/dev/") else f"/dev/video{spec}"
        if not Path(device).exists():
            raise VideoError(f"camera {device}: no such device (is a camera connected, and may this user read it?)")
        return "v4l2", device
    if sys.platform == "darwin":
        return "avfoundation", spec.removeprefix("/dev/video")
    return "dshow", spec if spec.startswith("video=") else f"video={spec}"


def _reason(exc: Exception, kind: SourceKind) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    if kind == "url" and "timed out" in text.lower():
        return f"{text}: no answer from the server"
    return text


def wait_until(deadline: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``deadline`` (pacing a file as if it were live)."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
