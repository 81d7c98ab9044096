"""Images per second of ``retinaserve batch`` over a folder of photos: in this process, and on Ray Data with 1 and 2
replicas (``--ray --replicas N``), each run a fresh ``retinaserve batch`` process into a fresh results file.

The folder is made from the shared photos: ``--images`` JPEGs of ``--size`` (default 200 at 640x480), each a
cover-crop of one shared photo at a slightly different zoom (mirrored every other time), so no two are the same
file. Ray runs connect to one local cluster the script starts for all of them (a process holding ``ray.init()``,
ended at the end: nothing else on the machine is stopped) or to ``--ray-address``. One warm-up run per mode fills
the caches (ONNX export, the backend measurement), then ``--repeats`` rounds run every mode in turn (interleaved);
medians. Reported: images per second end to end (images / the process's wall time: imports, model build, Ray's
actors all included), images per second once rows flow (after the first row), the seconds to the first row
(start-up), and from the rows themselves the median decode ms and
detect ms of an image (detect: its share of the model call; with two replicas sharing the cores, each call is
slower).

    RETINASERVE_WEIGHTS_DIR=../shared/weights:../shared/weights/3d:$HOME/.cache/retinaserve \\
        .venv/bin/python benchmarks/batch.py --images 200 --repeats 3 --json out/batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = ("six_people.jpg", "crowd_selfie.jpg", "grace_hopper.jpg", "astronaut.png")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
"""The local cluster listens on this machine only; without a token the runs' processes connect to it as they are."""


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` JPEGs of ``size`` (width, height) cut from the shared photos, each zoomed a little differently."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(SHARED / "images" / name).convert("RGB") for name in PHOTOS]
    for index in range(count):
        photo = sources[index % len(sources)]
        zoom = 1.0 + 0.05 * ((index // len(sources)) % 5)  # 1.00 .. 1.20: crops differ
        crop_w, crop_h = round(photo.width / zoom), round(photo.height / zoom)
        left, top = (photo.width - crop_w) // 2, (photo.height - crop_h) // 2
        image = ImageOps.fit(photo.crop((left, top, left + crop_w, top + crop_h)), size, Image.Resampling.LANCZOS)
        if (index // len(sources)) % 2:
            image = ImageOps.mirror(image)
        image.save(folder / f"photo_{index:05d}.jpg", quality=90)


@contextmanager
def local_cluster(cpus: int | None) -> Iterator[str]:
    """A Ray cluster for the benchmark's runs: a child process holds ``ray.init()`` and prints its GCS address;
    ending that process shuts the cluster down (only its own processes)."""
    code = (
        "import sys, ray\n"
        f"ray.init(num_cpus={cpus!r}, include_dashboard=False, logging_level='WARNING')\n"
        "print(ray.get_runtime_context().gcs_address, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, **RAY_ENV}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        address = holder.stdout.readline().strip()
        if not address:
            raise RuntimeError("the local Ray cluster did not start")
        yield address
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()


def run_batch(folder: Path, out: Path, flags: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One ``retinaserve batch`` process: its JSON summary, the process's wall time and the rows' median decode and
    detect ms."""
    command = [sys.executable, "-m", "retinaserve", "batch", str(folder), "--out", str(out), "-q", *flags]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["process_wall_s"] = wall
    import pyarrow.parquet as pq

    timings = pq.read_table(out, columns=["timings_ms"]).column("timings_ms").to_pylist()
    for stage in ("decode", "detect"):
        summary[f"{stage}_ms"] = statistics.median(t[stage] for t in timings if t[stage] is not None)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="photos in the folder (default 200)")
    parser.add_argument("--size", default="640x480", help="WxH of each photo (default 640x480)")
    parser.add_argument("--model", default="retinaface-mnv2", help="registered detector (default retinaface-mnv2)")
    parser.add_argument("--backend", default="auto", help="batch --backend (default auto)")
    parser.add_argument("--batch-size", type=int, help="batch --batch-size (default: the command's own)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="Ray replicas to try (default 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs of each mode first (default 1)")
    parser.add_argument("--ray-address", help="an existing cluster (default: a local one started for the runs)")
    parser.add_argument("--ray-cpus", type=int, help="logical CPUs of the local cluster (default: the cores)")
    parser.add_argument("--json", type=Path, help="write the rows and the machine to this file")
    args = parser.parse_args()
    weights = [SHARED / "weights", SHARED / "weights" / "3d", Path.home() / ".cache" / "retinaserve"]
    os.environ.setdefault("RETINASERVE_WEIGHTS_DIR", os.pathsep.join(str(p) for p in weights))
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    try:
        folder = work / "photos"
        make_photos(folder, args.images, (width, height))
        engine = ["--model", args.model, "--backend", args.backend]
        if args.batch_size:
            engine += ["--batch-size", str(args.batch_size)]
        modes: dict[str, list[str]] = {"in-process": []}
        for replicas in args.replicas:
            modes[f"ray, {replicas} replica{'s' if replicas > 1 else ''}"] = ["--ray", "--replicas", str(replicas)]
        samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        with local_cluster(args.ray_cpus) if args.ray_address is None else _given(args.ray_address) as address:
            env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": address}
            runs = 0
            for round_ in range(args.warmup + args.repeats):
                for mode, flags in modes.items():  # interleaved: every round runs every mode
                    runs += 1
                    summary = run_batch(folder, work / f"run-{runs}.parquet", [*engine, *flags], env)
                    if summary["done"] != args.images:
                        raise RuntimeError(f"{mode}: {summary['done']} of {args.images} images done: {summary}")
                    if round_ >= args.warmup:
                        samples[mode].append(summary)
                    print(
                        f"{'warm-up' if round_ < args.warmup else f'round {round_ - args.warmup + 1}'} {mode}: "
                        f"{args.images / summary['process_wall_s']:.1f} images/s end to end, first row after "
                        f"{summary['first_row_s']:.1f} s, detect {summary['detect_ms']:.1f} ms/image",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from retinaserve.tables import format_table

    rows = []
    for mode, runs_ in samples.items():
        end_to_end = [args.images / s["process_wall_s"] for s in runs_]
        # the rate once rows flow (start-up excluded: imports, model build, Ray's actors)
        steady = [(args.images - 1) / max(s["wall_s"] - (s["first_row_s"] or 0.0), 1e-9) for s in runs_]
        ray = runs_[0].get("ray") or {}
        rows.append(
            {
                "mode": mode,
                "images": args.images,
                "size": args.size,
                "model": args.model,
                "backend": ray.get("backend") or args.backend,
                "batch_size": ray.get("batch") or runs_[0].get("batch_size"),
                "actor": ray.get("actor"),
                "decode_cpus": ray.get("decode_cpus"),
                "images_per_s_end_to_end": round(statistics.median(end_to_end), 2),
                "images_per_s_after_first_row": round(statistics.median(steady), 2),
                "decode_ms": round(statistics.median(s["decode_ms"] for s in runs_), 2),
                "detect_ms": round(statistics.median(s["detect_ms"] for s in runs_), 2),
                "process_wall_s": round(statistics.median(s["process_wall_s"] for s in runs_), 2),
                "first_row_s": round(statistics.median(s["first_row_s"] or 0.0 for s in runs_), 2),
                "samples_end_to_end": [round(v, 2) for v in end_to_end],
            }
        )
    base = rows[0]["images_per_s_end_to_end"]
    header = (
        "mode",
        "images/s end to end",
        "x in-process",
        "images/s after 1st row",
        "wall s",
        "first row s",
        "decode ms",
        "detect ms",
        "batch",
    )
    table = [
        (
            r["mode"],
            r["images_per_s_end_to_end"],
            round(r["images_per_s_end_to_end"] / base, 2),
            r["images_per_s_after_first_row"],
            r["process_wall_s"],
            r["first_row_s"],
            r["decode_ms"],
            r["detect_ms"],
            r["batch_size"],
        )
        for r in rows
    ]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    print(f"\nmachine: {machine}; {args.images} JPEGs of {args.size}; {args.model} --backend {args.backend}")
    print(f"medians of {args.repeats} interleaved rounds after {args.warmup} warm-up")
    print(format_table(header, table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "rows": rows}, indent=1))
    return 0


@contextmanager
def _given(address: str) -> Iterator[str]:
    yield address


if __name__ == "__main__":
    raise SystemExit(main())
