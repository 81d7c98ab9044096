"""Many video streams through one Detector: a decode thread per stream into a bounded queue, one scheduler that
gathers frames across streams into batches, and each stream's results handed on in frame order.

File mode processes every frame (or every Nth): a full queue makes its decoder wait. Live mode keeps only the
newest frame of each stream and counts what it dropped, so latency stays one frame deep when the engine is slower
than the cameras. Cameras and network streams are always live; files are live only when asked (``live=True``), and
are then paced at their own frame rate, as a camera would deliver them.

Batches take what is ready, one frame per stream per round, and never wait for more: a batch forms because the
engine was busy while frames arrived. Streams whose network inputs differ in shape only by padding (16:9 next to
4:3 at one long side) are padded to one shape (:func:`~retinaserve.engine.bucketing.common_shape`), so that they
batch together at exactly the scale each has alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..detection import Detector, ResizePolicy
from ..detection.results import Face
from ..engine.bucketing import common_shape
from ..errors import RetinaServeError
from .sources import Frame, VideoError, VideoSource, wait_until
from .tracker import IoUTracker

__all__ = ["FrameResult", "Sink", "StreamRuntime", "StreamStats", "percentile"]

log = logging.getLogger(__name__)

_DONE = object()
_LATENCY_WINDOW = 100_000
"""Latencies kept per stream for the percentiles: over an hour at 25 fps."""


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: its faces in frame pixels, their track ids, and the latency from decoded to done."""

    frame: Frame
    faces: list[Face]
    track_ids: list[int]
    latency_ms: float
    held_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Where faces of tracks lost in the last ``hold_frames`` frames are expected (anonymisation covers them)."""

    def to_dict(self, source_name: str) -> dict[str, Any]:
        """The ``--jsonl`` line: source, frame index, pts and the faces with their track ids."""
        return {
            "source": source_name,
            "frame": self.frame.index,
            "pts": self.frame.pts,
            "faces": [face.to_dict() | {"track_id": k} for face, k in zip(self.faces, self.track_ids)],
        }


class Sink(Protocol):
    """Where one stream's results go, in frame order (a video writer, a JSONL file, a list in tests)."""

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), or None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


@dataclass
class StreamStats:
    """What one stream did so far; the live table and the JSON summary are made from these."""

    name: str
    size: tuple[int, int]
    source_fps: float
    decoded: int = 0
    skipped: int = 0
    """Frames left out on purpose (``every``, ``max_fps``)."""
    dropped: int = 0
    """Live mode: frames replaced by a newer one before the engine got to them."""
    processed: int = 0
    faces: int = 0
    last_faces: int = 0
    tracks: int = 0
    decode_s: float = 0.0
    error: str | None = None
    finished: bool = False
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    """Decoded-to-detected latency of the latest frames (a camera runs for days: the window keeps memory flat)."""
    failed: int = 0
    """Frames the engine refused (each stream's first such error is in ``error``)."""
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """``perf_counter`` times of the latest processed frames (the live fps)."""

    def fps(self, now: float, window_s: float = 2.0) -> float:
        """Processed frames per second over the last ``window_s``."""
        times = [t for t in self.recent if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "source": self.name,
            "size": list(self.size),
            "source_fps": round(self.source_fps, 3),
            "frames_decoded": self.decoded,
            "frames_processed": self.processed,
            "frames_skipped": self.skipped,
            "frames_dropped": self.dropped,
            "frames_failed": self.failed,
            "faces": self.faces,
            "tracks": self.tracks,
            "fps": round(self.processed / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": {
                "p50": _rounded(percentile(self.latencies_ms, 50)),
                "p99": _rounded(percentile(self.latencies_ms, 99)),
            },
            "decode_ms_per_frame": round(self.decode_s / self.decoded * 1e3, 3) if self.decoded else None,
            "complete": self.finished and self.error is None,
            "error": self.error,
        }


