"""Median time of ``nms`` against the loop it replaced, on a detector's real candidates and on random clustered boxes.

    python benchmarks/nms.py --repeats 7 --json benchmarks/out/nms.json

Real candidates: the edge model on the crowd photo at score > 0.02 (the original Pytorch_Retinaface protocol), every
candidate at long side 640, and the best K of those at long side 1280 (as the Detector's ``top_k`` would keep them).
Every repeat runs each implementation once, in turn; "same" says whether both kept exactly the same indices in the
same order. The original's NumPy ``py_cpu_nms`` (its +1-pixel IoU, so not the same boxes) is timed for reference.
Prints a table and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import retinaserve.detection.detector as detector_module
from retinaserve import ResizePolicy
from retinaserve.detection import Detector
from retinaserve.detection.backend import NetworkBackend
from retinaserve.detection.boxes import box_iou, nms
from retinaserve.engine.bench import machine_description
from retinaserve.registry import get_model_spec
from retinaserve.weights import load_network

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = "retinaface-mnet025-edge"
Candidates = tuple[str, torch.Tensor, torch.Tensor]
Implementation = Callable[[torch.Tensor, torch.Tensor, float], object]


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The implementation ``nms`` replaced: one torch step per kept box over the remaining candidates."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() <= 1:
        return order
    boxes = boxes[order]
    iou = box_iou(boxes, boxes) if boxes.shape[0] <= 4096 else None
    remaining = torch.arange(boxes.shape[0], device=boxes.device)
    keep = []
    while remaining.numel():
        best = remaining[0]
        keep.append(best)
        rest = remaining[1:]
        overlap = iou[best, rest] if iou is not None else box_iou(boxes[best : best + 1], boxes[rest])[0]
        remaining = rest[overlap <= iou_threshold]
    return order[torch.stack(keep)]


def py_cpu_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> np.ndarray:
    """The original Pytorch_Retinaface ``utils/nms/py_cpu_nms.py`` (pixel-inclusive IoU), from the same tensors."""
    dets, order = boxes.numpy(), scores.numpy().argsort()[::-1]
    x1, y1, x2, y2 = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= iou_threshold)[0] + 1]
    return np.array(keep)


def crowd_candidates(image: Path, weights: Path, long_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (K, 4) and scores (K,) exactly as the Detector hands them to ``nms`` at score > 0.02."""
    spec = get_model_spec(MODEL)
    backend = NetworkBackend(load_network(spec, weights), torch.device("cpu"))  # plain torch: nothing to tune
    detector = Detector(MODEL, backend=backend, threshold=0.02, resize=ResizePolicy(long_side=long_side))
    with mock.patch.object(detector_module, "nms", wraps=nms) as spy:
        detector.detect(image)
    boxes, scores = spy.call_args.args[:2]
    return boxes, scores


def clustered(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random boxes around count/20 face-like centres in a 1600x900 frame (4 to 200 px), uniform scores."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, [1600, 900], (max(1, count // 20), 2))
    sizes = rng.uniform(4, 200, len(centres))
    which = rng.integers(0, len(centres), count)
    middle = centres[which] + rng.normal(0, 0.15, (count, 2)) * sizes[which, None]
    half = sizes[which, None] * rng.uniform(0.35, 0.65, (count, 2))
    boxes = np.concatenate([middle - half, middle + half], 1).astype(np.float32)
    return torch.from_numpy(boxes), torch.from_numpy(rng.uniform(0, 1, count).astype(np.float32))


def best(boxes: torch.Tensor, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.argsort(scores, descending=True, stable=True)[:count]
    return boxes[top], scores[top]


def ms_per_call(run: Implementation, case: Candidates, iou_threshold: float, number: int) -> float:
    """Mean wall time of ``number`` back-to-back calls on one set of candidates."""
    _, boxes, scores = case
    start = time.perf_counter()
    for _ in range(number):
        run(boxes, scores, iou_threshold)
    return (time.perf_counter() - start) * 1e3 / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=SHARED / "images" / "crowd_selfie.jpg")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "mobilenet0.25_Final.pth")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000, 2500, 5000])
    parser.add_argument("--iou", type=float, default=0.4, help="NMS IoU threshold (the protocol's 0.4)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; each runs every implementation once")
    parser.add_argument("--min-ms", type=float, default=20.0, help="repeat fast calls within a round up to this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cases: list[Candidates] = [("crowd@640 all", *crowd_candidates(args.image, args.weights, 640))]
    at_1280 = crowd_candidates(args.image, args.weights, 1280)
    cases += [(f"crowd@1280 best {k}", *best(*at_1280, k)) for k in args.sizes if k <= len(at_1280[1])]
    cases += [("clustered", *clustered(k, args.seed + k)) for k in args.sizes]

    implementations: dict[str, Implementation] = {
        "loop": loop_nms,
        "py_cpu_nms": py_cpu_nms,
        "nms": nms,
    }
    rows = []
    for case in cases:
        name, boxes, scores = case
        old, new = loop_nms(boxes, scores, args.iou), nms(boxes, scores, args.iou)
        numbers = {  # calls per round, so that fast ones are not timed below the clock's resolution
            impl: max(1, int(args.min_ms / max(ms_per_call(run, case, args.iou, 1), 1e-3)))
            for impl, run in implementations.items()
        }
        times: dict[str, list[float]] = {impl: [] for impl in implementations}
        for _ in range(args.repeats):
            for impl, run in implementations.items():
                times[impl].append(ms_per_call(run, case, args.iou, numbers[impl]))
        row = {
            "candidates": name,
            "k": len(scores),
            "kept": len(new),
            "iou_threshold": args.iou,
            **{f"{impl}_ms": statistics.median(values) for impl, values in times.items()},
            "same": torch.equal(old, new),
        }
        row["speedup"] = row["loop_ms"] / row["nms_ms"]
        rows.append(row)

    print(f"machine: {machine_description()}")
    print(f"IoU > {args.iou}; medians of {args.repeats} interleaved rounds, ms per call")
    print(" | ".join(["candidates", "K", "kept", "old loop", "py_cpu_nms", "new nms", "speed-up", "same"]))
    for r in rows:
        cells = [r["candidates"], str(r["k"]), str(r["kept"]), f"{r['loop_ms']:.3f}", f"{r['py_cpu_nms_ms']:.3f}"]
        cells += [f"{r['nms_ms']:.3f}", f"{r['speedup']:.1f}x", "yes" if r["same"] else "NO"]
        print(" | ".join(cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        args.json.write_text(json.dumps({"machine": machine_description(), "config": config, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
