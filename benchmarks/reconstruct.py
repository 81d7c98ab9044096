"""Per-stage latency and peak memory of 3D reconstruction: each model and backend, one-face and six-face photos,
faces batched through the mesh network or one at a time.

    python benchmarks/reconstruct.py --photos ../shared/images/astronaut.png ../shared/images/six_people.jpg \
        --models facemesh-468 3ddfa-v2-mb05 --variants torch/fp32 onnx/fp32 onnx/int8 --repeats 10 \
        --json out/bench_reconstruct.json

Each (model, variant) runs in its own process, so that its peak RSS is its own; inside it, photos and the
batching modes are interleaved round by round. Stages: detect (decode + detector), crop, geometry (mesh network
and decoding to image pixels), texture (UV bake), export (GLB bytes), total. The last column is the accuracy cost:
the worst face's mean 68-point shift against torch FP32 of the same model, in inter-ocular distances. Prints a
table of medians; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("detect", "crop", "geometry", "texture", "export")


def _inter_ocular(mesh: Any) -> float:
    """The detector's eye distance for a mesh (the unit of landmark shifts)."""
    (lx, ly), (rx, ry) = mesh.face.landmarks.left_eye, mesh.face.landmarks.right_eye
    return float(((rx - lx) ** 2 + (ry - ly) ** 2) ** 0.5)


def _shift_vs_reference(rows: list[dict[str, Any]]) -> None:
    """Add to each row the mean 68-point shift per face against torch/fp32 of the same model and photo, in
    inter-ocular distances (the accuracy cost of a backend/precision, next to its speed)."""
    import numpy as np

    reference = {(r["model"], r["photo"]): r for r in rows if r["variant"] == "torch/fp32" and r["batch_faces"]}
    for row in rows:
        base = reference.get((row["model"], row["photo"]))
        if base is None or len(base["landmarks_68"]) != len(row["landmarks_68"]):
            row["shift_vs_fp32_iod"] = None
            continue
        shifts = [
            float(np.linalg.norm(np.subtract(a, b), axis=1).mean() / iod)
            for (a, iod), (b, _) in zip(base["landmarks_68"], row["landmarks_68"])
        ]
        row["shift_vs_fp32_iod"] = max(shifts) if shifts else 0.0


def _worker(args: argparse.Namespace) -> None:
    """Run one (model, variant): print one JSON line of rows."""
    import torch

    from retinaserve import Detector, Reconstructor
    from retinaserve.engine import EngineConfig, create_detector
    from retinaserve.engine.factory import photos_in
    from retinaserve.reconstruction.export import glb_bytes

    backend, precision = args.worker_variant.split("/")
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.detector_backend == "torch":
        detector = Detector(args.detector)
    else:
        detector = create_detector(args.detector, EngineConfig(backend=args.detector_backend))
    engine = None
    if (backend, precision) != ("torch", "fp32"):
        calibration = photos_in([args.calibration]) if precision == "int8" else ()
        engine = EngineConfig(backend=backend, precision=precision, device="cpu", calibration_photos=calibration)
    reconstructor = Reconstructor(args.worker_model, detector=detector, engine=engine, download=False)
    images = {Path(p).name: Path(p).read_bytes() for p in args.photos}
    samples: dict[tuple[str, int], dict[str, list[float]]] = {}
    faces: dict[str, int] = {}
    points: dict[str, list[tuple[list[list[float]], float]]] = {}
    for round_index in range(args.warmup + args.repeats):
        for name, data in images.items():
            for batch in (16, 1):
                reconstructor.batch_size = batch
                start = time.perf_counter()
                result = reconstructor.run([data])[0]
                t0 = time.perf_counter()
                for mesh in result.meshes:
                    glb_bytes(mesh.to_trimesh())
                export_ms = (time.perf_counter() - t0) * 1e3
                wall = (time.perf_counter() - start) * 1e3
                if round_index < args.warmup:
                    continue
                faces[name] = len(result.meshes)
                points[name] = [(m.landmarks_68[:, :2].tolist(), _inter_ocular(m)) for m in result.meshes]
                record = samples.setdefault((name, batch), {})
                for stage in ("detect", "crop", "geometry", "texture"):
                    record.setdefault(stage, []).append(result.timings_ms[stage])
                record.setdefault("export", []).append(export_ms)
                record.setdefault("total", []).append(wall)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for (name, batch), record in samples.items():
        row: dict[str, Any] = {
            "model": args.worker_model,
            "variant": args.worker_variant,
            "backend": reconstructor.backend.name,
            "detector": f"{args.detector} ({detector.backend.name})",
            "photo": name,
            "faces": faces[name],
            "batch_faces": batch > 1,
            **{f"{k}_p50_ms": statistics.median(v) for k, v in record.items()},
        }
        per_face = [g + t + e for g, t, e in zip(record["geometry"], record["texture"], record["export"])]
        row["after_detect_per_face_p50_ms"] = statistics.median(per_face) / max(faces[name], 1)
        row["peak_rss_mb"] = peak
        row["landmarks_68"] = points[name]
        row["rss_before_load_mb"] = baseline_rss
        row["torch_threads"] = torch.get_num_threads()
        rows.append(row)
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=["facemesh-468", "3ddfa-v2-mb05"])
    parser.add_argument("--variants", nargs="+", default=["torch/fp32", "onnx/fp32", "onnx/int8"])
    parser.add_argument("--detector", default="retinaface-mnv2")
    parser.add_argument("--detector-backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--calibration", default="../shared/images", help="photos for INT8 calibration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker-model", help=argparse.SUPPRESS)
    parser.add_argument("--worker-variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_model:
        _worker(args)
        return

    from retinaserve.engine.bench import machine_description
    from retinaserve.tables import format_table

    rows: list[dict[str, Any]] = []
    for model in args.models:
        for variant in args.variants:
            command = [sys.executable, __file__, "--worker-model", model, "--worker-variant", variant]
            command += ["--photos", *args.photos, "--detector", args.detector]
            command += ["--detector-backend", args.detector_backend, "--calibration", args.calibration]
            command += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            print(f"running {model} {variant} ...", file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
            if done.returncode != 0:
                print(f"  failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
    _shift_vs_reference(rows)
    header = ("model", "variant", "photo", "faces", "batched", *STAGES, "total", "per face after detect", "peak RSS")
    header += ("68-pt shift vs fp32",)
    table = [
        (
            r["model"], r["variant"], r["photo"], r["faces"], "yes" if r["batch_faces"] else "no",
            *(f"{r[f'{s}_p50_ms']:.1f}" for s in STAGES), f"{r['total_p50_ms']:.1f}",
            f"{r['after_detect_per_face_p50_ms']:.1f}", f"{r['peak_rss_mb']:.0f} MB",
            "-" if r["shift_vs_fp32_iod"] is None else f"{r['shift_vs_fp32_iod']:.4f} IOD",
        )
        for r in rows
    ]  # fmt: skip
    machine = machine_description()
    print(f"machine: {machine}")
    print("median ms per call (whole photo), peak RSS of the process")
    print(format_table(header, table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
