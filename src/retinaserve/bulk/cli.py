"""``retinaserve batch SRC --out results.parquet``: argument parsing, progress and the summary; the work is in
:mod:`retinaserve.bulk` (in this process) and :mod:`retinaserve.ray.data` (``--ray``)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..detection.detector import DecodeMode
    from .meshes import MeshOptions
    from .runner import DetectorOptions

__all__ = ["add_batch_parser", "cmd_batch"]

log = logging.getLogger(__name__)


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``retinaserve batch SRC --out FILE``: bulk detection into one resumable Parquet or JSONL file."""
    from ..cli import at_least_one, score_threshold
    from ..registry import DEFAULT_MODEL, DEFAULT_RECONSTRUCTION_MODEL

    parser = subparsers.add_parser(
        "batch",
        help="detect faces in many photos into one Parquet or JSONL file that a rerun resumes (--ray: on Ray Data)",
        description="SRC is a folder (its images, recursively), a glob pattern (quote it), a .txt list (one path a "
        "line, relative to the list's folder; blank lines and # comments skipped) or a .parquet list (a 'path' "
        "column). Writes one row per image: path, width, height, faces, num_faces, timings_ms, model, error (with "
        "--reconstruct also meshes). A "
        "rerun with the same --out skips the images already in it. Prints a JSON summary on stdout at the end.",
    )
    parser.add_argument("source", metavar="SRC", help="folder, glob pattern, or .txt / .parquet list of paths")
    parser.add_argument(
        "--out", type=Path, required=True, help="results file: .parquet or .jsonl (the format is chosen by suffix)"
    )
    parser.add_argument("--ray", action="store_true", help="run on Ray Data (RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"registered detector (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", type=Path, help="weights file (default: resolved from env var and cache)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--backend",
        choices=("auto", "openvino", "onnx", "torch", "torch-baseline"),
        default="auto",
        help="what runs the network (default auto: the fastest exact one here, measured once and cached)",
    )
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8", "auto"), default="fp32")
    parser.add_argument(
        "--calibration",
        nargs="+",
        help="photos or folders to calibrate INT8 on (default: the first 16 images that decode)",
    )
    parser.add_argument("--threshold", type=score_threshold, help="score threshold in [0, 1) (default: the model's)")
    parser.add_argument(
        "--decode",
        choices=("fast", "exact"),
        help="JPEGs: fast (default) decodes at the 1/2, 1/4 or 1/8 scale the network input needs; exact at full size "
        "(what --reconstruct needs and sets)",
    )
    parser.add_argument(
        "--reconstruct",
        nargs="?",
        const=DEFAULT_RECONSTRUCTION_MODEL,
        metavar="MODEL",
        help="also reconstruct each face in 3D: rows gain 'meshes', the entries `retinaserve reconstruct --json` "
        f"writes (MODEL: a reconstruction model, default {DEFAULT_RECONSTRUCTION_MODEL})",
    )
    parser.add_argument(
        "--mesh-dir",
        type=Path,
        help="with --reconstruct: also write each face's textured GLB here as <image stem>_face<N>.glb (--ray on "
        "several nodes: a folder they all see)",
    )
    parser.add_argument(
        "--batch-size",
        type=at_least_one,
        help="images per model call (default: the detector's own: what `auto` measured paid, else 8)",
    )
    parser.add_argument(
        "--replicas", type=at_least_one, help="--ray: model replicas (default: as many as the plan fits)"
    )
    parser.add_argument(
        "--retry-errors", action="store_true", help="also redo the images whose row in --out is an error"
    )
    parser.add_argument("--download", action="store_true", help="download missing weights (verified)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary line; only the JSON")
    parser.add_argument(  # also after the subcommand, as for detect
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log the engine, the plan, Ray's lines"
    )
    parser.set_defaults(func=cmd_batch)
    return parser


@dataclass
class _Tally:
    """What this run wrote."""

    done: int = 0
    errors: int = 0
    faces: int = 0
    meshes: int = 0
    first_row_s: float | None = None

    def add(self, row: dict[str, Any], elapsed_s: float) -> None:
        self.done += 1
        if self.first_row_s is None:
            self.first_row_s = elapsed_s
        if row["error"] is not None:
            self.errors += 1
        else:
            self.faces += row["num_faces"]
            self.meshes += len(row.get("meshes") or ())


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM -> KeyboardInterrupt: what was detected is written and the summary printed, as after Ctrl-C."""
    raise KeyboardInterrupt


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..cli import _provision
    from ..registry import DEFAULT_MODEL, get_model_spec
    from .results import ChunkedWriter, open_results
    from .runner import DetectorOptions, run_in_process
    from .sources import list_images

    start = time.perf_counter()
    get_model_spec(args.model)  # an unknown model is a usage error before anything is read
    decode = _decode_mode(args)
    if args.ray:
        _require_ray()
    results = open_results(args.out, meshes=args.reconstruct is not None)
    paths = [str(p) for p in list_images(args.source)]
    meshes = _mesh_options(args, paths)
    resume = results.resume(paths, retry_errors=args.retry_errors)
    todo, skipped, skipped_errors = resume.todo, resume.skipped, resume.skipped_errors
    download = args.download or args.model == DEFAULT_MODEL
    options = DetectorOptions(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        weights=args.weights,
        threshold=args.threshold,
        batch_size=args.batch_size,
        decode=decode,
        download=download,
        calibration=_calibration(args, todo),
    )
    tally = _Tally()
    writer = ChunkedWriter(results)
    progress = tqdm(
        total=len(paths),
        initial=skipped,
        desc="detecting" if meshes is None else "reconstructing",
        unit="img",
        disable=args.quiet,
        file=sys.stderr,
    )

    def on_row(row: dict[str, Any]) -> None:
        writer.write(row)
        tally.add(row, time.perf_counter() - start)
        progress.update(1)
        if row["error"] is not None:
            where = "" if row["error"].startswith(row["path"]) else f"{row['path']}: "
            tqdm.write(f"error: {where}{row['error']}", file=sys.stderr)

    summary: dict[str, Any] = {"mode": "ray" if args.ray else "in-process"}
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if todo and download and args.weights is None:
            _provision(args.model, progress=not args.quiet)
        if todo and args.ray:
            summary["ray"] = _run_ray(todo, options, meshes, args, on_row)
        elif todo:
            detector = options.build()
            log.info("%r", detector)
            summary["batch_size"] = detector.batch_size
            stage = meshes.build(detector, options.device) if meshes is not None else None
            if stage is not None:
                log.info("%r", stage.reconstructor)
            run_in_process(detector, todo, on_row, meshes=stage)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        writer.close()  # the rows so far become the file (Parquet: parts merged), after Ctrl-C too
    wall_s = time.perf_counter() - start
    summary = {
        "out": str(args.out),
        "model": args.model,
        "images": len(paths),
        "done": tally.done,
        "skipped": skipped,
        "skipped_errors": skipped_errors,
        "errors": tally.errors,
        "faces": tally.faces,
        **({"reconstruct": meshes.model, "meshes": tally.meshes} if meshes is not None else {}),
        "images_per_s": round(tally.done / wall_s, 3) if wall_s > 0 else None,
        "first_row_s": None if tally.first_row_s is None else round(tally.first_row_s, 3),
        "wall_s": round(wall_s, 3),
        "interrupted": interrupted,
        **summary,
    }
    if not args.quiet:
        retry = f" ({skipped_errors} with errors: --retry-errors redoes them)" if skipped_errors else ""
        print(
            f"{tally.done} images done, {skipped} skipped as already done{retry}, {tally.errors} errors, "
            f"{tally.faces} faces{'' if meshes is None else f', {tally.meshes} meshes'}, "
            f"{summary['images_per_s'] or 0:.1f} images/s, {wall_s:.1f} s -> {args.out}",
            file=sys.stderr,
        )
    print(json.dumps(summary, indent=1))
    if interrupted:
        return 130
    return 1 if tally.errors else 0


def _decode_mode(args: argparse.Namespace) -> DecodeMode:
    """``--decode``: fast by default; exact with ``--reconstruct`` (crops and textures need the full pixels, and
    ``reconstruct`` detects on them), where asking for fast is a usage error."""
    if args.reconstruct is None:
        if args.mesh_dir is not None:
            raise ValueError("--mesh-dir writes the meshes of --reconstruct: add --reconstruct")
        return "exact" if args.decode == "exact" else "fast"
    if args.decode == "fast":
        raise ValueError(
            "--reconstruct decodes images at full size (crops and textures need every pixel): drop --decode fast"
        )
    return "exact"


def _mesh_options(args: argparse.Namespace, paths: list[str]) -> MeshOptions | None:
    """What ``--reconstruct`` and ``--mesh-dir`` ask for (an unknown 3D model is a usage error here, before any
    work); file names are decided over all of the run's ``paths``, so a resumed run names files as the first did."""
    if args.reconstruct is None:
        return None
    from ..registry import get_reconstruction_spec
    from .meshes import MeshOptions, mesh_file_stems

    get_reconstruction_spec(args.reconstruct)
    mesh_dir = args.mesh_dir.expanduser().resolve() if args.mesh_dir is not None else None
    return MeshOptions(
        model=args.reconstruct,
        mesh_dir=mesh_dir,
        renamed=mesh_file_stems(paths) if mesh_dir is not None else {},
        download=True if args.download else None,
    )


def _calibration(args: argparse.Namespace, todo: list[str]) -> tuple[Path, ...]:
    """INT8's calibration photos: ``--calibration``, else the first 16 images of the run that decode."""
    from ..engine.factory import photos_in
    from .runner import calibration_photos

    if args.precision != "int8":
        return ()
    return photos_in(args.calibration) if args.calibration else calibration_photos(todo)


def _require_ray() -> None:
    """``--ray`` without Ray installed is a usage error that says what to install."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'ray[data]' (or retinaserve[ray])") from None


def _run_ray(
    todo: list[str], options: DetectorOptions, meshes: MeshOptions | None, args: argparse.Namespace, on_row: Any
) -> dict[str, Any]:
    """Plan the replicas on the connected cluster, say why, and run; returns the plan for the summary."""
    from tqdm import tqdm

    from ..ray.data import plan_for_cluster, ray_session, run_on_ray
    from .runner import DEFAULT_BATCH

    verbose = bool(getattr(args, "verbose", False))
    with ray_session(verbose=verbose):
        options, plan = plan_for_cluster(options, replicas=args.replicas, meshes=meshes)
        if not args.quiet:
            tqdm.write(f"ray plan: {plan.reason}", file=sys.stderr)  # above the progress bar
        log.info("ray plan: %s", plan.to_dict())
        decode = run_on_ray(todo, options, plan, on_row, rows_per_call=args.batch_size or DEFAULT_BATCH, meshes=meshes)
    return {
        "replicas": plan.replicas,
        "batch": plan.batch,
        "backend": options.backend,
        "device": options.device,
        "actor": plan.actor_options(),
        "decode_cpus": decode,
        "reason": plan.reason,
    }
