"""``retinaserve eval faces``: box AP and landmark NME on any annotated folder, models x engine variants side by side.

Thin: parses arguments, builds each detector as ``retinaserve detect`` does, and hands them to
:func:`retinaserve.evaluation.faces.evaluate_faces`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import iou_threshold, resize_policy, score_threshold
from ..errors import InvalidImageError, RetinaServeError
from ..tables import format_table
from .annotations import AnnotatedImage, AnnotationError

if TYPE_CHECKING:
    from ..detection import Detector, ResizePolicy
    from .faces import FaceEvalRow

__all__ = ["BACKENDS", "PRECISIONS", "FaceVariantFailure", "add_faces_parser", "build_detector", "cmd_faces"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "onnx", "torch", "torch-baseline")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")
REQUIRED_KEYS = ("model", "variant", "ap", "precision", "recall", "nme_mean", "nme_median", "faces", "matched")


@dataclass(frozen=True)
class FaceVariantFailure:
    """A model/variant that could not be built or run here, and why (a row of its own; the others go on)."""

    model: str
    variant: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**dict.fromkeys(REQUIRED_KEYS), "model": self.model, "variant": self.variant, "error": self.reason}


def _variant(text: str) -> str:
    backend, sep, precision = text.strip().partition("/")
    if not sep or backend not in BACKENDS or precision not in PRECISIONS:
        raise argparse.ArgumentTypeError(
            f"expected backend/precision with backend in {', '.join(BACKENDS)} and precision in "
            f"{', '.join(PRECISIONS)}, e.g. onnx/fp32; got {text!r}"
        )
    return f"{backend}/{precision}"


def _variants(text: str) -> list[str]:
    return [_variant(part) for part in text.split(",") if part.strip()]


def _models(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_faces_parser(protocols: Any) -> None:
    """Adds ``faces`` to the ``eval`` protocols (an argparse subparsers object)."""
    from ..registry import DEFAULT_MODEL

    parser: argparse.ArgumentParser = protocols.add_parser(
        "faces",
        help="box AP and 5-point landmark NME on any annotated folder (COCO-style JSON or iBUG .pts)",
        description=(
            "Box AP (VOC all-point, over every detection at score > 0.02) and precision, recall and landmark NME "
            "(mean 5-point error over the inter-ocular distance) at each model's default threshold, for several "
            "models and engine variants side by side."
        ),
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="COCO-style JSON (bbox, optional 5 or 68 keypoints, iscrowd/ignore), a .pts file or a folder of "
        ".pts files (68 iBUG points; the box is the points' bounding box, tighter than a detector's: see --iou)",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder the annotations' image paths are under")
    parser.add_argument(
        "--models", type=_models, default=[DEFAULT_MODEL], help=f"comma-separated model names (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--variants",
        type=_variants,
        default=["auto/fp32"],
        help="comma-separated backend/precision, e.g. openvino/fp32,onnx/fp16,openvino/int8,torch-baseline/fp32 "
        "(default auto/fp32); int8 calibrates on the evaluated images, which flatters it",
    )
    parser.add_argument(
        "--iou", type=iou_threshold, default=0.5, help="IoU for a detection to hit a face (default 0.5; lower for .pts)"
    )
    parser.add_argument(
        "--threshold",
        type=score_threshold,
        help="score threshold for precision, recall and NME (default: each model's)",
    )
    parser.add_argument(
        "--resize", type=resize_policy, help="original, N (long side) or WxH (letterbox); default: each model's own"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", type=Path, help='write {"rows": [...]} with every metric and the CED curves')
    parser.add_argument("--plot", type=Path, help="write the landmark CED curves (one line per model/variant) as PNG")
    parser.add_argument(
        "--download", action="store_true", help="download missing weights (verified); the default model always may"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_faces)


def build_detector(
    model: str,
    variant: str,
    *,
    calibration: Sequence[Path] = (),
    resize: ResizePolicy | None = None,
    device: str = "cpu",
    download: bool | None = None,
) -> Detector:
    """A Detector for ``model`` on ``variant`` (``backend/precision``), built as ``retinaserve detect`` builds it
    (INT8 calibrated on ``calibration``)."""
    from ..engine.factory import detector_for

    backend, precision = variant.split("/")
    return detector_for(
        model,
        backend=backend,
        precision=precision,
        device=device,
        calibration_photos=calibration,
        download=download,
        resize=resize,
    )


def cmd_faces(args: argparse.Namespace) -> int:
    from ..registry import get_model_spec
    from .annotations import load_annotations
    from .faces import evaluate_faces

    for model in args.models:
        get_model_spec(model)  # an unknown name stops here, before anything is built
    images = load_annotations(args.annotations, args.images)
    if not images:
        print(f"error: {args.annotations} annotates no images", file=sys.stderr)
        return 2
    download = True if args.download else None
    rows: list[FaceEvalRow | FaceVariantFailure] = []
    notes: dict[int, str] = {}
    for model in args.models:
        for variant in args.variants:
            try:
                detector = build_detector(
                    model,
                    variant,
                    calibration=[image.path for image in images],
                    resize=args.resize,
                    device=args.device,
                    download=download,
                )
                row = evaluate_faces(
                    images,
                    detector,
                    iou=args.iou,
                    threshold=args.threshold,
                    variant=variant,
                    progress=not args.quiet and len(images) > 1,
                )
            except (AnnotationError, InvalidImageError):
                raise  # the data set's fault: no variant can do better
            except (RetinaServeError, ImportError, RuntimeError, ValueError) as exc:
                log.info("%s %s not evaluated: %s", model, variant, exc)  # the table says so
                rows.append(FaceVariantFailure(model, variant, str(exc)))
                continue
            if variant.startswith("auto/") or variant.endswith("/auto"):
                profile = detector.engine_profile
                notes[len(rows)] = f"ran {profile.variant}" if profile is not None else f"ran {detector.backend.name}"
            rows.append(row)
            del detector
    print(_summary(images, args.iou))
    print(_table(rows, notes, args.iou))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "annotations": str(args.annotations),
            "images_dir": str(args.images),
            "images": len(images),
            "iou": args.iou,
            "rows": [row.to_dict() for row in rows],
        }
        args.json.write_text(json.dumps(payload, indent=1))
    if args.plot:
        _plot(args.plot, [row for row in rows if not isinstance(row, FaceVariantFailure)])
    return 1 if any(isinstance(row, FaceVariantFailure) for row in rows) else 0


def _summary(images: Sequence[AnnotatedImage], iou: float) -> str:
    from .faces import AP_THRESHOLD

    faces = sum(image.faces for image in images)
    ignored = sum(int(image.ignore.sum()) for image in images)
    counts = {image.points.shape[1] for image in images if image.points is not None}
    if not counts:
        landmarks = "no landmark ground truth"
    elif counts == {68}:
        landmarks = "NME over 5 points derived from 68, in % of the outer-eye-corner distance (300-W)"
    else:
        landmarks = "NME in % of the distance between the eye centres (inter-pupil)"
    return (
        f"{len(images)} images, {faces - ignored} faces (+{ignored} ignored); AP@{iou:g}: VOC all-point over every "
        f"detection at score > {AP_THRESHOLD}; precision, recall and landmarks at threshold 'thr'; {landmarks}"
    )


def _table(rows: Sequence[FaceEvalRow | FaceVariantFailure], notes: dict[int, str], iou: float) -> str:
    header: tuple[str, ...] = (
        "model",
        "variant",
        "thr",
        f"AP@{iou:g}",
        "precision",
        "recall",
        "NME mean %",
        "NME median %",
        "px",
    )
    header += ("AUC@0.08", "failures", "faces", "matched", "note")
    body: list[tuple[object, ...]] = []
    for index, row in enumerate(rows):
        if isinstance(row, FaceVariantFailure):
            body.append((row.model, row.variant, *["-"] * 11, f"not run: {row.reason}"))
            continue
        body.append(
            (
                row.model,
                row.variant,
                f"{row.threshold:g}",
                _number(row.ap, "{:.3f}"),
                _number(row.precision, "{:.3f}"),
                _number(row.recall, "{:.3f}"),
                _number(row.nme_mean * 100, "{:.2f}"),
                _number(row.nme_median * 100, "{:.2f}"),
                _number(row.nme_px, "{:.2f}"),
                _number(row.auc_08, "{:.3f}"),
                _number(row.failure_rate * 100, "{:.1f}%"),
                row.faces,
                row.matched,
                notes.get(index, ""),
            )
        )
    return format_table(header, body)


def _number(value: float, style: str) -> str:
    return "-" if math.isnan(value) else style.format(value)


def _plot(path: Path, rows: Sequence[FaceEvalRow]) -> None:
    from .faces import NME_LIMIT
    from .plots import MatplotlibMissing, save_curves

    series = {f"{row.model} {row.variant}": (row.ced_x, row.ced_y) for row in rows if row.landmark_faces}
    if not series:
        print("no matched face has landmark ground truth: no CED curves to plot", file=sys.stderr)
        return
    panels = {"Landmarks: cumulative error distribution": series}
    try:
        save_curves(
            path,
            panels,
            xlabel="NME (fraction of the inter-ocular distance)",
            ylabel="fraction of faces",
            xlim=(0.0, NME_LIMIT),
            ylim=(0.0, 1.0),
        )
    except MatplotlibMissing as exc:
        fallback = path.with_suffix(".json")
        curves = {label: {"x": list(map(float, x)), "y": list(map(float, y))} for label, (x, y) in series.items()}
        fallback.write_text(json.dumps(curves))
        print(f"{exc}; the curves are in {fallback}", file=sys.stderr)
        return
    print(f"CED curves in {path}")
