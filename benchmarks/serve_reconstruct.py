"""3D reconstruction in the service, measured on a real server on loopback: per-job memory, and load.

    # what one reconstruction adds to the server's peak RSS, by image size, faces and texture size; fits the
    # constants of serve/reconstruct.py:estimate_job_mb and checks the estimate bounds every case
    python benchmarks/serve_reconstruct.py memory --images ../shared/images --json out/serve_reconstruct_memory.json

    # N clients sending reconstruct jobs (and some /v1/reconstruct calls) for a while: every answer must be
    # 200, 202 or 429 (no 5xx, no dropped connection); throughput, p50/p99 per stage, RSS before/peak/after
    python benchmarks/serve_reconstruct.py load --images ../shared/images --clients 20 --duration 120 \
        --json out/serve_reconstruct_load.json

Starts ``python -m retinaserve.serve`` on 127.0.0.1 (a free port). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import psutil
from PIL import Image
from serve_common import running_server

PHOTOS = ("grace_hopper.jpg", "six_people.jpg", "crowd_selfie.jpg")
CONCURRENT = 4


def _status(pid: int) -> dict[str, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M)[1]) / 1024 for key in ("VmRSS", "VmHWM")}  # type: ignore[index]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Per case, on a fresh server: one request (cold: its peak over the idle RSS), then ``CONCURRENT`` at once; a
    job's memory is the concurrent peak over the RSS before them, divided by ``CONCURRENT - 1`` (the first request
    left one job's worth of freed memory resident, which the allocator reuses)."""
    six = Image.open(args.images / "six_people.jpg")
    six_bytes = (args.images / "six_people.jpg").read_bytes()
    cases: list[tuple[str, bytes, int, int]] = [
        ("grace_hopper", (args.images / "grace_hopper.jpg").read_bytes(), 512, 16),
        ("crowd_selfie", (args.images / "crowd_selfie.jpg").read_bytes(), 512, 16),
        ("six_people", six_bytes, 512, 1),
        *[("six_people", six_bytes, size, 16) for size in (256, 512, 1024)],
    ]
    for scale in (2.5, 4.0):
        big = six.resize((int(six.width * scale), int(six.height * scale)), Image.Resampling.BICUBIC)
        cases.append((f"six_people x{scale:g}", _jpeg(big), 512, 16))
    flags = [
        "--log-level", "warning", "--max-pixels", "40000000", "--max-upload-mb", "40", "--timeout", "300",
        "--job-memory-mb", "100000", "--max-running-jobs", str(CONCURRENT), "--max-jobs", str(2 * CONCURRENT),
    ]  # fmt: skip
    rows = []
    for name, data, size, faces in cases:
        params = {"texture_size": size, "max_faces": faces, "format": "glb"}
        with running_server(flags, log_path=args.log) as (base, pid):
            with httpx2.Client(base_url=base, timeout=600) as client:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                idle = _status(pid)["VmRSS"]
                response = client.post("/v1/reconstruct", content=data, params=params)
                response.raise_for_status()
                cold = _status(pid)["VmHWM"] - idle
                reconstructed = int(response.headers["X-Faces"])
                pixels = client.post("/v1/reconstruct", content=data, params={**params, "format": "json"}).json()
                pixels = pixels["image"]["width"] * pixels["image"]["height"]

            async def burst(base: str = base, data: bytes = data, params: dict[str, Any] = params) -> None:
                async with httpx2.AsyncClient(base_url=base, timeout=600) as client:
                    answers = await asyncio.gather(
                        *(client.post("/v1/reconstruct", content=data, params=params) for _ in range(CONCURRENT))
                    )
                for answer in answers:
                    answer.raise_for_status()

            time.sleep(1)
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = _status(pid)["VmRSS"]
            asyncio.run(burst())
            together = _status(pid)["VmHWM"] - before
        rows.append(
            {
                "image": name,
                "pixels": pixels,
                "faces": reconstructed,
                "texture": size,
                "cold_first_mib": round(cold, 1),
                "concurrent_peak_mib": round(together, 1),
                "per_job_mib": round(together / (CONCURRENT - 1), 1),
            }
        )
        print(rows[-1], flush=True)
    from retinaserve.serve.reconstruct import estimate_job_mb

    design = np.array([[1.0, r["pixels"] / 1e6, r["faces"] * (r["texture"] / 512) ** 2] for r in rows])
    coef, *_ = np.linalg.lstsq(design, np.array([r["per_job_mib"] for r in rows]), rcond=None)
    for r in rows:
        r["estimate_mib"] = round(estimate_job_mb(r["pixels"], r["faces"], r["texture"]), 1)
    print(f"\n{'image':20} {'Mpx':>5} {'faces':>5} {'tex':>5} {'cold +MiB':>9} {'per job':>8} {'estimate':>9}")
    for r in rows:
        print(
            f"{r['image']:20} {r['pixels'] / 1e6:5.2f} {r['faces']:5d} {r['texture']:5d} "
            f"{r['cold_first_mib']:9.1f} {r['per_job_mib']:8.1f} {r['estimate_mib']:9.1f}"
        )
    fit = {"base": round(coef[0], 1), "per_megapixel": round(coef[1], 1), "per_face_at_512": round(coef[2], 2)}
    print(f"\nleast-squares fit of per-job MiB: {fit}")
    under = [r["image"] for r in rows if r["estimate_mib"] < r["per_job_mib"]]
    print("the estimate bounds every case" if not under else f"the estimate is BELOW the measurement for {under}")
    return {"concurrent": CONCURRENT, "cases": rows, "fit": fit, "estimate_bounds_all": not under}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(array, 50)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
    }


