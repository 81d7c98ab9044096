"""Exact decode + resize against a JPEG decoded at the DCT scale the network needs (decode="fast"), per photo.

    python benchmarks/decode.py --images ../shared/images --repeats 15 --json out/decode.json

For every JPEG in the folder and a generated 12 Mpx phone-size JPEG (4032x3024, quality 90, upscaled from the
last photo in name order), and for long side 640 and a 640x640 letterbox: the median time of decode + copy +
resize/normalise (the Detector's own stage timers, exact and fast runs interleaved) and of the whole call, and how
the detections differ (faces matched at IoU >= 0.5, largest box shift in original pixels, largest score change).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

from PIL import Image

from retinaserve import Detector, ResizePolicy
from retinaserve.detection import DecodeMode, Face
from retinaserve.engine.bench import machine_description
from retinaserve.engine.parity import match_faces
from retinaserve.images import load_image_reduced
from retinaserve.registry import DEFAULT_MODEL

PHONE_SIZE = (4032, 3024)
"""(width, height) of a 12 Mpx phone photo."""

MODES: tuple[DecodeMode, ...] = ("exact", "fast")

PREPARE_STAGES = ("decode", "copy", "preprocess")
"""The Detector stages before the network: what decode="fast" changes."""


def phone_photo(path: Path) -> bytes:
    """A 12 Mpx JPEG (quality 90) made by upscaling ``path``: the size of what phones upload."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize(PHONE_SIZE, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def compare(exact: list[Face], fast: list[Face]) -> dict[str, Any]:
    """How the fast decode's faces differ from the exact decode's: matched counts, box shift, score change."""
    pairs = match_faces(exact, fast)
    shifts = [max(abs(a - b) for a, b in zip(exact[i].box, fast[j].box)) for i, j in pairs]
    scores = [abs(exact[i].score - fast[j].score) for i, j in pairs]
    return {
        "faces_exact": len(exact),
        "faces_fast": len(fast),
        "matched": len(pairs),
        "max_box_shift_px": max(shifts, default=0.0),
        "median_box_shift_px": statistics.median(shifts) if shifts else 0.0,
        "max_score_diff": max(scores, default=0.0),
    }


def measure(
    detector: Detector, name: str, data: bytes, resize: ResizePolicy, warmup: int, repeats: int
) -> dict[str, Any]:
    """Interleaved exact and fast runs of one encoded photo; medians of the pre-network stages and of the call."""
    for _ in range(warmup):
        for mode in MODES:
            detector.run([data], resize=resize, decode=mode)
    prepare: dict[str, list[float]] = {"exact": [], "fast": []}
    total: dict[str, list[float]] = {"exact": [], "fast": []}
    faces: dict[str, list[Face]] = {}
    for _ in range(repeats):
        for mode in MODES:
            result = detector.run([data], resize=resize, decode=mode)[0]
            prepare[mode].append(sum(result.timings_ms[stage] for stage in PREPARE_STAGES))
            total[mode].append(result.timings_ms["total"])
            faces[mode] = result.faces
    reduced = load_image_reduced(data, resize.scaled_size)
    return {
        "image": name,
        "size": f"{reduced.width}x{reduced.height}",
        "resize": str(resize),
        "reduction": reduced.reduction,
        "prepare_exact_ms": statistics.median(prepare["exact"]),
        "prepare_fast_ms": statistics.median(prepare["fast"]),
        "total_exact_ms": statistics.median(total["exact"]),
        "total_fast_ms": statistics.median(total["fast"]),
        **compare(faces["exact"], faces["fast"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of photos (its JPEGs are used)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        parser.error(f"no JPEGs in {args.images}")
    photos = [(p.name, p.read_bytes()) for p in paths]
    photos.append((f"{paths[-1].stem} 12 Mpx", phone_photo(paths[-1])))
    detector = Detector(args.model)
    load_before = os.getloadavg()[0]
    policies = (ResizePolicy(long_side=640), ResizePolicy(det_size=(640, 640)))
    rows = [
        measure(detector, name, data, resize, args.warmup, args.repeats) for name, data in photos for resize in policies
    ]

    load = {"before": load_before, "after": os.getloadavg()[0]}
    print(f"machine: {machine_description()}; 1-min load average {load['before']:.1f} -> {load['after']:.1f}")
    print(f"model {detector.name}; threshold {detector.threshold}; {args.repeats} interleaved repeats; medians in ms")
    print("prepare = decode + copy + resize/normalise; shift = largest box coordinate difference, original px")
    header = ["image", "size", "resize", "1/r", "prepare exact", "prepare fast", "speed-up", "call exact", "call fast"]
    header += ["faces exact/fast/matched", "max shift px", "max score diff"]
    print(" | ".join(header))
    for r in rows:
        cells = [r["image"], r["size"], r["resize"], f"1/{r['reduction']}"]
        cells += [f"{r['prepare_exact_ms']:.1f}", f"{r['prepare_fast_ms']:.1f}"]
        cells += [f"{r['prepare_exact_ms'] / r['prepare_fast_ms']:.1f}x"]
        cells += [f"{r['total_exact_ms']:.1f}", f"{r['total_fast_ms']:.1f}"]
        cells += [f"{r['faces_exact']}/{r['faces_fast']}/{r['matched']}"]
        cells += [f"{r['max_box_shift_px']:.2f}", f"{r['max_score_diff']:.4f}"]
        print(" | ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"machine": machine_description(), "load_average": load, "model": detector.name, "rows": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
