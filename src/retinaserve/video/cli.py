"""``retinaserve video SRC...``: argument parsing, the live table and the summary; the work is in the runtime."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from itertools import islice
from pathlib import Path
from typing import IO, Any

from ..errors import RetinaServeError

__all__ = ["add_video_parser", "cmd_video"]

log = logging.getLogger(__name__)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_video_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``retinaserve video SRC...``: faces in video files, image sequences, streams and cameras, batched."""
    from ..cli import at_least_one, iou_threshold, score_threshold
    from ..registry import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "video",
        help="detect, track and anonymise faces in videos, streams and cameras, several at once through one engine",
        description="Each SRC is a video file, an image-sequence pattern (frames/%%05d.png or 'frames/*.jpg'), an "
        "RTSP/HTTP stream URL or a camera (/dev/video0). Frames of all sources are batched through one detector. "
        "Prints a live table while it runs and a JSON summary on stdout at the end (also after Ctrl-C or SIGTERM).",
    )
    parser.add_argument("sources", nargs="+", metavar="SRC", help="video files, patterns, stream URLs or cameras")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"registered detector (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", type=Path, help="weights file (default: resolved from env var and cache)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--backend",
        choices=("auto", "openvino", "onnx", "torch"),
        default="auto",
        help="what runs the network (default auto: OpenVINO or ONNX Runtime, whichever runs these frames faster "
        "at the batches the streams fill, measured at start)",
    )
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8", "auto"), default="fp32")
    parser.add_argument("--calibration", nargs="+", help="photos or folders to calibrate INT8 on")
    parser.add_argument("--threshold", type=score_threshold, help="score threshold (default: the model's own)")
    parser.add_argument("--nms", type=iou_threshold, default=0.4, help="NMS IoU threshold (default 0.4)")
    parser.add_argument("--long-side", type=int, help="scale frames so that the long side is N pixels")
    parser.add_argument("--out", type=Path, default=Path("out/video"), help="folder for videos (default out/video)")
    parser.add_argument("--draw", action="store_true", help="write an MP4 per source with boxes, track ids, points")
    hide = parser.add_mutually_exclusive_group()
    hide.add_argument("--blur", action="store_true", help="write an MP4 per source with the faces blurred")
    hide.add_argument("--pixelate", action="store_true", help="write an MP4 per source with the faces pixelated")
    parser.add_argument("--jsonl", type=Path, help="write one JSON line per frame: source, frame, pts, faces")
    parser.add_argument("--summary", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--every", type=at_least_one, default=1, help="process every Nth frame (default 1: all)")
    parser.add_argument("--max-fps", type=_positive, help="process at most F frames per second of each stream")
    parser.add_argument(
        "--live",
        action="store_true",
        help="keep only each stream's newest frame and count drops (files play at their own frame rate); "
        "cameras and stream URLs are always live",
    )
    parser.add_argument(
        "--batch",
        type=at_least_one,
        default=4,
        help="frames per network call at most, across streams (1: no batching)",
    )
    parser.add_argument("--no-track", action="store_true", help="no track ids (every face gets track_id 0)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait when opening or reading a stream")
    parser.add_argument("--download", action="store_true", help="download missing weights (verified)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live table; only the JSON summary")
    parser.set_defaults(func=cmd_video)
    return parser


def cmd_video(args: argparse.Namespace) -> int:
    from ..cli import _provision
    from ..detection import ResizePolicy
    from ..engine.factory import detector_for, photos_in
    from ..registry import DEFAULT_MODEL
    from .anonymise import AnonymiseMode
    from .runtime import Sink, StreamRuntime
    from .sinks import JsonlSink, VideoSink
    from .sources import VideoError, VideoSource, open_source

    threads = 0 if len(args.sources) * 2 <= (os.cpu_count() or 1) else 1
    sources: list[VideoSource] = []
    failed: list[dict[str, Any]] = []
    for spec in args.sources:
        try:
            sources.append(open_source(spec, len(sources), timeout_s=args.timeout, decode_threads=threads))
        except VideoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append({"source": spec, "complete": False, "error": str(exc)})
    if not sources:
        print(json.dumps({"streams": failed}))
        return 2
    download = args.download or args.model == DEFAULT_MODEL
    if download and args.weights is None:
        _provision(args.model, progress=not args.quiet)
    calibration = photos_in(args.calibration or []) if args.precision == "int8" else ()
    if args.precision == "int8" and not calibration:
        from ..data import SAMPLE_PHOTO

        calibration = (SAMPLE_PHOTO,)
    options: dict[str, Any] = {
        "threshold": args.threshold,
        "nms_threshold": args.nms,
        "resize": ResizePolicy(long_side=args.long_side) if args.long_side else None,
    }

    def build(backend: str) -> Any:
        return detector_for(
            args.model,
            backend=backend,
            precision=args.precision,
            device=args.device,
            weights=args.weights,
            calibration_photos=calibration,
            download=download,
            **options,
        )

    size = max((s.size for s in sources), key=lambda wh: wh[0] * wh[1])
    detector, cost = _engine_for_frames(build, args, size)
    log.info("%r", detector)
    if (args.live or any(s.live for s in sources)) and not args.quiet:
        _warn_if_too_many(detector, cost, size, sources, args.max_fps)
    runtime = StreamRuntime(
        detector,
        sources,
        live=args.live,
        every=args.every,
        max_fps=args.max_fps,
        max_batch=args.batch,
        track=not args.no_track,
    )
    mode: AnonymiseMode | None = "blur" if args.blur else "pixelate" if args.pixelate else None
    jsonl: IO[str] | None = None
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl = args.jsonl.open("w")
    lock = threading.Lock()
    used: set[str] = set()
    sinks: list[list[Sink]] = []
    for source in sources:
        stream_sinks: list[Sink] = []
        if args.draw or mode:
            fps = source.fps / args.every if args.max_fps is None else min(source.fps / args.every, args.max_fps)
            path = _output_path(args.out, source.spec, used)
            stream_sinks.append(VideoSink(path, fps, draw=args.draw, anonymise=mode))
        if jsonl is not None:
            stream_sinks.append(JsonlSink(jsonl, source.name, lock))
        sinks.append(stream_sinks)
    table = None if args.quiet else _LiveTable(sys.stderr)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop ends it as Ctrl-C does
    try:
        summary = runtime.run(sinks, on_progress=table.update if table else None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if jsonl is not None:
            jsonl.close()
    if table is not None:
        table.update(runtime, final=True)
    summary["streams"].extend(failed)
    summary["outputs"] = [str(s.path) for stream_sinks in sinks for s in stream_sinks if isinstance(s, VideoSink)]
    text = json.dumps(summary, indent=1)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(text)
    print(text)
    if summary["interrupted"]:
        return 130
    return 0 if all(s["complete"] for s in summary["streams"]) else 1


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM -> KeyboardInterrupt in the main thread: outputs are finished and the summary printed."""
    raise KeyboardInterrupt


def _output_path(folder: Path, spec: str, used: set[str]) -> Path:
    """``folder/<name>.mp4``: the file's stem, or a safe name for a URL or camera; made unique."""
    stem = Path(spec).stem if "://" not in spec else re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("://", 1)[1])
    stem = re.sub(r"[%*?\[\]]", "_", stem).strip("_") or "stream"
    name, counter = stem, 1
    while name in used:
        name = f"{stem}-{counter}"
        counter += 1
    used.add(name)
    return folder / f"{name}.mp4"


def _engine_for_frames(build: Any, args: argparse.Namespace, size: tuple[int, int]) -> tuple[Any, Any]:
    """The detector to run, and what a frame costs on it where that was measured.

    ``--backend auto`` at FP32 on the CPU times OpenVINO and ONNX Runtime on frames of this size at the batches
    the streams can use, and keeps the faster: the Detector's own ``auto`` measures 640x640 photos at batch 1,
    where the ranking can differ (``ultralight-slim`` on 640x360 frames: ONNX Runtime 10.0 ms at any batch,
    OpenVINO 10.6 ms alone and 8.4 ms a frame in batches of 4)."""
    from ..engine.planner import measure_stream_cost

    if args.backend != "auto" or args.precision != "fp32" or args.device != "cpu":
        return build(args.backend), None
    batches = tuple(b for b in (1, 2, 4) if b <= args.batch)
    measured = []
    for backend in ("openvino", "onnx"):
        try:
            detector = build(backend)
        except RetinaServeError as exc:
            log.info("video: %s not measured: %s", backend, exc)
            continue
        detector.batch_size = args.batch
        measured.append((detector, measure_stream_cost(detector, size, batches=batches, time_budget_s=1.5)))
    if not measured:
        return build("auto"), None
    detector, cost = min(measured, key=lambda pair: pair[1].best_ms)
    if not args.quiet:
        times = ", ".join(f"{c.backend} {c.best_ms:.1f} ms at batch {c.best_batch}" for _, c in measured)
        print(f"engine for {size[0]}x{size[1]} frames: {detector.backend.name} (measured: {times})", file=sys.stderr)
    return detector, cost


def _warn_if_too_many(
    detector: Any, cost: Any, size: tuple[int, int], sources: list[Any], max_fps: float | None
) -> None:
    """Warn when the streams (the largest frames ``size``) need more than the engine gives (from the measured cost
    of a frame here)."""
    from ..engine.planner import measure_stream_cost, streams_in_real_time

    fps = max(min(s.fps, max_fps or s.fps) for s in sources)
    cost = cost or measure_stream_cost(detector, size, time_budget_s=1.5)
    fit = streams_in_real_time(cost, fps)
    if fit < len(sources):
        print(
            f"warning: {len(sources)} streams of {size[0]}x{size[1]} at {fps:g} fps need more than this engine gives "
            f"({cost.best_ms:.1f} ms per frame: {fit} such streams fit in real time); live mode will "
            "drop frames (see `retinaserve plan --streams`)",
            file=sys.stderr,
        )


class _LiveTable:
    """Per stream: fps, p50/p99 latency, drops, faces; redrawn in place on a terminal, a line a few seconds apart
    otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lines = 0
        self.last = 0.0

    def update(self, runtime: Any, final: bool = False) -> None:
        from ..tables import format_table
        from .runtime import percentile

        now = time.perf_counter()
        if not self.tty and not final and now - self.last < 5.0:
            return
        self.last = now
        rows = []
        for stats in runtime.stats:
            recent = list(islice(reversed(stats.latencies_ms), 200))
            p50, p99 = percentile(recent, 50), percentile(recent, 99)
            rows.append(
                (
                    stats.name[-40:],
                    f"{stats.processed}/{stats.decoded}",
                    f"{stats.fps(now):.1f}",
                    "-" if p50 is None else f"{p50:.0f}",
                    "-" if p99 is None else f"{p99:.0f}",
                    stats.dropped,
                    stats.last_faces,
                    stats.tracks,
                    "error" if stats.error else ("done" if stats.finished else "running"),
                )
            )
        header = ("stream", "frames", "fps", "p50 ms", "p99 ms", "dropped", "faces", "tracks", "state")
        text = format_table(header, rows)
        if self.tty and self.lines:
            self.stream.write(f"\x1b[{self.lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines = text.count("\n") + 1
