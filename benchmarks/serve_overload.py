"""Overload of a live server on loopback by normal, expensive, hostile and abandoning clients at once: does it shed
load, stay live, keep its memory bounded and recover? Prints a table and a PASS/FAIL line per goal for each phase.

    RETINASERVE_WEIGHTS_DIR=../shared/weights:../shared/weights/3d:$HOME/.cache/retinaserve \
        python benchmarks/serve_overload.py --clients 64 256 --seconds 30 --json out/serve_overload.json

Starts ``python -m retinaserve.serve`` on 127.0.0.1 (a free port; ``--server-arg`` passes options on, e.g.
``--server-arg "--max-queue 32"``), or attacks ``--base URL``. Each ``--clients`` count is one phase of ``--seconds``
in which closed-loop clients (each sends its next request when the last one is answered; after a 429/503 it waits
the Retry-After, at most 2 s, unless ``--no-backoff``) split by ``--normal/--expensive/--hostile`` send:

- normal: POST /v1/detect with the photo and default options; ``--abandoning`` of these clients give up after
  ``--abandon-after`` s (counted apart, never a failure);
- expensive, allowed but costly: det_size=2048x2048; threshold=0&nms=1&long_side=2048; /v1/beautify with
  threshold=0&nms=1 on a 6000x4000 JPEG; /v1/detect/batch of five 5000x5000 JPEGs (125 Mpx, over the server's
  default in-flight budget of 100 Mpx);
- hostile: ~9.6 MB images whose headers are slow to parse (``hostile_images``: empty PNG chunks, JPEG COM markers,
  GIF comment extensions).

Meanwhile /healthz is requested every 50 ms on a schedule from a process of its own (each probe on its own thread,
so a stalled server shows in every probe that waits on it, and the load generator's busy event loop adds no lag) and
the server's RSS (with its children) is sampled every 0.5 s. Before the first phase, sequential normal requests give
the unloaded p50/p99; when a phase's time is up its clients send nothing new, and the recovery time is how long
until a normal request (on a separate connection pool) answers 200 within ``--latency-factor`` x the unloaded p99.
In-flight requests are still waited for (``--timeout``) and counted. Payloads are built once, before the server
starts; one event loop drives every client, so the client's own CPU and loop lag are reported too. Exits 1 when a
goal fails. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import psutil
from hostile_images import gif_with_comments, jpeg_with_comments, png_with_empty_chunks
from PIL import Image
from serve_common import running_server

KINDS = ("normal", "abandoning", "expensive", "hostile")
TIMEOUT, ABANDONED, CONNECTION_ERROR = "timeout", "abandoned", "connection_error"
"""Outcomes without an HTTP status: the client's timeout (a failure), an abandoning client's give-up (expected),
a refused, reset or cut connection."""
HEALTHZ_INTERVAL_S = 0.05
RSS_INTERVAL_S = 0.5
RECOVERY_POLL_S = 0.1
MAX_BACKOFF_S = 2.0
RAW = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class Payload:
    """One request a client sends again and again, its bytes built once."""

    kind: str
    variant: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: tuple[tuple[str, tuple[str, bytes, str]], ...] = ()
    timeout_s: float | None = None
    """A client timeout of its own (abandoning clients); None: the client's."""

    def request(self) -> dict[str, Any]:
        """Keyword arguments for ``AsyncClient.post``."""
        out: dict[str, Any] = {"url": self.url, "params": self.params}
        if self.files:
            out["files"] = list(self.files)
        else:
            out["content"], out["headers"] = self.content, RAW
        if self.timeout_s is not None:
            out["timeout"] = self.timeout_s
        return out

    def describe(self) -> dict[str, Any]:
        sizes = [len(data) for _, (_, data, _) in self.files] if self.files else [len(self.content or b"")]
        return {"url": self.url, "params": self.params, "bytes": sizes, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class Record:
    """One request's outcome: an HTTP status as text, or TIMEOUT / ABANDONED / CONNECTION_ERROR."""

    kind: str
    variant: str
    outcome: str
    latency_s: float


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def build_payloads(photo: Path, crowd: Path, abandon_after_s: float) -> dict[str, list[Payload]]:
    """Every request the clients send, by kind (a client cycles through its kind's list)."""
    photo_bytes = photo.read_bytes()
    crowd_image = Image.open(crowd).convert("RGB")
    tiled = Image.new("RGB", (crowd_image.width * 2, crowd_image.height * 2))
    for x in (0, crowd_image.width):
        for y in (0, crowd_image.height):
            tiled.paste(crowd_image, (x, y))
    large = jpeg(tiled.resize((6000, 4000), Image.Resampling.BILINEAR), quality=90)  # 24 Mpx, under the 25 Mpx limit
    square = jpeg(crowd_image.resize((5000, 5000), Image.Resampling.BILINEAR))  # 25 Mpx, at the limit
    batch = tuple(("files", (f"square{i}.jpg", square, "image/jpeg")) for i in range(5))
    all_faces = {"threshold": "0", "nms": "1"}
    return {
        "normal": [Payload("normal", "detect", "/v1/detect", content=photo_bytes)],
        "abandoning": [
            Payload(
                "abandoning",
                f"detect, gives up after {abandon_after_s:g} s",
                "/v1/detect",
                content=photo_bytes,
                timeout_s=abandon_after_s,
            )
        ],
        "expensive": [
            Payload("expensive", "det_size=2048x2048", "/v1/detect", {"det_size": "2048x2048"}, photo_bytes),
            Payload(
                "expensive",
                "threshold=0 nms=1 long_side=2048",
                "/v1/detect",
                {**all_faces, "long_side": "2048"},
                photo_bytes,
            ),
            Payload("expensive", "beautify 6000x4000 threshold=0 nms=1", "/v1/beautify", all_faces, large),
            Payload("expensive", "batch 5 x 5000x5000", "/v1/detect/batch", files=batch),
        ],
        "hostile": [
            Payload("hostile", "PNG, empty chunks", "/v1/detect", content=png_with_empty_chunks()),
            Payload("hostile", "JPEG, COM markers", "/v1/detect", content=jpeg_with_comments(template=photo_bytes)),
            Payload("hostile", "GIF, comment extensions", "/v1/detect", content=gif_with_comments()),
        ],
    }


def header_parse_seconds(data: bytes, repeats: int) -> float:
    """Median time of Pillow's ``Image.open(...).size`` on ``data`` (the header only, no pixels)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with Image.open(io.BytesIO(data)) as image:
            _ = image.size
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentile_ms(values_s: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values_s, q)) * 1e3, 1) if values_s else None


def machine() -> dict[str, Any]:
    """The CPU this ran on (``lscpu``'s model name), its cores, memory and Python."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    return {
        "cpu_model": model[1].strip() if model else platform.processor(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def allocate(clients: int, fractions: dict[str, float], abandoning: float) -> dict[str, int]:
    """Clients per kind (largest remainder); ``abandoning`` is a fraction of the normal clients."""
    exact = {kind: clients * share for kind, share in fractions.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(exact, key=lambda kind: exact[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: clients - sum(counts.values())]:
        counts[kind] += 1
    gives_up = round(counts["normal"] * abandoning)
    return {"normal": counts["normal"] - gives_up, "abandoning": gives_up, "expensive": counts["expensive"],
            "hostile": counts["hostile"]}  # fmt: skip


class ServerProcess:
    """The server's process and its children (workers), for RSS and CPU time; every reading None without a pid."""

    def __init__(self, pid: int | None) -> None:
        self.process = psutil.Process(pid) if pid else None

    def _tree(self) -> Iterator[psutil.Process]:
        if self.process is None:
            return
        yield self.process
        yield from self.process.children(recursive=True)

    def rss_mib(self) -> float | None:
        if self.process is None:
            return None
        total = 0
        for process in self._tree():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def cpu_s(self) -> float | None:
        if self.process is None:
            return None
        total = 0.0
        for process in self._tree():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total


def listening_pid(base: str) -> int | None:
    """The pid listening on ``base``'s port on this machine, if the OS lets us see it."""
    port = urllib.parse.urlsplit(base).port or 80
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    pids = {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    return pids.pop() if len(pids) == 1 else None


async def send(client: httpx2.AsyncClient, payload: Payload) -> tuple[Record, float]:
    """POST one payload: its record and the Retry-After it was told (0 without one)."""
    start = time.perf_counter()
    retry_after = 0.0
    try:
        response = await client.post(**payload.request())
    except httpx2.TimeoutException:
        outcome = ABANDONED if payload.timeout_s is not None else TIMEOUT
    except httpx2.TransportError:
        outcome = CONNECTION_ERROR
    else:
        outcome = str(response.status_code)
        try:
            retry_after = float(response.headers.get("retry-after", 0))
        except ValueError:
            retry_after = 1.0
    return Record(payload.kind, payload.variant, outcome, time.perf_counter() - start), retry_after


async def client_loop(
    client: httpx2.AsyncClient,
    payloads: list[Payload],
    offset: int,
    deadline: float,
    records: list[Record],
    backoff: bool,
) -> None:
    """One closed-loop client: the next payload as soon as the last is answered, until ``deadline``."""
    index = offset
    while time.monotonic() < deadline:
        record, retry_after = await send(client, payloads[index % len(payloads)])
        records.append(record)
        index += 1
        if backoff and record.outcome in ("429", "503"):
            await asyncio.sleep(max(0.0, min(retry_after or 1.0, MAX_BACKOFF_S, deadline - time.monotonic())))


def probe_healthz_process(
    base: str, headers: dict[str, str], stop: Any, results: Any, interval_s: float = HEALTHZ_INTERVAL_S
) -> None:
    """In a process of its own (so the load generator's busy event loop does not add its lag to the measurement):
    GET /healthz every ``interval_s`` on a fixed schedule, each probe on a thread of its own (not after the last
    answer, so a stalled server shows in every probe that waits on it), until ``stop`` is set; puts (latencies,
    failures) on ``results``."""
    latencies: list[float] = []
    failures: list[str] = []

    def one(client: httpx2.Client) -> None:
        start = time.perf_counter()
        try:
            status = client.get("/healthz").status_code
            if status != 200:
                failures.append(str(status))
        except httpx2.TimeoutException:
            failures.append(TIMEOUT)
        except httpx2.TransportError:
            failures.append(CONNECTION_ERROR)
        latencies.append(time.perf_counter() - start)

    limits = httpx2.Limits(max_connections=128, max_keepalive_connections=8)
    with (
        httpx2.Client(base_url=base, headers=headers, timeout=60, limits=limits) as client,
        ThreadPoolExecutor(128) as pool,
    ):
        next_at = time.monotonic()
        while not stop.is_set():
            pool.submit(one, client)
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    results.put((latencies, failures))


async def sample_rss(server: ServerProcess, stop: asyncio.Event, samples: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while not stop.is_set():
        rss = server.rss_mib()
        if rss is not None:
            samples.append((round(time.monotonic() - start, 2), round(rss, 1)))
        try:
            await asyncio.wait_for(stop.wait(), RSS_INTERVAL_S)
        except TimeoutError:
            pass


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late this process's event loop wakes up: large values mean the client, not the server, is slow."""
    while not stop.is_set():
        start = time.monotonic()
        await asyncio.sleep(0.05)
        lags.append(time.monotonic() - start - 0.05)


async def recovery_seconds(
    client: httpx2.AsyncClient, payload: Payload, within_s: float, since: float, give_up_s: float
) -> float | None:
    """Seconds from ``since`` until ``payload`` is answered 200 within ``within_s``, polling one request at a time,
    at most every RECOVERY_POLL_S; each poll gives up after ``within_s`` (a later answer could not count, and a
    poll stuck in a jammed queue would hide the moment the server recovers). None when not after ``give_up_s``."""
    quick = replace(payload, timeout_s=within_s)
    while time.monotonic() - since < give_up_s:
        start = time.monotonic()
        record, _ = await send(client, quick)
        if record.outcome == "200" and record.latency_s <= within_s:
            return time.monotonic() - since
        await asyncio.sleep(max(0.0, RECOVERY_POLL_S - (time.monotonic() - start)))
    return None


async def unloaded_latency(base: str, headers: dict[str, str], payload: Payload, count: int) -> dict[str, Any]:
    """p50/p99 of ``count`` sequential requests on an idle server (after 5 not counted)."""
    async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        latencies = []
        for number in range(count + 5):
            record, _ = await send(client, payload)
            if record.outcome != "200":
                raise SystemExit(f"the unloaded server answered {record.outcome} to {payload.variant}")
            if number >= 5:
                latencies.append(record.latency_s)
    return {"requests": count, "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}


def summarise(records: Sequence[Record]) -> dict[str, Any]:
    """Count, outcome histogram and latency of the admitted (200) answers."""
    admitted = [r.latency_s for r in records if r.outcome == "200"]
    return {
        "count": len(records),
        "outcomes": dict(sorted(collections.Counter(r.outcome for r in records).items())),
        "p50_ms": percentile_ms(admitted, 50),
        "p99_ms": percentile_ms(admitted, 99),
    }


async def run_phase(
    base: str,
    headers: dict[str, str],
    server: ServerProcess,
    payloads: dict[str, list[Payload]],
    clients: int,
    unloaded: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    fractions = {"normal": args.normal, "expensive": args.expensive, "hostile": args.hostile}
    allocation = allocate(clients, fractions, args.abandoning)
    records: list[Record] = []
    healthz: list[float] = []
    healthz_failures: list[str] = []
    rss: list[tuple[float, float]] = []
    lags: list[float] = []
    stop_probes, stop_rss = asyncio.Event(), asyncio.Event()
    rss_before = server.rss_mib()
    load_limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    client_cpu_before, server_cpu_before = time.process_time(), server.cpu_s()
    async with (
        httpx2.AsyncClient(base_url=base, headers=headers, timeout=args.timeout, limits=load_limits) as load,
        httpx2.AsyncClient(base_url=base, headers=headers) as recovery_client,
    ):
        context = multiprocessing.get_context("spawn")
        probe_stop, probe_results = context.Event(), context.Queue()
        prober = context.Process(target=probe_healthz_process, args=(base, headers, probe_stop, probe_results))
        prober.start()
        background = [asyncio.create_task(loop_lag(stop_probes, lags))]
        rss_task = asyncio.create_task(sample_rss(server, stop_rss, rss))
        started = time.monotonic()
        deadline = started + args.seconds
        tasks = []
        for kind in KINDS:
            for number in range(allocation[kind]):
                loop = client_loop(load, payloads[kind], number, deadline, records, not args.no_backoff)
                tasks.append(asyncio.create_task(loop))
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        stopped = time.monotonic()
        within_s = args.latency_factor * unloaded["p99_ms"] / 1e3

        async def drain() -> float:
            await asyncio.gather(*tasks)
            return time.monotonic() - stopped

        recovery, drained = await asyncio.gather(
            recovery_seconds(recovery_client, payloads["normal"][0], within_s, stopped, args.recovery_give_up), drain()
        )
        stop_probes.set()
        await asyncio.gather(*background)
        probe_stop.set()
        latencies, failures = await asyncio.to_thread(probe_results.get, True, 60)
        prober.join(timeout=10)
        healthz.extend(latencies)
        healthz_failures.extend(failures)
        client_cpu = time.process_time() - client_cpu_before
        server_cpu_after = server.cpu_s()
        wall = time.monotonic() - started
        await asyncio.sleep(args.settle)
        rss_after = server.rss_mib()
        stop_rss.set()
        await rss_task
    by_kind: dict[str, Any] = {}
    for kind in KINDS:
        mine = [r for r in records if r.kind == kind]
        variants = {p.variant: summarise([r for r in mine if r.variant == p.variant]) for p in payloads[kind]}
        by_kind[kind] = {**summarise(mine), "variants": variants}
    peak = max([mib for _, mib in rss] + [m for m in (rss_before, rss_after) if m is not None], default=None)
    return {
        "clients": clients,
        "allocation": allocation,
        "seconds": args.seconds,
        "drain_s": round(drained, 2),
        "recovery_s": None if recovery is None else round(recovery, 2),
        "recovery_within_ms": round(within_s * 1e3, 1),
        "kinds": by_kind,
        "healthz": {
            "count": len(healthz),
            "failures": dict(collections.Counter(healthz_failures)),
            "p50_ms": percentile_ms(healthz, 50),
            "p99_ms": percentile_ms(healthz, 99),
            "max_ms": percentile_ms(healthz, 100),
        },
        "rss_mib": {
            "before": None if rss_before is None else round(rss_before, 1),
            "peak": None if peak is None else round(peak, 1),
            "after": None if rss_after is None else round(rss_after, 1),
            "samples": rss,
        },
        "cpu_percent": {
            "client": round(100 * client_cpu / wall, 1),
            "server": None
            if server_cpu_after is None or server_cpu_before is None
            else round(100 * (server_cpu_after - server_cpu_before) / wall, 1),
        },
        "client_loop_lag_ms": {"p99": percentile_ms(lags, 99), "max": percentile_ms(lags, 100)},
    }


@dataclass(frozen=True)
class Goal:
    name: str
    passed: bool | None
    """None: not measured (e.g. RSS of a server on another machine)."""
    detail: str


def judge(phase: dict[str, Any], unloaded: dict[str, Any], args: argparse.Namespace) -> list[Goal]:
    """The phase's goals: shed load with early refusals, answer everything, keep admitted work fast, stay live,
    keep memory bounded, recover quickly."""
    kinds = phase["kinds"]
    totals: collections.Counter[str] = collections.Counter()
    for kind in KINDS:
        totals.update(kinds[kind]["outcomes"])
    answers = sum(n for outcome, n in totals.items() if outcome.isdigit())
    fraction_504 = totals["504"] / answers if answers else 0.0
    unanswered = {
        kind: n
        for kind in KINDS
        if kind != "abandoning"
        and (n := kinds[kind]["outcomes"].get(TIMEOUT, 0) + kinds[kind]["outcomes"].get(CONNECTION_ERROR, 0))
    }
    server_errors = {o: n for o, n in totals.items() if o.isdigit() and int(o) >= 500 and o not in ("503", "504")}
    normal_p99 = kinds["normal"]["p99_ms"]
    latency_limit = args.latency_factor * unloaded["p99_ms"]
    healthz_p99 = phase["healthz"]["p99_ms"]
    rss = phase["rss_mib"]
    recovery = phase["recovery_s"]
    if rss["before"] is None:
        rss_goal = Goal("RSS bounded", None, "no server pid on this machine")
    else:
        growth, retained = rss["peak"] - rss["before"], rss["after"] - rss["before"]
        rss_goal = Goal(
            "RSS bounded",
            growth <= args.max_rss_growth_mib and retained <= args.max_rss_retained_mib,
            f"before {rss['before']:.0f} MiB, peak {rss['peak']:.0f} (+{growth:.0f}, "
            f"limit +{args.max_rss_growth_mib:g}), "
            f"after {rss['after']:.0f} (+{retained:.0f}, limit +{args.max_rss_retained_mib:g})",
        )
    return [
        Goal(
            "few 504s",
            fraction_504 <= args.max_504_fraction,
            f"{totals['504']} of {answers} answers are 504 ({fraction_504:.1%}, limit {args.max_504_fraction:.1%})",
        ),
        Goal(
            "every request answered",
            not unanswered,
            f"client timeouts ({args.timeout:g} s) or connection errors: {unanswered or 'none'}",
        ),
        Goal("no server errors", not server_errors, f"5xx other than 503/504: {server_errors or 'none'}"),
        Goal(
            "admitted normal p99",
            normal_p99 is not None and normal_p99 <= latency_limit,
            f"{normal_p99} ms over {kinds['normal']['outcomes'].get('200', 0)} answers "
            f"(limit {args.latency_factor:g} x unloaded p99 {unloaded['p99_ms']} = {latency_limit:.1f} ms)",
        ),
        Goal(
            "/healthz p99",
            healthz_p99 is not None and healthz_p99 < args.healthz_p99_ms,
            f"{healthz_p99} ms (max {phase['healthz']['max_ms']} ms, failures {phase['healthz']['failures'] or 0}; "
            f"limit {args.healthz_p99_ms:g} ms)",
        ),
        rss_goal,
        Goal(
            "recovery",
            recovery is not None and recovery <= args.recovery_s,
            f"{recovery if recovery is not None else f'> {args.recovery_give_up:g}'} s after the load stopped "
            f"(limit {args.recovery_s:g} s; in-flight requests drained in {phase['drain_s']} s)",
        ),
    ]


def print_phase(phase: dict[str, Any], goals: list[Goal]) -> None:
    allocation = ", ".join(f"{n} {kind}" for kind, n in phase["allocation"].items())
    print(f"\n== {phase['clients']} clients for {phase['seconds']:g} s ({allocation})")
    columns = ("200", "429", "503", "504", TIMEOUT, CONNECTION_ERROR, ABANDONED)
    print(f"{'kind / variant':40} {'sent':>6} {'200':>6} {'429':>6} {'503':>5} {'504':>5} {'timeout':>7} "
          f"{'conn':>5} {'gave up':>7} {'p50 ms':>8} {'p99 ms':>8}  other")  # fmt: skip

    def row(name: str, summary: dict[str, Any]) -> None:
        outcomes = summary["outcomes"]
        counts = [outcomes.get(c, 0) for c in columns]
        other = " ".join(f"{o}:{n}" for o, n in outcomes.items() if o not in columns)
        p50 = "-" if summary["p50_ms"] is None else f"{summary['p50_ms']:.0f}"
        p99 = "-" if summary["p99_ms"] is None else f"{summary['p99_ms']:.0f}"
        print(f"{name:40} {summary['count']:6} {counts[0]:6} {counts[1]:6} {counts[2]:5} {counts[3]:5} "
              f"{counts[4]:7} {counts[5]:5} {counts[6]:7} {p50:>8} {p99:>8}  {other}")  # fmt: skip

    for kind, summary in phase["kinds"].items():
        row(kind, summary)
        if len(summary["variants"]) > 1:
            for variant, variant_summary in summary["variants"].items():
                row(f"  {variant}", variant_summary)
    h, rss, cpu = phase["healthz"], phase["rss_mib"], phase["cpu_percent"]
    print(f"/healthz: {h['count']} probes, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms, "
          f"failures {h['failures'] or 0}")  # fmt: skip
    lag = phase["client_loop_lag_ms"]
    print(f"server RSS MiB: before {rss['before']}, peak {rss['peak']}, after {rss['after']}; "
          f"CPU % of one core: server {cpu['server']}, client {cpu['client']} "
          f"(client loop lag p99 {lag['p99']} ms, max {lag['max']} ms)")  # fmt: skip
    for goal in goals:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[goal.passed]
        print(f"{verdict}  {goal.name}: {goal.detail}")


async def attack(
    base: str, pid: int | None, payloads: dict[str, list[Payload]], args: argparse.Namespace
) -> dict[str, Any]:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        models = await client.get("/v1/models")
    serving = models.json() if models.status_code == 200 else {}
    serving = {k: v for k, v in serving.items() if k in ("loaded", "precision", "engine")}
    unloaded = await unloaded_latency(base, headers, payloads["normal"][0], args.baseline_requests)
    print(f"unloaded normal requests: {unloaded}", flush=True)
    server = ServerProcess(pid)
    phases = []
    for number, clients in enumerate(args.clients):
        if number:
            await asyncio.sleep(args.pause)
        phase = await run_phase(base, headers, server, payloads, clients, unloaded, args)
        goals = judge(phase, unloaded, args)
        phase["goals"] = [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in goals]
        print_phase(phase, goals)
        phases.append(phase)
    return {"serving": serving, "unloaded": unloaded, "phases": phases}


@contextmanager
def server_for(args: argparse.Namespace, flags: list[str]) -> Iterator[tuple[str, int | None]]:
    """The server to attack: ``--base`` as it is (its pid if it listens here), else one started with ``flags``."""
    if args.base:
        yield args.base.rstrip("/"), args.server_pid or listening_pid(args.base)
        return
    with running_server(flags, log_path=args.log) as (base, pid):
        yield base, pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "images"
    parser.add_argument("--image", type=Path, default=shared / "six_people.jpg", help="the normal clients' photo")
    parser.add_argument("--crowd", type=Path, default=shared / "crowd_selfie.jpg", help="makes the large JPEGs")
    parser.add_argument("--clients", type=int, nargs="+", default=[64, 256], help="one phase per count")
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase")
    parser.add_argument("--normal", type=float, default=0.70, help="fraction of the clients")
    parser.add_argument("--expensive", type=float, default=0.15, help="fraction of the clients")
    parser.add_argument("--hostile", type=float, default=0.15, help="fraction of the clients")
    parser.add_argument("--abandoning", type=float, default=0.1, help="fraction of the normal clients that give up")
    parser.add_argument("--abandon-after", type=float, default=0.3, help="their client timeout, s")
    parser.add_argument("--timeout", type=float, default=60, help="every other client's timeout, s (a failure)")
    parser.add_argument("--no-backoff", action="store_true", help="retry at once after 429/503 (no Retry-After)")
    parser.add_argument("--baseline-requests", type=int, default=40, help="sequential requests for the unloaded p99")
    parser.add_argument("--pause", type=float, default=2, help="seconds between phases")
    parser.add_argument("--settle", type=float, default=2, help="seconds after a phase before RSS 'after'")
    parser.add_argument("--pil-repeats", type=int, default=3, help="Pillow header parses timed per hostile file")
    goals = parser.add_argument_group("goals")
    goals.add_argument("--max-504-fraction", type=float, default=0.01)
    goals.add_argument("--latency-factor", type=float, default=2.0, help="admitted normal p99 <= this x unloaded p99")
    goals.add_argument("--healthz-p99-ms", type=float, default=100)
    goals.add_argument("--max-rss-growth-mib", type=float, default=1536, help="peak - before")
    goals.add_argument("--max-rss-retained-mib", type=float, default=256, help="after - before")
    goals.add_argument("--recovery-s", type=float, default=2.0)
    goals.add_argument("--recovery-give-up", type=float, default=60, help="stop polling for recovery after this, s")
    server = parser.add_argument_group("server")
    server.add_argument("--base", help="attack this running server (e.g. http://127.0.0.1:8080) instead")
    server.add_argument("--server-pid", type=int, help="with --base: its pid, for RSS (default: found by its port)")
    server.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help='options for the started server, split like a shell: --server-arg "--max-queue 32" (repeatable)',
    )
    server.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, default=Path("out/serve_overload/server.log"))
    args = parser.parse_args()
    if abs(args.normal + args.expensive + args.hostile - 1) > 1e-6:
        parser.error("--normal + --expensive + --hostile must be 1")

    payloads = build_payloads(args.image, args.crowd, args.abandon_after)
    pil: dict[str, Any] = {}
    for payload in payloads["hostile"]:
        assert payload.content is not None
        seconds = header_parse_seconds(payload.content, args.pil_repeats)
        pil[payload.variant] = {"bytes": len(payload.content), "image_open_size_s": round(seconds, 3)}
        print(f"Pillow Image.open().size on {payload.variant} ({len(payload.content) / 1e6:.1f} MB): {seconds:.2f} s",
              flush=True)  # fmt: skip
    flags = ["--log-level", "warning", *(part for arg in args.server_arg for part in shlex.split(arg))]
    with server_for(args, flags) as (base, pid):
        report = asyncio.run(attack(base, pid, payloads, args))
    failed = [(p["clients"], g["name"]) for p in report["phases"] for g in p["goals"] if g["passed"] is False]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        output = {
            "machine": machine(),
            "server": {
                "base": args.base,
                "started_here": not args.base,
                "flags": None if args.base else flags,
                "pid": pid,
                "environment": {k: os.environ.get(k) for k in ("PYTHONPATH", "RETINASERVE_WEIGHTS_DIR")},
                **report["serving"],
            },
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "payloads": {f"{k}/{p.variant}": p.describe() for k, ps in payloads.items() for p in ps},
            "pil_header_parse": pil,
            "unloaded": report["unloaded"],
            "phases": report["phases"],
            "failed": failed,
            "command": [sys.executable, *sys.argv],
        }
        args.json.write_text(json.dumps(output, indent=1))
    if failed:
        raise SystemExit(f"FAIL: {len(failed)} goal(s): {failed}")


if __name__ == "__main__":
    main()