class _FrameQueue:
    """A stream's frames waiting for the engine: bounded and blocking (file mode) or newest-only (live mode)."""

    def __init__(self, capacity: int, keep_newest: bool) -> None:
        self.items: deque[Frame] = deque()
        self.capacity = 1 if keep_newest else capacity
        self.keep_newest = keep_newest


class StreamRuntime:
    """Runs every source through one detector; see the module docstring for the scheduling.

    ``every``: keep every Nth frame. ``max_fps``: keep at most this many frames per second of the stream's time.
    ``max_batch``: frames per network call at most (1 turns cross-stream batching off). ``track``: give faces
    track ids. ``hold_frames``: how long a lost track's expected box is still reported (``held_boxes``).
    ``detect_options``: passed to ``Detector.run`` (threshold, nms_threshold, max_faces).
    """

    def __init__(
        self,
        detector: Detector,
        sources: Sequence[VideoSource],
        *,
        live: bool = False,
        every: int = 1,
        max_fps: float | None = None,
        max_batch: int = 4,
        queue_frames: int = 8,
        track: bool = True,
        hold_frames: int = 12,
        detect_options: dict[str, Any] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if max_fps is not None and max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps}")
        if max_batch < 1 or queue_frames < 1:
            raise ValueError("max_batch and queue_frames must be >= 1")
        self.detector = detector
        self.sources = list(sources)
        self.live = live
        self.every = every
        self.max_fps = max_fps
        self.max_batch = max_batch
        self.track = track
        self.hold_frames = hold_frames
        self.detect_options = dict(detect_options or {})
        pad_multiple = detector.spec.input.pad_multiple
        self.resize: ResizePolicy = (
            common_shape(detector.resize, [s.size for s in self.sources], pad_multiple) or detector.resize
        )
        """The resize every frame runs at: the detector's own, or padded to one shape across streams."""
        self.stats = [StreamStats(s.name, s.size, s.fps) for s in self.sources]
        self.batches: Counter[int] = Counter()
        """Batch size -> how many network calls had it."""
        self.started: float | None = None
        self.elapsed_s: float | None = None
        self.infer_s = 0.0
        self._queues = [_FrameQueue(queue_frames, live or s.live) for s in self.sources]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._decoding = len(self.sources)
        self._stopped_early = False
        self._next = 0  # round-robin start

    def stop(self) -> None:
        """End the run from any thread (as Ctrl-C does): decoders stop, what was processed is kept."""
        self._stopped_early = True
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(
        self,
        sinks: Sequence[Sequence[Sink]] | None = None,
        *,
        on_progress: Callable[[StreamRuntime], None] | None = None,
        progress_every_s: float = 1.0,
    ) -> dict[str, Any]:
        """Decode, detect and hand each stream's results to its sinks (``sinks[i]`` for source i) until every
        source ends, :meth:`stop` is called or Ctrl-C; returns the JSON summary (``interrupted`` says which)."""
        sinks = list(sinks) if sinks is not None else [[] for _ in self.sources]
        if len(sinks) != len(self.sources):
            raise ValueError(f"{len(sinks)} sink lists for {len(self.sources)} sources")
        previous_batch = self.detector.batch_size
        self.detector.batch_size = self.max_batch  # Detector.run would split a batch larger than its own
        try:
            self.warm_up()
            return self._run(sinks, on_progress, progress_every_s)
        finally:
            self.detector.batch_size = previous_batch

    def _run(
        self,
        sinks: list[Sequence[Sink]],
        on_progress: Callable[[StreamRuntime], None] | None,
        progress_every_s: float,
    ) -> dict[str, Any]:
        trackers = [IoUTracker() for _ in self.sources]
        outputs = [_Output(stats, stream_sinks) for stats, stream_sinks in zip(self.stats, sinks)]
        decoders = [
            threading.Thread(target=self._decode, args=(i,), name=f"decode-{i}", daemon=True)
            for i in range(len(self.sources))
        ]
        self.started = time.perf_counter()
        for thread in decoders:
            thread.start()
        interrupted = False
        last_progress = self.started
        try:
            while (batch := self._gather()) is not None:
                self._detect(batch, trackers, outputs)
                now = time.perf_counter()
                if on_progress is not None and now - last_progress >= progress_every_s:
                    last_progress = now
                    on_progress(self)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._halt()
            for thread in decoders:  # decoders see the stop between frames; closing a source under a running
                thread.join(timeout=2.0)  # decode is for a read blocked on the network only
            for source, thread in zip(self.sources, decoders):
                if thread.is_alive():
                    source.close()
                    thread.join(timeout=5.0)
            for source in self.sources:
                source.close()
            for output in outputs:
                output.finish()
        self.elapsed_s = time.perf_counter() - self.started
        return self.summary(interrupted=interrupted or self._stopped_early)

    def warm_up(self) -> None:
        """Run the detector once at every batch size on every source's frame size before any frame is timed, so
        that compiling a shape (OpenVINO: ~60-240 ms each) drops no live frame and counts in no latency."""
        sizes = {source.size for source in self.sources if min(source.size) > 0}
        for width, height in sizes:
            blank = np.zeros((height, width, 3), np.uint8)
            try:
                for batch in range(1, self.max_batch + 1):
                    self.detector.run([blank] * batch, resize=self.resize, **self.detect_options)
            except RetinaServeError as exc:  # such frames will fail the same way, each stream with its own error
                log.info("warm-up at %dx%d: %s", width, height, exc)

    def summary(self, *, interrupted: bool = False) -> dict[str, Any]:
        """Per-stream and total numbers so far (also what :meth:`run` returns)."""
        elapsed = self.elapsed_s or (time.perf_counter() - self.started if self.started is not None else 0.0)
        processed = sum(s.processed for s in self.stats)
        decoded = sum(s.decoded for s in self.stats)
        return {
            "model": self.detector.name,
            "backend": self.detector.backend.name,
            "resize": str(self.resize),
            "mode": "live" if self.live else "file",
            "live_streams": sum(q.keep_newest for q in self._queues),
            "interrupted": interrupted,
            "elapsed_s": round(elapsed, 3),
            "frames_processed": processed,
            "fps": round(processed / elapsed, 2) if elapsed > 0 else 0.0,
            "batches": sum(self.batches.values()),
            "mean_batch": round(processed / sum(self.batches.values()), 3) if self.batches else 0.0,
            "infer_ms_per_frame": round(self.infer_s / processed * 1e3, 3) if processed else None,
            "decode_ms_per_frame": round(sum(s.decode_s for s in self.stats) / decoded * 1e3, 3) if decoded else None,
            "streams": [s.summary(elapsed) for s in self.stats],
        }

    def _decode(self, index: int) -> None:
        source, stats = self.sources[index], self.stats[index]
        pace_start: float | None = None
        first_pts: float | None = None
        next_keep = -1.0
        try:
            iterator = source.frames()
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    position, pts, image = next(iterator)
                except StopIteration:
                    break
                done = time.perf_counter()
                stats.decode_s += done - t0
                stats.decoded += 1
                stream_time = pts if pts is not None else position / (source.fps or 25.0)
                if self.live and not source.live:  # a file played as a camera would deliver it
                    if pace_start is None:
                        pace_start, first_pts = done, stream_time
                    wait_until(pace_start + stream_time - (first_pts or 0.0))
                    done = time.perf_counter()
                if position % self.every:
                    stats.skipped += 1
                    continue
                if self.max_fps is not None:
                    if stream_time + 1e-6 < next_keep:
                        stats.skipped += 1
                        continue
                    next_keep = max(next_keep + 1.0 / self.max_fps, stream_time)
                self._put(index, Frame(index, position, pts, image, done))
        except VideoError as exc:
            stats.error = str(exc)
            log.warning("%s", exc)
        except Exception as exc:  # one broken source must not end the others
            stats.error = f"{source.name}: {type(exc).__name__}: {exc}"
            log.exception("decoding %s", source.name)
        finally:
            stats.finished = not self._stop.is_set() or stats.error is not None
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    def _put(self, index: int, frame: Frame) -> None:
        frames = self._queues[index]
        with self._cond:
            if frames.keep_newest:
                if frames.items:
                    frames.items.popleft()
                    self.stats[index].dropped += 1
            else:
                while len(frames.items) >= frames.capacity and not self._stop.is_set():
                    self._cond.wait(0.1)
            frames.items.append(frame)
            self._cond.notify_all()

    def _gather(self) -> list[Frame] | None:
        """The next batch: up to ``max_batch`` ready frames, one per stream per round from a rotating start; waits
        only while nothing is ready. None when every source has ended and every frame is done (or on stop)."""
        with self._cond:
            while not self._stop.is_set():
                if any(q.items for q in self._queues):
                    break
                if self._decoding == 0:
                    return None
                self._cond.wait(0.1)
            else:
                return None
            batch: list[Frame] = []
            count = len(self._queues)
            while len(batch) < self.max_batch:
                took = False
                for offset in range(count):
                    frames = self._queues[(self._next + offset) % count]
                    if frames.items and len(batch) < self.max_batch:
                        batch.append(frames.items.popleft())
                        took = True
                if not took:
                    break
            self._next = (self._next + 1) % count
            self._cond.notify_all()  # decoders waiting for room
            return batch

    def _detect(self, batch: list[Frame], trackers: list[IoUTracker], outputs: list[_Output]) -> None:
        t0 = time.perf_counter()
        try:
            results = self.detector.run([f.image for f in batch], resize=self.resize, **self.detect_options)
        except RetinaServeError as exc:  # a frame the engine refuses (too large, ...): only its own stream fails
            if len(batch) > 1:
                for frame in batch:
                    self._detect([frame], trackers, outputs)
                return
            stats = self.stats[batch[0].source]
            stats.failed += 1
            stats.error = stats.error or f"{stats.name}: frame {batch[0].index}: {exc}"
            return
        done = time.perf_counter()
        self.infer_s += done - t0
        self.batches[len(batch)] += 1
        for frame, result in zip(batch, results):
            stats = self.stats[frame.source]
            faces = list(result.faces)
            tracker = trackers[frame.source]
            ids = tracker.update(frame.index, faces) if self.track else [0] * len(faces)
            held = tracker.held(frame.index, self.hold_frames) if self.track and self.hold_frames else []
            latency = (done - frame.decoded_at) * 1e3
            stats.processed += 1
            stats.faces += len(faces)
            stats.last_faces = len(faces)
            stats.tracks = tracker.tracks_started
            stats.latencies_ms.append(latency)
            stats.recent.append(done)
            outputs[frame.source].put(FrameResult(frame, faces, ids, latency, held))


class _Output:
    """A stream's sinks on a thread of their own (H.264 encoding overlaps the engine), fed in frame order."""

    def __init__(self, stats: StreamStats, sinks: Sequence[Sink], depth: int = 32) -> None:
        self.stats = stats
        self.sinks = list(sinks)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        if self.sinks:
            self._thread = threading.Thread(target=self._loop, name=f"output-{stats.name}", daemon=True)
            self._thread.start()

    def put(self, result: FrameResult) -> None:
        if self._thread is not None:
            self._queue.put(result)

    def finish(self) -> None:
        if self._thread is not None:
            self._queue.put(_DONE)
            self._thread.join()

    def _loop(self) -> None:
        failed = False
        while (item := self._queue.get()) is not _DONE:
            if failed:
                continue
            try:
                for sink in self.sinks:
                    sink.write(item)
            except Exception as exc:  # a full disk ends this stream's output, not the run
                failed = True
                self.stats.error = self.stats.error or f"{self.stats.name}: writing failed: {exc}"
                log.warning("%s", self.stats.error)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self.stats.error = self.stats.error or f"{self.stats.name}: closing output failed: {exc}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
