"""Throughput and latency of POST /v1/detect under wrk at several client counts: the server's automatic settings,
dynamic batching forced on, and off; against the engine's own one-at-a-time rate in this process.

    python benchmarks/serve_load.py --image ../shared/images/six_people.jpg --clients 1 8 32 --duration 10 \
        --json out/serve_load.json

The ``ray ...`` modes run the same API as a Ray Serve application (``serve --ray``: an HTTP ingress and model
replicas behind ``@serve.batch``; the server process starts a local Ray cluster):

    python benchmarks/serve_load.py --image ../shared/images/grace_hopper.jpg --clients 8 32 \
        --modes "batching on" "ray 1 replica" "ray 2 replicas" --json out/serve_ray.json

Starts the server on 127.0.0.1 (a free port) once per mode, runs wrk (Debian package ``wrk``) for a bounded time
per client count, and reads the batch-size metric to show how many images each model call carried. The engine's
rate (the default ``Detector()`` on the same JPEG bytes, decode included, one call after another) is measured
before and after the server runs; the server's req/s is shown as a fraction of it. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from serve_common import running_server

MODES = {
    "auto": [],
    "batching on": ["--max-batch", "8", "--max-wait-ms", "5"],
    "batching off": ["--max-batch", "1"],
    # the Ray Serve application (`serve --ray`, a local Ray cluster started by the server), same batching settings
    "ray 1 replica": ["--ray", "--replicas", "1", "--max-batch", "8", "--max-wait-ms", "5"],
    "ray 2 replicas": ["--ray", "--replicas", "2", "--max-batch", "8", "--max-wait-ms", "5"],
}


def engine_rate(image: bytes, model: str | None, seconds: float, device: str | None = None) -> float:
    """Images/s of the default Detector (the server's automatic engine) on ``image``, one call after another."""
    from retinaserve import Detector
    from retinaserve.memory import tune_allocator

    tune_allocator()
    detector = Detector(model, device=device) if model else Detector(device=device)
    for _ in range(3):
        detector.run([image])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        detector.run([image])
        count += 1
    return count / (time.perf_counter() - start)


def batch_counts(base: str) -> tuple[float, float]:
    """(model calls, images) so far, from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    count = re.search(r"^retinaserve_batch_size_count (\S+)$", text, re.M)
    total = re.search(r"^retinaserve_batch_size_sum (\S+)$", text, re.M)
    return (float(count[1]) if count else 0.0), (float(total[1]) if total else 0.0)


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, script: Path, clients: int, duration_s: int) -> dict[str, float]:
    threads = min(clients, 2)
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{duration_s}s", "--latency", "--timeout", "30s",
               "-s", str(script), url]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration_s + 60).stdout
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)$", output, re.M)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1]),  # type: ignore[index]
        "p50_ms": to_ms(latency["50"]),
        "p99_ms": to_ms(latency["99"]),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": errors[1] if errors else "",  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--precision", default="fp32", help="the server's --precision (non-fp32 uses the engine)")
    parser.add_argument("--device", help="the server's --device: cpu, cuda, cuda:N (default: the server's, cpu)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path("out/serve_load"))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--server-flags", default="", help='more flags for every mode\'s server, e.g. "--max-queue-delay-ms 3000"'
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(
            'wrk.method = "POST"\n'
            f'local f = io.open("{args.image.resolve()}", "rb")\n'
            'wrk.body = f:read("*a")\nf:close()\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
    script = Path(lua.name)
    rows = []
    rate = (args.image.read_bytes(), args.model, args.duration, args.device)
    engine_rates = [engine_rate(*rate)] if args.precision == "fp32" else []
    for mode in args.modes:
        flags = MODES[mode]
        model_flags = ["--model", args.model] if args.model else []
        model_flags += ["--device", args.device] if args.device else []
        server_flags = [
            *flags,
            *model_flags,
            "--precision",
            args.precision,
            "--max-queue",
            "256",
            "--log-level",
            "warning",
            *args.server_flags.split(),
        ]
        log_path = args.log_dir / f"{mode.replace(' ', '_')}.log"
        with running_server(server_flags, log_path=log_path, ready_timeout_s=300) as (base, _):
            url = f"{base}/v1/detect"
            run_wrk(url, script, 2, 3)  # warm-up, not reported
            for clients in args.clients:
                calls_before, images_before = batch_counts(base)
                result = run_wrk(url, script, clients, args.duration)
                calls, images = batch_counts(base)
                mean_batch = (images - images_before) / max(calls - calls_before, 1)
                ok_per_s = (result["requests"] - result["non_2xx"]) / args.duration
                rows.append(
                    {
                        "mode": mode,
                        "clients": clients,
                        **result,
                        "ok_per_s": round(ok_per_s, 2),
                        "mean_batch": round(mean_batch, 2),
                    }
                )
                print(f"{mode:13} {clients:3} clients: {result['rps']:7.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
                      f"p99 {result['p99_ms']:7.1f} ms  mean batch {mean_batch:4.2f}  non-2xx {result['non_2xx']}",
                      flush=True)  # fmt: skip
    script.unlink()
    if engine_rates:
        engine_rates.append(engine_rate(*rate))
    engine = statistics.median(engine_rates) if engine_rates else float("nan")
    print(f"\nengine (default Detector, one call after another, decode included): {engine:.1f} img/s "
          f"(before and after: {', '.join(f'{r:.1f}' for r in engine_rates)})")  # fmt: skip
    print("\n| mode | clients | req/s | 2xx/s | 2xx/s x engine | p50 ms | p99 ms | mean batch | non-2xx |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["vs_engine"] = r["ok_per_s"] / engine  # answered images, not refusals
        print(f"| {r['mode']} | {r['clients']} | {r['rps']:.1f} | {r['ok_per_s']:.1f} | {r['vs_engine']:.2f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.2f} | {r['non_2xx']} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "image": str(args.image),
                    "duration_s": args.duration,
                    "server_flags": args.server_flags,
                    "engine_ips": engine_rates,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
