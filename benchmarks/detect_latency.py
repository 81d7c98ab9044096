"""Median end-to-end latency per image of each model with available weights (decode -> faces), per stage.

    python benchmarks/detect_latency.py --images ../shared/images --long-side 640 --repeats 20 --json out/latency.json
    python benchmarks/detect_latency.py --images ../shared/images --device cuda --json out/latency_cuda.json

Prints a table (median ms per stage and total, images/s) and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from retinaserve import Detector, ResizePolicy, RetinaServeError, list_models
from retinaserve.engine.bench import machine_description
from retinaserve.images import IMAGE_SUFFIXES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of photos")
    parser.add_argument("--models", nargs="*", help="default: every model whose weights resolve")
    parser.add_argument("--long-side", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [p.read_bytes() for p in paths]
    rows = []
    for name in args.models or list_models():
        try:
            detector = Detector(name, resize=ResizePolicy(long_side=args.long_side), device=args.device)
        except RetinaServeError as exc:
            print(f"skip {name}: {exc}")
            continue
        for _ in range(args.warmup):
            detector.run(images)
        stages: dict[str, list[float]] = {}
        walls = []
        for _ in range(args.repeats):
            for image in images:
                start = time.perf_counter()
                result = detector.run([image])[0]
                walls.append((time.perf_counter() - start) * 1e3)
                for stage, ms in result.timings_ms.items():
                    stages.setdefault(stage, []).append(ms)
        row = {
            "model": name,
            "device": str(detector.device),
            "backend": detector.backend.name,
            "long_side": args.long_side,
            "images": [p.name for p in paths],
            "p50_ms": statistics.median(walls),
            "p90_ms": statistics.quantiles(walls, n=10)[-1],
            **{f"{stage}_p50_ms": statistics.median(values) for stage, values in stages.items()},
        }
        row["images_per_s"] = 1e3 / row["p50_ms"]
        rows.append(row)

    print(f"machine: {machine_description()}")
    print(f"long side {args.long_side}; {len(paths)} photos x {args.repeats} repeats; medians in ms")
    stage_names = ("decode", "copy", "preprocess", "forward", "postprocess")
    print(" | ".join(["model", "backend", *stage_names, "p50 total", "p90 total", "img/s"]))
    for r in rows:
        cells = [r["model"], f"{r['backend']} ({r['device']})"]
        cells += [f"{r.get(f'{stage}_p50_ms', float('nan')):.1f}" for stage in stage_names]
        cells += [f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['images_per_s']:.1f}"]
        print(" | ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_description(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
