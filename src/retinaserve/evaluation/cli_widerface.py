"""``retinaserve eval widerface``: the official WIDER FACE val AP of a model (or of a prediction folder), next to
the AP its authors report.

Thin: parses arguments, builds the detector as ``retinaserve detect`` does, and calls
:mod:`retinaserve.evaluation.widerface`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import resize_policy
from ..tables import format_table
from .widerface import GT_FILES, SETTINGS, WIDER_NMS, WIDER_THRESHOLD

if TYPE_CHECKING:
    from ..detection import Detector, ResizePolicy
    from ..registry import ModelSpec

__all__ = ["add_widerface_parser", "cmd_widerface", "protocol_resize", "wider_cache_dir"]

BACKENDS = ("auto", "openvino", "onnx", "torch", "torch-baseline")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")
WIDER_TOP_K = 5000
"""Candidates kept before NMS: the ``--top_k`` default of the original ``test_widerface.py``."""


def add_widerface_parser(protocols: Any) -> None:
    """Adds ``widerface`` to the ``eval`` protocols (an argparse subparsers object)."""
    from ..registry import DEFAULT_MODEL

    parser: argparse.ArgumentParser = protocols.add_parser(
        "widerface",
        help="AP on WIDER FACE val (Easy/Medium/Hard), the official protocol, next to the AP the authors report",
        description=(
            "Runs a model over the WIDER FACE val images (--images) into official prediction files, or reads "
            "existing ones (--predictions), and scores them with the official evaluation (reimplemented): AP per "
            f"setting and PR curves. The model runs at score > {WIDER_THRESHOLD}, NMS {WIDER_NMS}, as the original "
            "test_widerface.py does."
        ),
    )
    parser.add_argument("--images", type=Path, help="WIDER_val/images (folders per event): run the model on them")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="prediction folder (<event>/<image>.txt): read it; with --images, write there (default: a cache "
        "folder per model, engine variant and resize; images already predicted are skipped)",
    )
    parser.add_argument(
        "--gt",
        type=Path,
        help=f"folder with {', '.join(GT_FILES)} (default: looked for next to --images)",
    )
    parser.add_argument(
        "--model",
        help=f"registered model to run (default {DEFAULT_MODEL}); with --predictions only, names the model whose "
        "reported AP to show",
    )
    parser.add_argument("--weights", type=Path, help="weights file (default: resolved from env var and cache)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="what runs the network (default auto: the fastest exact)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="numeric precision (default fp32)")
    parser.add_argument(
        "--calibration", nargs="+", type=Path, help="photos or folders to calibrate INT8 on (not the val images)"
    )
    parser.add_argument(
        "--resize",
        type=resize_policy,
        help="original, N (long side) or WxH (letterbox); default: the protocol the model's reported AP used",
    )
    parser.add_argument("--out", type=Path, default=Path("wider_eval"), help="folder for the PNG and JSON")
    parser.add_argument("--json", type=Path, help="write the JSON here instead of <out>/widerface.json")
    parser.add_argument(
        "--download", action="store_true", help="download missing weights (verified); the default model always may"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_widerface)


def protocol_resize(spec: ModelSpec) -> ResizePolicy:
    """How images were sized when ``spec``'s reported AP was measured, so that our number compares to theirs;
    the model's own default where it reports none, or where its protocol names no size we understand."""
    from ..detection import ResizePolicy

    protocol = spec.accuracy.protocol.lower() if spec.accuracy else ""
    if "original" in protocol:
        return ResizePolicy()
    if match := re.search(r"long side (\d+)", protocol):
        return ResizePolicy(long_side=int(match[1]))
    return ResizePolicy(long_side=spec.default_long_side)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def _resize_key(resize: ResizePolicy) -> str:
    if resize.long_side is not None:
        return f"long{resize.long_side}"
    if resize.det_size is not None:
        return f"{resize.det_size[0]}x{resize.det_size[1]}"
    return "original"


def wider_cache_dir(model: str, variant: str, resize: ResizePolicy, weights: Path | None = None) -> Path:
    """``<retinaserve cache>/widerface/<model>/<variant>/<resize>``: where predictions are kept between runs.

    ``variant`` is the backend that ran (its name, e.g. ``openvino-fp32 CPU``); an explicit weights file adds a
    key of its path, so that two checkpoints of one model never share predictions.
    """
    from ..weights import cache_dir

    folder = cache_dir() / "widerface" / model / _slug(variant) / _resize_key(resize)
    if weights is not None:
        digest = hashlib.sha256(str(Path(weights).resolve()).encode()).hexdigest()[:10]
        folder = folder.with_name(f"{folder.name}-weights-{digest}")
    return folder


