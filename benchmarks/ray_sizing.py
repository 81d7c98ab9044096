"""How many model replicas (and streams) fit on common GPUs, from the memory planner: the README's sizing table.

For each detection model and precision, one replica's footprint at 640x640 (``fixed + per_image x batch``) is
turned into ``num_gpus`` with :func:`retinaserve.ray.sizing.plan_replicas` for each card of
:data:`~retinaserve.ray.sizing.GPU_CARDS`, the same function ``serve --ray`` and ``batch --ray`` size their replicas
with. Streams per card is what memory holds: one replica's weights shared by concurrent batch-1 streams, as
:func:`retinaserve.engine.planner.streams_that_fit` counts them; compute is not in it (it needs the model timed on
the card: ``retinaserve plan --streams N --device cuda``).

On a GPU (``--device cuda``) the footprints are the CUDA allocator's measured peaks (torch FP32/FP16). Without one
they are *planned*: the torch backend's measured CPU footprint (FP32 activations per image), weights from the
parameter count, FP16 at half of both; the table says which.

    .venv/bin/python benchmarks/ray_sizing.py --json out/ray_sizing.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from retinaserve.engine.factory import EngineConfig
from retinaserve.engine.planner import Footprint, measure_footprint, streams_that_fit
from retinaserve.ray.sizing import CUDA_CONTEXT_MB, GPU_CARDS, MAX_REPLICAS_PER_GPU, plan_replicas
from retinaserve.registry import get_model_spec, list_models
from retinaserve.tables import format_table

SIZE = (640, 640)


def cpu_footprint(model: str) -> Footprint:
    """The torch backend's FP32 footprint on CPU, measured in a fresh process: a process' peak RSS only grows, so a
    model measured after another would see the first one's freed memory as its own."""
    code = (
        "import json, sys; from retinaserve.engine.factory import EngineConfig; "
        "from retinaserve.engine.planner import measure_footprint; "
        "config = EngineConfig(backend='torch', precision='fp32', device='cpu', random_weights=True); "
        f"print(json.dumps(measure_footprint({model!r}, config, {SIZE!r}).to_dict()))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    data["input"] = tuple(data["input"])
    data["measured_mb"] = {int(k): v for k, v in data["measured_mb"].items()}
    return Footprint(**data)


def planned_gpu_footprints(model: str) -> list[tuple[Footprint, str]]:
    """FP32 and FP16 CUDA footprints planned from the torch backend's CPU measurement (no GPU here)."""
    measured = cpu_footprint(model)
    print(f"{model}: CPU footprint {measured}", file=sys.stderr)
    params = get_model_spec(model).params_millions or 0.0
    weights32 = params * 1e6 * 4 / float(1 << 20)
    workspace = max(0.0, measured.fixed_mb - measured.weights_mb)  # what does not grow with the batch, besides weights
    out = []
    for precision, scale in (("fp32", 1.0), ("fp16", 0.5)):
        weights = weights32 * scale
        footprint = replace(
            measured,
            backend="torch",
            precision=precision,
            device="cuda",
            weights_mb=weights,
            fixed_mb=weights + workspace * scale,
            per_image_mb=measured.per_image_mb * scale,
            measured_mb={},
        )
        out.append((footprint, "planned (CPU measurement)"))
    return out


def measured_gpu_footprints(model: str) -> list[tuple[Footprint, str]]:
    """FP32 and FP16 footprints measured on this machine's GPU."""
    out = []
    for precision in ("fp32", "fp16"):
        config = EngineConfig(backend="torch", precision=precision, device="cuda", random_weights=True)  # type: ignore[arg-type]
        out.append((measure_footprint(model, config, SIZE), "measured on " + _gpu_name()))
    return out


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def rows_for(footprints: list[tuple[Footprint, str]], batch: int) -> list[dict[str, Any]]:
    rows = []
    for footprint, source in footprints:
        for card, capacity in GPU_CARDS.items():
            plan = plan_replicas(footprint, batch=batch, capacity_mb=capacity)
            usable = capacity - CUDA_CONTEXT_MB
            rows.append(
                {
                    "model": footprint.model,
                    "precision": footprint.precision,
                    "card": card,
                    "per_image_mb": round(footprint.per_image_mb, 1),
                    "replica_mb": round(plan.memory_mb),
                    "num_gpus": plan.num_gpus,
                    "replicas_fit_memory": math.floor(1.0 / plan.num_gpus + 1e-9),
                    "replicas_planned": plan.replicas,
                    "streams_per_card_memory": streams_that_fit(footprint, usable, 1),
                    "source": source,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list_models("detection"))
    parser.add_argument("--batch", type=int, default=8, help="images per model call a replica is sized for")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: measure on this GPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for model in args.models:
        footprints = measured_gpu_footprints(model) if args.device == "cuda" else planned_gpu_footprints(model)
        rows.extend(rows_for(footprints, args.batch))
    header = (
        "model",
        "precision",
        "card",
        "MiB/image",
        f"replica MiB @{args.batch}",
        "num_gpus",
        "replicas fit (memory)",
        f"planned (<= {MAX_REPLICAS_PER_GPU})",
        "streams/card (memory)",
        "source",
    )
    table = format_table(header, [tuple(str(v) for v in row.values()) for row in rows])
    print(f"machine: {platform.processor() or platform.machine()}; batch {args.batch}; input {SIZE[0]}x{SIZE[1]}")
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"batch": args.batch, "input": SIZE, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
