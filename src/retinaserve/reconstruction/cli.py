"""``retinaserve reconstruct``: argument parsing, progress and printing only; the work is in the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_reconstruct_parser", "cmd_reconstruct"]


def _formats(text: str) -> tuple[str, ...]:
    from .results import EXPORT_FORMATS

    chosen = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = [fmt for fmt in chosen if fmt not in EXPORT_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"formats are a comma-separated list of {', '.join(EXPORT_FORMATS)}")
    return chosen


def add_reconstruct_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``retinaserve reconstruct PATH...``: textured 3D face meshes from photos."""
    from ..registry import DEFAULT_RECONSTRUCTION_MODEL

    parser = subparsers.add_parser("reconstruct", help="reconstruct textured 3D face meshes from photos")
    parser.add_argument("paths", nargs="*", help="image files or directories (optional with --sample)")
    parser.add_argument(
        "--sample", action="store_true", help="also run on the photo shipped with retinaserve (grace_hopper.jpg)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_RECONSTRUCTION_MODEL,
        help=f"reconstruction model (default {DEFAULT_RECONSTRUCTION_MODEL})",
    )
    parser.add_argument("--detector", default="retinaface-mnv2", help="face detector (default retinaface-mnv2)")
    parser.add_argument("--weights", type=Path, help="mesh network weights file (default: env var, then cache)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for meshes and previews (default out/)")
    parser.add_argument("--format", type=_formats, default=("glb",), help="comma-separated: glb, obj (default glb)")
    parser.add_argument("--texture-size", type=int, default=512, help="texture map side in pixels (default 512)")
    parser.add_argument("--max-faces", type=int, help="reconstruct at most this many faces per image")
    parser.add_argument("--preview", action="store_true", help="write a preview PNG per image")
    parser.add_argument("--json", type=Path, help="write {image path: [faces]} to this file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--backend", choices=("torch", "onnx", "auto"), default="torch", help="what runs the network")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8", "auto"), default="fp32")
    parser.add_argument("--calibration", nargs="+", help="photos or folders to calibrate INT8 on (default: inputs)")
    parser.add_argument("--download", action="store_true", help="download missing weights and mesh data (verified)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-image lines, no progress bar")
    parser.set_defaults(func=cmd_reconstruct)
    return parser


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..cli import input_paths
    from ..detection import Detector
    from ..errors import RetinaServeError
    from ..images import load_image
    from .reconstructor import Reconstructor

    paths = input_paths(args)
    if paths is None:
        return 2
    download = True if args.download else None
    engine = None
    if not (args.backend == "torch" and args.precision == "fp32"):
        from ..engine import EngineConfig
        from ..engine.factory import photos_in

        engine = EngineConfig(
            backend=args.backend,
            precision=args.precision,
            device=args.device,
            calibration_photos=photos_in(args.calibration or paths) if args.precision == "int8" else (),
        )
    device = None if engine is not None else args.device
    detector = Detector(args.detector, device=args.device if args.device != "auto" else None)
    reconstructor = Reconstructor(
        args.model,
        detector=detector,
        weights=args.weights,
        device=device,
        engine=engine,
        texture_size=args.texture_size,
        max_faces=args.max_faces,
        download=download,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, object]]] = {}
    failures = without_faces = 0
    show = not args.quiet
    bar = tqdm(paths, desc="reconstructing", unit="img", disable=not (show and len(paths) > 1), file=sys.stderr)
    for path in bar:
        try:
            image = load_image(path)
            result = reconstructor.run([image])[0]
        except RetinaServeError as exc:
            failures += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        entries = []
        for number, mesh in enumerate(result.meshes):
            files: dict[str, str] = {}
            for fmt in args.format:
                target = args.out / f"{path.stem}_face{number}.{fmt}"
                mesh.save(target)
                files[fmt] = str(target)
            entries.append(mesh.to_dict(files=files))
        export_ms = (time.perf_counter() - t0) * 1e3
        preview = ""
        if args.preview and result.meshes:
            from .render import preview_sheet

            t0 = time.perf_counter()
            sheet = preview_sheet(image, [(m.vertices, m.triangles, m.texture) for m in result.meshes])
            sheet.save(args.out / f"{path.stem}_preview.png")
            preview = f", preview {(time.perf_counter() - t0) * 1e3:.0f} ms"
        results[str(path)] = entries
        if not result.meshes:
            without_faces += 1
        if show:
            t = result.timings_ms
            stages = ", ".join(f"{k} {t[k]:.0f} ms" for k in ("detect", "crop", "geometry", "texture"))
            note = "" if result.meshes else " (no face found)"
            for skip in result.skipped:
                note += f"; skipped a face: {skip.reason}"
            formats = "+".join(args.format)
            tqdm.write(
                f"{path}: {len(result.meshes)} mesh{'' if len(result.meshes) == 1 else 'es'}{note} "
                f"({stages}, export {formats} {export_ms:.0f} ms{preview})"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if failures:
        return 1
    if without_faces == len(paths):
        print("no face found in any input", file=sys.stderr)
        return 1
    return 0
