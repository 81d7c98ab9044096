"""Frames per second through `retinaserve video`'s runtime: 1, 2, 4 and 8 streams of 640x360 and 1280x720 clips made
from a shared photo, for the default and the fastest models and precisions, three ways:

- ``sequential``: the one-stream-at-a-time baseline: one loop decodes a frame and detects faces in it, stream after
  stream (what a script around a detector does);
- ``runtime b1``: the runtime with cross-stream batching off (decode threads overlap the engine);
- ``runtime batched``: the runtime with cross-stream batching, at most max(4, streams) frames a call (8 at most).

Decoding is measured on its own as well. Then a live check: 2 streams of 640x360 played at 25 fps with the fastest
model, counting dropped frames and latency (real time means nothing dropped). Repeats are interleaved; medians.

    .venv/bin/python benchmarks/video.py --json out/video.json --plot out/video.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the clip maker of the tests: the same clips the tests check

from tests.video.clips import Clip, pan_clip  # noqa: E402

from retinaserve.engine.factory import detector_for  # noqa: E402
from retinaserve.tables import format_table  # noqa: E402
from retinaserve.video import StreamRuntime, open_source  # noqa: E402

SHARED = ROOT.parent / "shared"
PHOTO = SHARED / "images" / "crowd_selfie.jpg"


def variants(names: list[str]) -> list[tuple[str, str, str]]:
    """``model:backend:precision`` strings -> tuples."""
    out = []
    for name in names:
        model, backend, precision = [*name.split(":"), "auto", "fp32"][:3]
        out.append((model, backend, precision))
    return out


def sequential(detector: Any, clip: Clip, streams: int) -> tuple[float, int]:
    """The baseline: each stream in turn, decode then detect, one frame at a time. (seconds, frames)."""
    import av

    frames = 0
    start = time.perf_counter()
    for _ in range(streams):
        with av.open(str(clip.path)) as container:
            for frame in container.decode(video=0):
                detector.run([frame.to_ndarray(format="rgb24")])
                frames += 1
    return time.perf_counter() - start, frames


def runtime_run(detector: Any, clip: Clip, streams: int, max_batch: int, *, live: bool = False) -> dict[str, Any]:
    threads = 0 if streams * 2 <= (os.cpu_count() or 1) else 1
    sources = [open_source(str(clip.path), i, decode_threads=threads) for i in range(streams)]
    return StreamRuntime(detector, sources, max_batch=max_batch, live=live).run()


def decode_ms(clip: Clip) -> float:
    import av

    start = time.perf_counter()
    with av.open(str(clip.path)) as container:
        count = sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)
    return (time.perf_counter() - start) / count * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["ultralight-slim:auto:fp32", "ultralight-slim:openvino:int8", "retinaface-mnv2:auto:fp32"],
        help="model:backend:precision (default: the fastest model FP32 and INT8, the default model FP32)",
    )
    parser.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (25 fps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--live-seconds", type=float, default=8.0, help="length of the live check's clip")
    parser.add_argument("--live-repeats", type=int, default=3, help="live runs (their median drop rate counts)")
    parser.add_argument("--live-only", action="store_true", help="only the live check")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RETINASERVE_WEIGHTS_DIR", os.pathsep.join([str(SHARED / "weights")]))

    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    clips = {}
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        clips[size] = pan_clip(PHOTO, work / f"pan_{size}.mp4", size=(w, h), frames=args.frames, fps=25)
    decode = {size: statistics.median(decode_ms(clip) for _ in range(3)) for size, clip in clips.items()}

    rows: list[dict[str, Any]] = []
    calibration = sorted((SHARED / "images").glob("*.jpg"))
    for model, backend, precision in [] if args.live_only else variants(args.variants):
        detector = detector_for(
            model, backend=backend, precision=precision, calibration_photos=calibration if precision == "int8" else ()
        )
        name = f"{model} {detector.backend.name}"
        for size, clip in clips.items():
            runtime_run(detector, clip, 1, 4)  # warm up: compiled shapes, caches
            for streams in args.streams:
                batch = min(8, max(4, streams))
                samples: dict[str, list[float]] = {"sequential": [], "runtime b1": [], "runtime batched": []}
                infer: dict[str, list[float]] = {k: [] for k in samples}
                mean_batch: list[float] = []
                for _ in range(args.repeats):  # interleaved: each repeat runs all three
                    seconds, frames = sequential(detector, clip, streams)
                    samples["sequential"].append(frames / seconds)
                    for key, max_batch in (("runtime b1", 1), ("runtime batched", batch)):
                        summary = runtime_run(detector, clip, streams, max_batch)
                        samples[key].append(summary["fps"])
                        infer[key].append(summary["infer_ms_per_frame"] or 0.0)
                        if max_batch > 1:
                            mean_batch.append(summary["mean_batch"])
                base = statistics.median(samples["sequential"])
                for key, values in samples.items():
                    fps = statistics.median(values)
                    rows.append(
                        {
                            "variant": name,
                            "model": model,
                            "precision": precision,
                            "size": size,
                            "streams": streams,
                            "mode": key,
                            "fps_total": round(fps, 1),
                            "fps_per_stream": round(fps / streams, 1),
                            "speedup": round(fps / base, 2),
                            "infer_ms_per_frame": round(statistics.median(infer[key]), 1) if infer[key] else None,
                            "max_batch": batch if key == "runtime batched" else 1,
                            "mean_batch": round(statistics.median(mean_batch), 2) if key == "runtime batched" else 1.0,
                            "realtime_25fps_streams": int(fps // 25),
                            "samples": [round(v, 1) for v in values],
                        }
                    )
                print(
                    f"{name} {size} x{streams}: " + ", ".join(f"{r['mode']} {r['fps_total']}" for r in rows[-3:]),
                    file=sys.stderr,
                    flush=True,
                )

    # the live check: 2 streams of 640x360 played at 25 fps through the fastest model
    fastest = variants(args.variants)[0]
    detector = detector_for(fastest[0], backend=fastest[1], precision=fastest[2])
    live_clip = pan_clip(PHOTO, work / "live.mp4", size=(640, 360), frames=int(args.live_seconds * 25), fps=25)
    lives = [runtime_run(detector, live_clip, 2, 4, live=True) for _ in range(args.live_repeats)]
    rates = [
        sum(s["frames_dropped"] for s in run["streams"]) / max(1, sum(s["frames_decoded"] for s in run["streams"]))
        for run in lives
    ]
    live = lives[sorted(range(len(rates)), key=rates.__getitem__)[len(rates) // 2]]  # the median run
    dropped = sum(s["frames_dropped"] for s in live["streams"])
    decoded = sum(s["frames_decoded"] for s in live["streams"])

    header = (
        "variant",
        "size",
        "streams",
        "mode",
        "fps total",
        "fps/stream",
        "x sequential",
        "infer ms/frame",
        "mean batch",
        "streams @25",
    )
    table = [
        (
            r["variant"],
            r["size"],
            r["streams"],
            r["mode"],
            r["fps_total"],
            r["fps_per_stream"],
            r["speedup"],
            r["infer_ms_per_frame"] if r["infer_ms_per_frame"] is not None else "-",
            r["mean_batch"],
            r["realtime_25fps_streams"],
        )
        for r in rows
    ]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    print(f"\nmachine: {machine}; clips: {args.frames} frames of a pan over crowd_selfie.jpg (about 80 faces)")
    print("decode only (PyAV, one thread): " + ", ".join(f"{s} {v:.2f} ms/frame" for s, v in decode.items()))
    print(format_table(header, table))
    print(
        f"\nlive: 2 x 640x360 @ 25 fps, {detector.backend.name} {fastest[0]}: {live['frames_processed']} processed, "
        f"{dropped} of {decoded} dropped ({dropped / max(decoded, 1):.1%}), p50/p99 latency "
        + ", ".join(f"{s['latency_ms']['p50']}/{s['latency_ms']['p99']} ms" for s in live["streams"])
        + f" (the median of {len(lives)} runs; drop rates "
        + ", ".join(f"{r:.1%}" for r in rates)
        + ")"
    )
    goals = []
    fastest_name = rows[0]["variant"] if rows else ""
    goals.append(("2 streams of 640x360 at 25 fps live, < 1 % dropped (median run)", dropped / max(decoded, 1) < 0.01))
    for streams in args.streams:
        if streams < 2:
            continue
        best = max(
            (
                r
                for r in rows
                if r["variant"] == fastest_name
                and r["size"] == "640x360"
                and r["streams"] == streams
                and r["mode"] == "runtime batched"
            ),
            key=lambda r: r["speedup"],
            default=None,
        )
        if best:
            goals.append(
                (
                    f"batched runtime >= 1.3x sequential, {streams} streams 640x360 ({best['speedup']}x)",
                    best["speedup"] >= 1.3,
                )
            )
    for goal, ok in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {goal}")
    result = {
        "machine": machine,
        "decode_ms_per_frame": decode,
        "rows": rows,
        "live": live,
        "live_drop_rates": rates,
        "goals": [{"goal": g, "pass": ok} for g, ok in goals],
        "frames_per_clip": args.frames,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot and rows:
        plot(rows, args.plot)
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants_ = sorted({r["variant"] for r in rows})
    sizes = sorted({r["size"] for r in rows}, key=lambda s: int(s.split("x")[0]))
    fig, axes = plt.subplots(
        len(sizes), len(variants_), figsize=(4.2 * len(variants_), 3.4 * len(sizes)), squeeze=False, sharex=True
    )
    for i, size in enumerate(sizes):
        for j, variant in enumerate(variants_):
            ax = axes[i][j]
            for mode in sorted(
                {r["mode"] for r in rows if r["variant"] == variant}, key=lambda m: (m != "sequential", m)
            ):
                own = [r for r in rows if r["variant"] == variant and r["size"] == size and r["mode"] == mode]
                ax.plot([r["streams"] for r in own], [r["fps_total"] for r in own], marker="o", label=mode)
            ax.axhline(25, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{variant}\n{size}", fontsize=8)
            ax.set_xlabel("streams")
            ax.set_ylabel("frames/s, all streams")
            ax.set_xscale("log", base=2)
            counts = sorted({r["streams"] for r in rows})
            ax.set_xticks(counts, [str(c) for c in counts])
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
