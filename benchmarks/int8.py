"""OpenVINO FP32 vs INT8 vs INT8 with accuracy control: speed, parity on held-out photos, layers kept in FP32.

Calibration and held-out photos are disjoint: INT8 is calibrated on ``--calibration``; accuracy control measures,
and the table reports, parity with torch FP32 on the parity views (photo, mirror, half size) of ``--validation``.
Speed: median ms of interleaved forward passes (1x3xHxW), default threads. INT8 files are cached like the
engine's, so a second run only measures.

RETINASERVE_WEIGHTS_DIR=../shared/weights python benchmarks/int8.py --json out/int8.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from retinaserve import Detector, ResizePolicy
from retinaserve.engine import EngineConfig, create_backend
from retinaserve.engine.ov_backend import OpenVinoBackend, OpenVinoInt8Options, float_layers
from retinaserve.engine.parity import HeldOutAccuracy
from retinaserve.images import load_image
from retinaserve.tables import format_table

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def _interleaved_ms(backends: dict[str, Any], shape: tuple[int, ...], warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of one forward pass per backend, the backends taking turns so that machine noise hits all alike."""
    batch = torch.randn(shape)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for round_ in range(warmup + repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.release(backend.forward(batch))
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    base = EngineConfig(backend="openvino", precision="int8", calibration_photos=tuple(args.calibration))
    plain = OpenVinoInt8Options()
    configs = {
        "openvino fp32": replace(base, precision="fp32", calibration_photos=()),
        "openvino int8": replace(base, openvino_int8=plain),
        "openvino int8 acc-control": replace(
            base,
            openvino_int8=replace(plain, accuracy_control=True, max_drop=args.max_drop),
            validation_photos=tuple(args.validation),
        ),
    }
    size = (args.size, args.size)
    torch_fp32 = create_backend(model, EngineConfig(backend="torch-baseline"))
    reference = Detector(model, backend=torch_fp32, resize=ResizePolicy(det_size=size))
    held_out = HeldOutAccuracy(reference, [load_image(path) for path in args.validation])
    backends: dict[str, OpenVinoBackend] = {}
    build_s: dict[str, float] = {}
    for name, config in configs.items():
        start = time.perf_counter()
        backend = create_backend(model, config)
        assert isinstance(backend, OpenVinoBackend)
        backends[name] = backend
        build_s[name] = time.perf_counter() - start
    speed = _interleaved_ms(backends, (1, 3, size[1], size[0]), args.warmup, args.repeats)
    fp32_ms = speed["openvino fp32"]
    plain_fp32_layers = set(float_layers(backends["openvino int8"].model_path))
    rows = []
    for name, backend in backends.items():
        report = held_out.report(backend)
        fp32_layers = float_layers(backend.model_path)
        rows.append(
            {
                "model": model,
                "variant": name,
                "ms": speed[name],
                "speedup_vs_fp32": fp32_ms / speed[name],
                "metric": held_out.metric(report),
                "parity": report.to_dict(),
                "fp32_layers": len(fp32_layers),
                "reverted_layers": [layer for layer in fp32_layers if layer not in plain_fp32_layers]
                if backend.variant == "int8"
                else [],
                "build_s": build_s[name],
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["retinaface-mnv2", "retinaface-mnet025-edge"])
    parser.add_argument(
        "--calibration",
        nargs="+",
        type=Path,
        default=[SHARED_IMAGES / "six_people.jpg", SHARED_IMAGES / "grace_hopper.jpg"],
    )
    parser.add_argument(
        "--validation",
        nargs="+",
        type=Path,
        default=[SHARED_IMAGES / "crowd_selfie.jpg", SHARED_IMAGES / "astronaut.png"],
    )
    parser.add_argument("--max-drop", type=float, default=OpenVinoInt8Options.max_drop)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if set(args.calibration) & set(args.validation):
        parser.error("calibration and validation photos must differ: parity is reported on held-out photos")
    rows = [row for model in args.models for row in measure(model, args)]
    header = (
        "model",
        "variant",
        "ms",
        "x fp32",
        "AP",
        "matched",
        "lmk mean",
        "lmk max",
        "metric",
        "FP32 convs",
        "reverted",
    )
    print(
        format_table(
            header,
            [
                (
                    r["model"],
                    r["variant"],
                    f"{r['ms']:.1f}",
                    f"{r['speedup_vs_fp32']:.2f}",
                    f"{r['parity']['ap']:.4f}",
                    f"{r['parity']['matched']}/{r['parity']['reference_faces']}",
                    f"{r['parity']['mean_landmark_px']:.2f}",
                    f"{r['parity']['max_landmark_px']:.1f}",
                    f"{r['metric']:.4f}",
                    str(r["fp32_layers"]),
                    ", ".join(layer.removesuffix("/WithoutBiases") for layer in r["reverted_layers"]) or "-",
                )
                for r in rows
            ],
        )
    )
    print(
        f"held-out photos: {', '.join(p.name for p in args.validation)}; calibration: "
        f"{', '.join(p.name for p in args.calibration)}; {args.size}x{args.size}, median of {args.repeats}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"calibration": [str(p) for p in args.calibration], "validation": [str(p) for p in args.validation]}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