async def _client(
    client: httpx2.AsyncClient, photos: list[bytes], deadline: float, rng: random.Random, stats: dict[str, Any]
) -> None:
    while time.monotonic() < deadline:
        data = rng.choice(photos)
        started = time.perf_counter()
        try:
            if rng.random() < 0.25:  # the waiting endpoint
                response = await client.post("/v1/reconstruct", content=data, params={"format": "glb"})
                stats["status"][f"POST /v1/reconstruct {response.status_code}"] += 1
                if response.status_code == 200:
                    stats["sync_ms"].append((time.perf_counter() - started) * 1e3)
                    stats["faces"] += int(response.headers["X-Faces"])
                    stats["completed"] += 1
                elif response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")) * rng.uniform(0.5, 1.5))
                continue
            response = await client.post("/v1/jobs/reconstruct", files={"file": ("photo.jpg", data, "image/jpeg")})
            stats["status"][f"POST /v1/jobs/reconstruct {response.status_code}"] += 1
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")) * rng.uniform(0.5, 1.5))
                continue
            if response.status_code != 202:
                continue
            job = response.json()
            states = []
            async with client.stream("GET", job["urls"]["events"]) as events:
                stats["status"][f"GET events {events.status_code}"] += 1
                async for line in events.aiter_lines():
                    if line.startswith("data:"):
                        state = json.loads(line[5:])["state"]
                        if not states or states[-1] != state:
                            states.append(state)
            stats["orders"][" > ".join(states)] += 1
            summary = await client.get(job["urls"]["self"])
            stats["status"][f"GET job {summary.status_code}"] += 1
            body = summary.json()
            if body.get("state") == "done":
                result = await client.get(job["urls"]["result"], params={"format": "glb"})
                stats["status"][f"GET result {result.status_code}"] += 1
                if result.status_code == 200:
                    stats["completed"] += 1
                    stats["faces"] += body["faces"]
                    stats["job_ms"].append((time.perf_counter() - started) * 1e3)
                    for stage, ms in body["timings_ms"].items():
                        stats["stages"][stage].append(ms)
            else:
                stats["failed_jobs"].append(body.get("error"))
            deleted = await client.delete(job["urls"]["self"])
            stats["status"][f"DELETE job {deleted.status_code}"] += 1
        except (httpx2.TransportError, httpx2.TimeoutException) as exc:
            stats["dropped"].append(repr(exc))