def _build_detector(args: argparse.Namespace, model: str, resize: ResizePolicy) -> Detector:
    """As ``retinaserve detect`` builds it, at the original test_widerface.py's threshold and NMS."""
    from ..engine.factory import detector_for, photos_in

    if args.precision == "int8" and not args.calibration:
        raise ValueError("INT8 needs --calibration photos (not the WIDER val images it is scored on)")
    return detector_for(
        model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        weights=args.weights,
        calibration_photos=photos_in(args.calibration) if args.precision == "int8" else (),
        download=True if args.download else None,
        threshold=WIDER_THRESHOLD,
        nms_threshold=WIDER_NMS,
        resize=resize,
        top_k=WIDER_TOP_K,
        decode="exact",
    )


def _ground_truth_dir(args: argparse.Namespace) -> Path:
    from .widerface import find_wider_ground_truth

    if args.gt is not None:
        return Path(args.gt)
    if args.images is not None and (found := find_wider_ground_truth(args.images)) is not None:
        return found
    where = f"next to {args.images}" if args.images is not None else "without --images"
    raise ValueError(
        f"WIDER FACE ground truth not found {where}: pass --gt with the folder holding {', '.join(GT_FILES)} "
        "(the official evaluation's ground_truth folder)"
    )


def cmd_widerface(args: argparse.Namespace) -> int:
    from ..registry import DEFAULT_MODEL, get_model_spec
    from .plots import MatplotlibMissing, save_curves
    from .widerface import evaluate_wider, load_wider_ground_truth, predict_wider, read_wider_predictions

    if args.images is None and args.predictions is None:
        raise ValueError("give --images (run a model on WIDER val) or --predictions (score an existing folder)")
    model = args.model or (DEFAULT_MODEL if args.images is not None else None)
    spec = get_model_spec(model) if model else None  # an unknown name stops here, before anything runs
    gt_dir = _ground_truth_dir(args)
    ground_truth = load_wider_ground_truth(gt_dir)  # before the long run: a wrong --gt fails now
    resize = args.resize or (protocol_resize(spec) if spec else None)

    predictions_dir: Path = args.predictions
    ran = ""
    run_failed = False
    if args.images is not None:
        assert spec is not None and resize is not None
        detector = _build_detector(args, spec.name, resize)
        predictions_dir = args.predictions or wider_cache_dir(spec.name, detector.backend.name, resize, args.weights)
        print(f"{spec.name} ({detector.backend.name}, {resize}) -> {predictions_dir}", file=sys.stderr)
        run = predict_wider(args.images, predictions_dir, detector, progress=not args.quiet)
        ran = f"{spec.name}, {detector.backend.name}, {resize}, score > {WIDER_THRESHOLD}, NMS {WIDER_NMS}"
        if run.cached:
            total = run.cached + run.written + len(run.failed)
            print(f"already predicted: {run.cached} of {total} images (reused)", file=sys.stderr)
        run_failed = bool(run.failed)
        for reason in run.failed.values():
            print(f"error: {reason} (no prediction file: scored as no detections)", file=sys.stderr)

    result = evaluate_wider(read_wider_predictions(predictions_dir), ground_truth)
    if result.missing:
        print(
            f"{len(result.missing)} of {result.images} ground-truth images have no prediction file "
            f"(first: {result.missing[0]}): counted as no detections",
            file=sys.stderr,
        )

    reported = spec.accuracy if spec else None
    rows = []
    for setting in SETTINGS:
        ap = result.ap[setting]
        theirs = getattr(reported, setting) if reported else None
        rows.append(
            (
                setting.capitalize(),
                f"{ap:.4f}",
                f"{theirs:.4f}" if theirs is not None else "-",
                f"{ap - theirs:+.4f}" if theirs is not None else "-",
                result.curves[setting].faces,
            )
        )
    print(f"WIDER FACE val, {result.images} images ({ran or predictions_dir})")
    print(format_table(("setting", "AP measured", "AP reported", "difference", "faces"), rows))
    if reported:
        print(f"reported: {reported.protocol} ({reported.source})")

    out: Path = args.out
    json_path: Path = args.json or out / "widerface.json"
    report = {
        "model": spec.name if spec else None,
        "run": ran or None,
        "predictions": str(predictions_dir),
        "ground_truth": str(gt_dir),
        "resize": str(resize) if args.images is not None else None,
        "reported": (
            {**{s: getattr(reported, s) for s in SETTINGS}, "protocol": reported.protocol, "source": reported.source}
            if reported
            else None
        ),
        "result": result.to_json(),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))
    label = spec.name if spec and args.images is not None else predictions_dir.name
    panels = {
        f"{setting.capitalize()}": {f"{label} AP {curve.ap:.3f}": (curve.recall, curve.precision)}
        for setting, curve in result.curves.items()
    }
    try:
        png = save_curves(out / "widerface_pr.png", panels, xlabel="Recall", ylabel="Precision")
        print(f"wrote {json_path} and {png}")
    except MatplotlibMissing as exc:
        print(f"wrote {json_path}; no PNG: {exc}")
    return 1 if run_failed else 0
