"""Each model's default score threshold and resize policy, chosen from precision/recall and landmark-error sweeps
over every annotated photo available (tests/data/faces: the four shared photos, hand-annotated).

    python benchmarks/thresholds.py --json benchmarks/out/thresholds.json --plot benchmarks/out/thresholds.png

Every model runs once per photo and policy at score > 0.02 (the reference runtime, exact JPEG decode); the
thresholds 0.05 ... 0.95 are then applied to those detections (NMS and matching go best score first, so this is
what a run at each threshold gives). Reported per model: AP at IoU 0.5, and at each threshold precision, recall,
F1 and the landmark NME of the matched faces. The threshold picked is the highest whose macro F1 (the mean of the
photos' F1, each photo weighing the same) is within 0.01 of the best. "Small photos": the annotated portraits
scaled down so that their long side is 240 and 400 px (annotations scaled alike), run at the long side 640
(upscaled) and at their own size, to decide whether a model should upscale. Prints tables and writes JSON (and a
PNG of the curves). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from retinaserve import ResizePolicy
from retinaserve.detection import Detector
from retinaserve.evaluation.annotations import AnnotatedImage, load_annotations
from retinaserve.evaluation.faces import ImageDetections
from retinaserve.evaluation.thresholds import THRESHOLDS, f1, macro_f1, pick_threshold
from retinaserve.evaluation.thresholds import sweep as threshold_sweep
from retinaserve.registry import get_model_spec
from retinaserve.tables import format_table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = ("retinaface-mnv2", "retinaface-mnet025-edge", "ultralight-slim", "ultralight-rfb")
SMALL_SIDES = (240, 400)


def small_copies(images: list[AnnotatedImage], out_dir: Path) -> list[AnnotatedImage]:
    """The photos whose every counted face has landmarks (the portraits), scaled down (LANCZOS) to each long side
    in SMALL_SIDES."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for image in images:
        if image.points is None or np.isnan(image.points[~image.ignore]).any():
            continue
        photo = Image.open(image.path).convert("RGB")
        for side in SMALL_SIDES:
            scale = side / max(photo.size)
            size = (round(photo.width * scale), round(photo.height * scale))
            path = out_dir / f"{image.path.stem}-{side}.png"
            photo.resize(size, Image.Resampling.LANCZOS).save(path)
            sx, sy = size[0] / photo.width, size[1] / photo.height
            points = image.points * [sx, sy]
            copies.append(replace(image, path=path, boxes=image.boxes * [sx, sy, sx, sy], points=points))
    return copies


def detect(detector: Detector, images: list[AnnotatedImage], resize: ResizePolicy) -> list[ImageDetections]:
    """One run per image at score > 0.02."""
    return [
        ImageDetections.from_faces(detector.run([image.path], threshold=0.02, resize=resize, decode="exact")[0].faces)
        for image in images
    ]


def sweep(images: list[AnnotatedImage], found: list[ImageDetections], resize: ResizePolicy) -> dict:
    """Every threshold applied to detections made once: AP, and precision / recall / F1 / NME per threshold."""
    rows = threshold_sweep(images, found)
    return {
        "ap": rows[0].ap,
        "resize": str(resize),
        "rows": rows,
        "by_threshold": [
            {
                "threshold": row.threshold,
                "precision": row.precision,
                "recall": row.recall,
                "f1": f1(row),
                "nme": row.nme_mean,
                "nme_px": row.nme_px,
                "matched": row.matched,
                "faces": row.faces,
            }
            for row in rows
        ],
    }


