"""Video and many streams through one Detector: PyAV sources, the cross-stream batching runtime, tracking,
anonymisation and H.264 outputs. ``retinaserve video`` is its command line (:mod:`retinaserve.video.cli`)."""

from __future__ import annotations

from .anonymise import anonymise, grown_box
from .runtime import FrameResult, Sink, StreamRuntime, StreamStats
from .sinks import CollectSink, JsonlSink, VideoSink
from .sources import Frame, VideoError, VideoSource, open_source, source_kind
from .tracker import IoUTracker
from .writer import VideoWriter

__all__ = [
    "CollectSink",
    "Frame",
    "FrameResult",
    "IoUTracker",
    "JsonlSink",
    "Sink",
    "StreamRuntime",
    "StreamStats",
    "VideoError",
    "VideoSink",
    "VideoSource",
    "VideoWriter",
    "anonymise",
    "grown_box",
    "open_source",
    "source_kind",
]
