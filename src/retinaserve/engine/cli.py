"""``retinaserve bench`` and ``retinaserve plan``: argument parsing and printing only; the work is in the library.

``cli.py`` adds them with ``add_bench_parser(sub)`` and ``add_plan_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli import at_least_one, parse_size

__all__ = ["add_bench_parser", "add_plan_parser", "cmd_bench", "cmd_plan"]

_DEFAULT_PHOTOS = "../shared/images"
_FPS = 25.0
_FRAME = (1280, 720)
"""``plan``'s video defaults when only some of ``--streams``, ``--fps`` and ``--size`` are given."""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``retinaserve bench``: latency/throughput/memory table (``--parity``: accuracy against FP32 torch)."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark backends and precisions on real photos (or --parity: compare detections with FP32 torch)",
    )
    bench.add_argument("--photos", nargs="+", default=[_DEFAULT_PHOTOS], help="photo files or folders")
    bench.add_argument("--models", nargs="+", default=["retinaface-mnet025-edge"], help="registered model names")
    bench.add_argument(
        "--variants",
        nargs="+",
        help="backend/precision pairs, e.g. torch/fp32 onnx/int8 (default: all this device runs)",
    )
    bench.add_argument("--batch-sizes", type=_ints, default=(1, 2, 4, 8), help="comma-separated (default 1,2,4,8)")
    bench.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(640, 640)], help="input sizes WxH (default 640x640)"
    )
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--repeats", type=int, default=10, help="timed calls per configuration and round")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved sweeps over all configurations")
    bench.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    bench.add_argument("--random-weights", action="store_true", help="random weights (timing and memory only)")
    bench.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")
    bench.add_argument("--compile", choices=["none", "compile", "cuda-graphs"], default="none", help="torch backend")
    bench.add_argument("--parity", action="store_true", help="compare detections with FP32 torch instead of timing")
    bench.add_argument(
        "--vs-floor",
        action="store_true",
        help="also print the measured FP32 peak, each model's FLOPs, and times as multiples of the floor",
    )
    bench.add_argument("--json", type=Path, help="write rows (and parity reports) to this file")
    bench.add_argument("--plot", type=Path, help="write throughput vs batch per backend to this PNG")
    bench.set_defaults(func=cmd_bench)
    return bench


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import (
        BenchConfig,
        Variant,
        format_bench_table,
        format_floor_table,
        machine_description,
        plot_throughput,
        run_benchmark,
        run_parity,
        write_json,
    )
    from .factory import EngineConfig, photos_in
    from .ort_backend import OrtOptions
    from .parity import format_parity_table
    from .precision import pick_device

    photos = photos_in(args.photos)
    if not photos:
        print(f"error: no photos found in {' '.join(args.photos)}", file=sys.stderr)
        return 2
    variants = tuple(Variant.parse(v) for v in args.variants or ())
    engine = EngineConfig(ort=OrtOptions(intra_op_threads=args.threads), compile=args.compile)
    print(f"machine: {json.dumps(machine_description())}")
    if args.parity:
        reports = run_parity(
            photos, models=args.models, variants=variants, input_size=args.sizes[0], device=args.device, engine=engine
        )
        print(format_parity_table(reports))
        if args.json:
            write_json(args.json, [], reports, photos=[str(p) for p in photos], input=args.sizes[0])
        return 0
    device = pick_device(args.device).device
    config = BenchConfig(
        photos=photos,
        models=tuple(args.models),
        variants=variants,
        batch_sizes=args.batch_sizes,
        input_sizes=tuple(args.sizes),
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        device=args.device,
        random_weights=args.random_weights,
        engine=engine,
    )
    peaks: list[float] = []
    if args.vs_floor:
        from .floor import fp32_peak_gflops

        peaks.append(fp32_peak_gflops(device=device))
    rows = run_benchmark(config)
    print(format_bench_table(rows))
    if args.vs_floor:
        peaks.append(fp32_peak_gflops(device=device))  # before and after: the best of both is the peak
        print(f"\nmachine FP32 peak (2048x2048 matmul, {torch.get_num_threads()} threads): {max(peaks):.1f} GFLOP/s")
        print(format_floor_table(rows, max(peaks)))
    if args.json:
        write_json(
            args.json,
            rows,
            fp32_peak_gflops=max(peaks) if peaks else None,
            photos=[str(p) for p in photos],
            warmup=args.warmup,
            repeats=args.repeats,
            rounds=args.rounds,
        )
    if args.plot:
        plot_throughput(args.plot, rows)
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected milliseconds >= 0, got {text!r}")
    return value