def at(by_threshold: list[dict], threshold: float) -> dict:
    return min(by_threshold, key=lambda r: abs(r["threshold"] - threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=Path, default=ROOT / "tests/data/faces/shared_photos.json")
    parser.add_argument("--images", type=Path, default=SHARED / "images")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/out/small_photos")
    args = parser.parse_args()
    os.environ.setdefault("RETINASERVE_WEIGHTS_DIR", str(SHARED / "weights"))
    images = load_annotations(args.annotations, args.images)
    small = small_copies(images, args.work)
    results: dict = {"photos": {i.path.name: int((~i.ignore).sum()) for i in images}, "models": {}}
    summary, small_rows, photo_rows = [], [], []
    for model in args.models.split(","):
        spec = get_model_spec(model)
        detector = Detector(model, backend="torch-baseline", decode="exact")
        default = ResizePolicy(long_side=spec.default_long_side)
        found = detect(detector, images, default)  # once per photo: the folder and each photo are scored on it
        everything = sweep(images, found, default)
        photos = {image.path.name: sweep([image], [one], default) for image, one in zip(images, found)}
        macro = macro_f1([result.pop("rows") for result in photos.values()]).tolist()
        picked = THRESHOLDS.index(pick_threshold(np.array(macro)))
        everything.pop("rows")
        chosen = everything["by_threshold"][picked]
        current = at(everything["by_threshold"], spec.default_threshold)
        upscaled = sweep(small, detect(detector, small, ResizePolicy(long_side=640)), ResizePolicy(long_side=640))
        own_size = sweep(small, detect(detector, small, ResizePolicy()), ResizePolicy())
        for result in (upscaled, own_size):
            result.pop("rows")
        results["models"][model] = {
            "all_photos": everything,
            "per_photo": photos,
            "macro_f1": dict(zip(THRESHOLDS, macro)),
            "small_upscaled_to_640": upscaled,
            "small_own_size": own_size,
            "registry_threshold": spec.default_threshold,
            "picked": chosen | {"macro_f1": macro[picked]},
        }
        summary.append(
            (
                model,
                f"{everything['ap']:.3f}",
                f"{spec.default_threshold:.2f}",
                f"{current['precision']:.3f}/{current['recall']:.3f}",
                f"{macro[everything['by_threshold'].index(current)]:.3f}",
                f"{chosen['threshold']:.2f}",
                f"{chosen['precision']:.3f}/{chosen['recall']:.3f}",
                f"{macro[picked]:.3f}",
                f"{100 * chosen['nme']:.2f}",
            )
        )
        for name, result in photos.items():
            row = at(result["by_threshold"], chosen["threshold"])
            photo_rows.append(
                (
                    model,
                    name,
                    f"{result['ap']:.3f}",
                    f"{row['precision']:.3f}",
                    f"{row['recall']:.3f}",
                    f"{row['matched']}/{row['faces']}",
                    f"{100 * row['nme']:.2f}",
                )
            )
        for label, result in (("upscaled to 640", upscaled), ("own size", own_size)):
            row = at(result["by_threshold"], chosen["threshold"])
            small_rows.append(
                (
                    model,
                    label,
                    f"{result['ap']:.3f}",
                    f"{row['recall']:.3f}",
                    f"{row['matched']}/{row['faces']}",
                    f"{100 * row['nme']:.2f}",
                    f"{row['nme_px']:.2f}",
                )
            )
    print(f"\nAll annotated photos ({sum(results['photos'].values())} counted faces), long side per the registry")
    header = (
        "model",
        "AP@0.5",
        "registry thr",
        "P/R there",
        "macro F1",
        "picked thr",
        "P/R there",
        "macro F1",
        "NME %",
    )
    print(format_table(header, summary))
    print("\nPer photo at the picked threshold")
    print(format_table(("model", "photo", "AP@0.5", "precision", "recall", "matched", "NME %"), photo_rows))
    print(f"\nThe portraits made small (long side {SMALL_SIDES}), at the picked threshold")
    print(format_table(("model", "resize", "AP@0.5", "recall", "matched", "NME %", "NME px"), small_rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    if args.plot:
        from retinaserve.evaluation.plots import save_curves

        panels = {
            "precision / recall by threshold": {
                m: (
                    [r["recall"] for r in v["all_photos"]["by_threshold"]],
                    [r["precision"] for r in v["all_photos"]["by_threshold"]],
                )
                for m, v in results["models"].items()
            }
        }
        save_curves(args.plot, panels, xlabel="recall", ylabel="precision")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