async def _load(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    photos = [(args.images / name).read_bytes() for name in PHOTOS]
    process = psutil.Process(pid)
    stats: dict[str, Any] = {
        "status": collections.Counter(),
        "orders": collections.Counter(),
        "stages": collections.defaultdict(list),
        "sync_ms": [],
        "job_ms": [],
        "faces": 0,
        "completed": 0,
        "failed_jobs": [],
        "dropped": [],
    }
    limits = httpx2.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients * 2)
    async with httpx2.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        for data in photos * 2:  # warm up: rasters, pools, allocator arenas
            (await client.post("/v1/reconstruct", content=data, params={"format": "glb"})).raise_for_status()
        await asyncio.sleep(2)
        baseline = process.memory_info().rss / 2**20
        rss: list[float] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                rss.append(process.memory_info().rss / 2**20)
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        deadline = started + args.duration
        rng = random.Random(args.seed)
        await asyncio.gather(
            *(_client(client, photos, deadline, random.Random(rng.random()), stats) for _ in range(args.clients))
        )
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        metrics = (await client.get("/metrics")).text
        await asyncio.sleep(args.settle)
        after = process.memory_info().rss / 2**20
        health = (await client.get("/readyz")).status_code
    mesh_calls = re.search(r"^retinaserve_mesh_batch_size_count (\S+)$", metrics, re.M)
    mesh_faces = re.search(r"^retinaserve_mesh_batch_size_sum (\S+)$", metrics, re.M)
    fine_stages = {}
    for stage in ("queue", "decode", "detect", "crop", "geometry", "texture", "export"):
        count = re.search(rf'^retinaserve_reconstruct_stage_seconds_count{{stage="{stage}"}} (\S+)$', metrics, re.M)
        total = re.search(rf'^retinaserve_reconstruct_stage_seconds_sum{{stage="{stage}"}} (\S+)$', metrics, re.M)
        if count and total and float(count[1]):
            fine_stages[stage] = round(float(total[1]) / float(count[1]) * 1e3, 1)
    statuses = dict(sorted(stats["status"].items()))
    bad = {k: v for k, v in statuses.items() if not re.search(r" (200|202|429)$", k)}
    return {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "completed": stats["completed"],
        "reconstructions_per_s": round(stats["completed"] / elapsed, 2),
        "faces_per_s": round(stats["faces"] / elapsed, 2),
        "statuses": statuses,
        "unexpected_statuses": bad,
        "dropped_connections": stats["dropped"][:20],
        "n_dropped": len(stats["dropped"]),
        "failed_jobs": stats["failed_jobs"][:20],
        "event_orders": dict(stats["orders"].most_common()),
        "job_stage_ms": {stage: _percentiles(values) for stage, values in stats["stages"].items()},
        "job_end_to_end_ms": _percentiles(stats["job_ms"]),
        "sync_end_to_end_ms": _percentiles(stats["sync_ms"]),
        "server_stage_mean_ms": fine_stages,
        "mesh_faces_per_call": round(float(mesh_faces[1]) / float(mesh_calls[1]), 2) if mesh_calls else None,
        "rss_mib": {
            "baseline": round(baseline, 1),
            "peak": round(max(rss), 1),
            "after": round(after, 1),
            "settle_s": args.settle,
        },
        "readyz_after": health,
    }


def load(args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--log-level", "warning", *args.server_flags]
    with running_server(flags, log_path=args.log) as (base, pid):
        report = asyncio.run(_load(base, pid, args))
    report["server_log_tracebacks"] = args.log.read_text().count("Traceback")
    print(json.dumps({k: v for k, v in report.items() if k not in ("job_stage_ms",)}, indent=1))
    print(f"\n{'job stage':12} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for stage, p in report["job_stage_ms"].items():
        print(f"{stage:12} {p['n']:6d} {p.get('p50', 0):9.1f} {p.get('p99', 0):9.1f}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("memory", "load"):
        command = sub.add_parser(name)
        command.add_argument("--images", type=Path, required=True, help="../shared/images")
        command.add_argument("--json", type=Path)
        command.add_argument("--log", type=Path, default=Path(f"out/serve_reconstruct/{name}_server.log"))
    sub.choices["memory"].add_argument("--repeats", type=int, default=3)
    load_parser = sub.choices["load"]
    load_parser.add_argument("--clients", type=int, default=20)
    load_parser.add_argument("--duration", type=float, default=120)
    load_parser.add_argument("--settle", type=float, default=10, help="idle seconds before the 'after' RSS")
    load_parser.add_argument("--seed", type=int, default=0)
    load_parser.add_argument("--server-flags", nargs=argparse.REMAINDER, default=[], help="passed to the server")
    args = parser.parse_args()
    report = memory(args) if args.command == "memory" else load(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.command == "load" and (
        report["unexpected_statuses"] or report["n_dropped"] or report["readyz_after"] != 200
    ):
        raise SystemExit("FAILED: answers other than 200/202/429, dropped connections, or an unhealthy server")


if __name__ == "__main__":
    main()