def add_plan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``retinaserve plan --gpu-mem 16GiB``: measured footprints, largest batch and streams per model;
    ``--streams N --fps F --size WxH``: how many video streams each model runs in real time."""
    plan = subparsers.add_parser(
        "plan",
        help="measure memory per model/precision/input and plan batches and streams; with --streams/--fps/--size, "
        "how many video streams each model runs in real time",
    )
    plan.add_argument("--gpu-mem", help="memory budget such as 16GiB (default: free memory of the device, or RAM)")
    plan.add_argument("--models", nargs="+", help="registered model names (default: all detection models)")
    plan.add_argument(
        "--variants",
        nargs="+",
        help="backend/precision pairs (default: torch at each precision; video: every FP32/FP16/BF16 one the device "
        "runs)",
    )
    plan.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 640)], help="network input sizes WxH")
    plan.add_argument("--batch", type=int, default=8, help="batch size of one stream (default 8)")
    plan.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CPU plans against RAM)")
    video = plan.add_argument_group("video streams (any of these plans streams instead of batches)")
    video.add_argument("--streams", type=at_least_one, help="video streams wanted: says which models hold them")
    video.add_argument("--fps", type=_positive_float, help=f"frames per second of each stream (default {_FPS:g})")
    video.add_argument(
        "--size", type=parse_size, help=f"frame size WxH (default {_FRAME[0]}x{_FRAME[1]}); each model resizes it"
    )
    video.add_argument(
        "--decode-ms",
        type=_milliseconds,
        help="decode cost per frame added to each (default: measured for H.264 with PyAV when installed, else 0)",
    )
    plan.add_argument("--json", type=Path, help="write the footprints (video: the rows) to this file")
    plan.set_defaults(func=cmd_plan)
    return plan


def _budget_mb(gpu_mem: str | None, device: Any) -> float:
    """``--gpu-mem``, else the device's free memory, else available RAM (MiB)."""
    import torch

    from .planner import parse_bytes

    if gpu_mem:
        return parse_bytes(gpu_mem) / float(1 << 20)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / float(1 << 20)
    import psutil

    return psutil.virtual_memory().available / float(1 << 20)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..registry import list_models
    from .bench import Variant
    from .planner import choose_model, format_plan_table, measure_all
    from .precision import cpu_has_native_bf16, pick_device

    device = pick_device(args.device).device
    budget_mb = _budget_mb(args.gpu_mem, device)
    if args.streams is not None or args.fps is not None or args.size is not None:
        return _cmd_plan_streams(args, device, budget_mb)
    variants: list[tuple[str, str]]
    if args.variants:
        variants = [(v.backend, v.precision) for v in map(Variant.parse, args.variants)]
    elif device.type == "cuda":
        variants = [("torch", "fp32"), ("torch", "fp16")]
    else:
        variants = [("torch", "fp32"), ("onnx", "fp32")] + ([("torch", "bf16")] if cpu_has_native_bf16() else [])
    footprints = measure_all(args.models or list_models("detection"), variants, args.sizes, device=str(device))
    where = "GPU memory" if device.type == "cuda" else "RAM (CPU plan)"
    print(f"budget {budget_mb:.0f} MiB of {where} on {device}; 10 % headroom; streams share one copy of the weights")
    print(format_plan_table(footprints, budget_mb, batch=args.batch))
    try:
        _, reason = choose_model(footprints, budget_mb, batch=1)
        print(f"auto model: {reason}")
    except Exception as exc:
        print(f"auto model: {exc}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"budget_mb": budget_mb, "footprints": [f.to_dict() for f in footprints]}, indent=1)
        )
    return 0


def _cmd_plan_streams(args: argparse.Namespace, device: Any, budget_mb: float) -> int:
    """``plan --streams N --fps F --size WxH``: the stream table, the verdict and (``--json``) the rows."""
    from ..registry import list_models
    from .bench import Variant, default_variants, machine_description
    from .errors import EngineError
    from .planner import format_stream_plan_table, measure_decode_ms, plan_video_streams, stream_verdict

    fps = args.fps or _FPS
    frame = args.size or _FRAME
    if args.variants:
        variants = [Variant.parse(v) for v in args.variants]
    else:  # INT8 needs a calibration pass per model (minutes on a CPU): only when asked for by name
        variants = [v for v in default_variants(device) if v.precision != "int8"]
    if args.decode_ms is not None:
        decode_ms, decode_note = args.decode_ms, "--decode-ms"
    else:
        try:
            decode_ms, decode_note = measure_decode_ms(frame), "H.264 with PyAV, measured on a panning sample clip"
        except EngineError as exc:
            decode_ms, decode_note = 0.0, f"not counted: {exc}"
    where = "GPU memory" if device.type == "cuda" else "RAM"
    print(
        f"{frame[0]}x{frame[1]} frames at {fps:g} fps on {device}; decode {decode_ms:.1f} ms/frame ({decode_note}); "
        f"budget {budget_mb:.0f} MiB of {where}; 10 % headroom on time and memory; one frame per stream per batch"
    )
    rows = plan_video_streams(
        args.models or list_models("detection"),
        [(v.backend, v.precision) for v in variants],
        frame,
        fps,
        budget_mb,
        device=str(device),
        wanted=args.streams,
        decode_ms_per_frame=decode_ms,
    )
    print(format_stream_plan_table(rows))
    if any(r.weights == "random" for r in rows):
        print("weights: random where not provisioned (times and memory as with real ones; no detections meant)")
    verdict = stream_verdict(rows, args.streams)
    print(f"verdict: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "machine": machine_description(),
            "frame": list(frame),
            "fps": fps,
            "streams": args.streams,
            "budget_mb": budget_mb,
            "headroom": 0.1,
            "decode_ms_per_frame": decode_ms,
            "decode": decode_note,
            "verdict": verdict,
            "rows": [r.to_dict() for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0 if rows else 1
