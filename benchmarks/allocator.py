"""Page faults and time per forward pass of the torch paths with glibc's default malloc and with
``retinaserve.memory.tune_allocator()``: each configuration in a fresh process (malloc settings are per process),
rounds interleaved.

    python benchmarks/allocator.py --rounds 3 --json out/allocator.json

Prints a table (median ms and minor page faults per call, default vs tuned, speed-up) and writes JSON. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(backend: str, size: int, batch: int, tuned: bool, repeats: int) -> dict[str, float]:
    """One process: optionally tune malloc first, then time ``repeats`` forward passes after a warm-up."""
    from retinaserve.memory import minor_faults, tune_allocator

    applied = tune_allocator() if tuned else {}
    import torch

    from retinaserve.engine.factory import EngineConfig, create_backend

    model = create_backend("retinaface-mnv2", EngineConfig(backend=backend, precision="fp32", device="cpu"))  # type: ignore[arg-type]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model.release(model.forward(x))
    times, faults = [], []
    for _ in range(repeats):
        before = minor_faults()
        start = time.perf_counter()
        model.release(model.forward(x))
        times.append((time.perf_counter() - start) * 1e3)
        faults.append(minor_faults() - before)
    return {"ms": statistics.median(times), "faults": statistics.median(faults), "applied": bool(applied)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch-baseline", "torch"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "SIZE", "BATCH", "TUNED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, size, batch, tuned = args.worker
        print(json.dumps(worker(backend, int(size), int(batch), tuned == "1", args.repeats)))
        return

    from retinaserve.engine.bench import machine_description

    configs = [(b, n, t) for b in args.backends for n in args.batches for t in (False, True)]
    samples: dict[tuple[str, int, bool], list[dict[str, float]]] = {c: [] for c in configs}
    env = {**os.environ, "RETINASERVE_TUNE_MALLOC": "1"}
    for round_index in range(args.rounds):
        for backend, batch, tuned in configs:
            command = [sys.executable, __file__, "--repeats", str(args.repeats), "--worker", backend]
            command += [str(args.size), str(batch), "1" if tuned else "0"]
            out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            samples[(backend, batch, tuned)].append(json.loads(out.strip().splitlines()[-1]))
            mode = "tuned" if tuned else "default"
            print(f"round {round_index + 1}: {backend} b{batch} {mode} done", file=sys.stderr)
    rows = []
    for backend in args.backends:
        for batch in args.batches:
            default = samples[(backend, batch, False)]
            tuned = samples[(backend, batch, True)]
            row = {
                "backend": backend,
                "batch": batch,
                "input": f"{args.size}x{args.size}",
                "default_ms": statistics.median(s["ms"] for s in default),
                "tuned_ms": statistics.median(s["ms"] for s in tuned),
                "default_faults": statistics.median(s["faults"] for s in default),
                "tuned_faults": statistics.median(s["faults"] for s in tuned),
            }
            row["speedup"] = row["default_ms"] / row["tuned_ms"]
            rows.append(row)
    print(f"machine: {json.dumps(machine_description())}")
    header = "backend         batch input     default ms  tuned ms  speed-up  faults/call default -> tuned"
    print(header)
    for r in rows:
        print(
            f"{r['backend']:<15} {r['batch']:>5} {r['input']:<9} {r['default_ms']:>10.1f} {r['tuned_ms']:>9.1f} "
            f"{r['speedup']:>8.2f}x  {r['default_faults']:>10.0f} -> {r['tuned_faults']:.0f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_description(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
