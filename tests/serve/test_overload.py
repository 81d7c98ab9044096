"""The service under attack and overload, each finding of the hardening issue reproduced at small scale on a real
server on loopback: hostile image headers never stall the event loop, expensive requests are refused early (429
with Retry-After) or for good (413), beautify ends within its deadline, abandoned requests stop taking engine time,
slow and idle connections are closed, and shutdown under load answers JSON and exits 0."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from retinaserve.detection import Detector, ResizePolicy
from retinaserve.serve import ServeSettings, create_app
from retinaserve.serve.admission import network_pixels
from retinaserve.serve.errors import ApiError
from retinaserve.serve.inference import build_detector
from retinaserve.serve.uploads import probe_image

from ..conftest import CROWD, WEIGHTS
from .conftest import MODEL, live_server, settings, slow_app

ROOT = Path(__file__).resolve().parents[2]


def _hostile() -> ModuleType:
    """benchmarks/hostile_images.py, which serve_overload.py uses too (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("hostile_images", ROOT / "benchmarks" / "hostile_images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hostile = _hostile()


def rejected(base: str, reason: str) -> float:
    text = httpx2.get(f"{base}/metrics").text
    match = re.search(rf'^retinaserve_rejected_requests_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def model_calls(base: str) -> float:
    text = httpx2.get(f"{base}/metrics").text
    match = re.search(r"^retinaserve_batch_size_count (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("build", ["png_with_empty_chunks", "jpeg_with_comments", "gif_with_comments"])
def test_a_header_slower_than_its_budget_is_refused_within_it(build: str) -> None:
    data = getattr(hostile, build)(150_000)
    start = time.perf_counter()
    assert probe_image(data, max_pixels=10**8)[1:] == (64, 48)  # a valid image, only slow to parse
    unbounded = time.perf_counter() - start
    budget = unbounded / 10
    start = time.perf_counter()
    with pytest.raises(ApiError) as refused:
        probe_image(data, max_pixels=10**8, budget_s=budget)
    assert (refused.value.status, refused.value.code) == (413, "image_too_complex")
    assert time.perf_counter() - start < budget + 0.05 < unbounded  # the parse stopped, it did not run on


def test_hostile_headers_do_not_stall_the_event_loop(shared: object) -> None:
    """Parsing these on the event loop stalled every route (each ~0.5 s here; the 10 MB versions 1.3-3.2 s); now
    the parse runs on the worker pool and stops at its budget, and /healthz stays fast meanwhile."""
    files = [
        hostile.png_with_empty_chunks(150_000),
        hostile.jpeg_with_comments(400_000),
        hostile.gif_with_comments(600_000),
    ] * 3
    with live_server(create_app(settings(header_parse_ms=100))) as (base, _):

        async def run() -> tuple[list[httpx2.Response], list[float]]:
            async with httpx2.AsyncClient(timeout=60) as client:
                assert (await client.get(f"{base}/healthz")).status_code == 200
                latencies: list[float] = []
                uploads = asyncio.gather(*(client.post(f"{base}/v1/detect", content=data) for data in files))
                task = asyncio.ensure_future(uploads)
                while not task.done():
                    start = time.perf_counter()
                    assert (await client.get(f"{base}/healthz")).status_code == 200
                    latencies.append(time.perf_counter() - start)
                    await asyncio.sleep(0.01)
                return await task, latencies

        responses, latencies = asyncio.run(run())
    assert [r.status_code for r in responses] == [413] * len(files)
    assert {r.json()["error"]["code"] for r in responses} == {"image_too_complex"}
    assert len(latencies) >= 5
    ranked = sorted(latencies)
    assert ranked[int(0.9 * len(ranked))] < 0.1 and ranked[-1] < 0.25, ranked


def test_overload_is_refused_early_with_an_honest_retry_after(shared: object, six_people_bytes: bytes) -> None:
    """A burst beyond what the engine can start soon gets 429 at once (not a 504 after the timeout); what is
    admitted waits at most about the target queue delay."""
    with live_server(slow_app(0.3, max_batch=1, max_queue_delay_ms=400)) as (base, _):

        async def one(client: httpx2.AsyncClient) -> tuple[httpx2.Response, float]:
            start = time.perf_counter()
            response = await client.post(f"{base}/v1/detect?long_side=320", content=six_people_bytes)
            return response, time.perf_counter() - start

        async def burst() -> list[tuple[httpx2.Response, float]]:
            async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=12)) as client:
                return await asyncio.gather(*(one(client) for _ in range(12)))

        answers = asyncio.run(burst())
        admitted = [t for r, t in answers if r.status_code == 200]
        refused = [(r, t) for r, t in answers if r.status_code == 429]
        assert len(admitted) + len(refused) == 12 and 1 <= len(admitted) <= 4, [r.status_code for r, _ in answers]
        assert max(admitted) < 0.3 * 5, admitted  # 0.3 s a call: at most ~2 ahead of the last one admitted
        for response, seconds in refused:
            assert seconds < 0.5  # refused at once
            assert response.json()["error"]["code"] == "too_many_requests"
            assert int(response.headers["Retry-After"]) >= 1
        assert rejected(base, "engine_backlog") == len(refused)
        assert httpx2.post(f"{base}/v1/detect", content=six_people_bytes, timeout=30).status_code == 200


@dataclass
class PixelCostDetector:
    """A real detector that also takes 0.2 us per network input pixel (640x480: 61 ms, 2048x2048: 0.84 s), so
    the cost of an option is known in advance."""

    inner: Detector
    s_per_pixel: float = 2e-7

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def resize(self) -> ResizePolicy:
        return self.inner.resize

    def run(self, images: Sequence[Any], *, resize: ResizePolicy | None = None, **options: Any) -> list[Any]:
        for image in images:
            height, width = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
            time.sleep(self.s_per_pixel * network_pixels(height, width, resize or self.inner.resize))
        return self.inner.run(images, resize=resize, **options)


def pixel_cost_detector(s: ServeSettings) -> PixelCostDetector:
    detector = build_detector(s)
    assert isinstance(detector, Detector)
    return PixelCostDetector(detector)


def test_a_request_that_could_never_fit_gets_413(shared: object, six_people_bytes: bytes) -> None:
    # six_people is 1.13 Mpx: three of them are more than a 3 Mpx in-flight budget could ever hold
    with live_server(create_app(settings(max_pixels=2_000_000, max_pixels_in_flight=3_000_000))) as (base, _):
        files = [("files", (f"{i}.jpg", six_people_bytes, "image/jpeg")) for i in range(3)]
        response = httpx2.post(f"{base}/v1/detect/batch", files=files, timeout=30)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        assert "Retry-After" not in response.headers
        two = httpx2.post(f"{base}/v1/detect/batch", files=files[:2], timeout=30)
        assert two.status_code == 200 and [len(r["faces"]) for r in two.json()["results"]] == [6, 6]
    # more model time than the deadline: the cost model measured this detector at start-up
    with live_server(create_app(settings(request_timeout_s=0.5), detector_factory=pixel_cost_detector)) as (base, _):
        response = httpx2.post(f"{base}/v1/detect?det_size=2048x2048", content=six_people_bytes, timeout=30)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_expensive"
        assert rejected(base, "never_fits") == 1
        assert httpx2.post(f"{base}/v1/detect?long_side=96", content=six_people_bytes, timeout=30).status_code == 200


def test_low_thresholds_are_bounded_by_max_faces(shared: object, six_people_bytes: bytes) -> None:
    with live_server(create_app(settings(max_faces=300))) as (base, _):
        response = httpx2.post(f"{base}/v1/detect?threshold=0&nms=1", content=six_people_bytes, timeout=30)
        assert response.status_code == 200 and len(response.json()["faces"]) == 300
        too_many = httpx2.post(f"{base}/v1/detect?max_faces=301", content=six_people_bytes, timeout=30)
        assert too_many.status_code == 422 and "max_faces" in too_many.json()["error"]["message"]


def test_beautify_of_thousands_of_faces_ends_within_its_deadline(shared: object) -> None:
    """threshold=0&nms=1 finds thousands of 'faces'; smoothing is capped to max_render_faces and stops at the
    deadline, and the worker is free again afterwards."""
    crowd = Image.open(CROWD).convert("RGB")
    big = jpeg(crowd.resize((crowd.width * 2, crowd.height * 2)))
    with live_server(create_app(settings(request_timeout_s=2.0, max_render_faces=2000))) as (base, _):
        start = time.perf_counter()
        response = httpx2.post(f"{base}/v1/beautify?threshold=0&nms=1", content=big, timeout=60)
        took = time.perf_counter() - start
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert took < 2.0 + 1.0, took
        start = time.perf_counter()
        assert httpx2.post(f"{base}/v1/detect", content=big, timeout=30).status_code == 200
        assert time.perf_counter() - start < 2.0  # the pool is not still smoothing the abandoned image
    with live_server(create_app(settings(max_render_faces=8))) as (base, _):
        response = httpx2.post(f"{base}/v1/beautify?threshold=0&nms=1", content=big, timeout=60)
        assert response.status_code == 200
        assert response.headers["X-Faces"] == "1000"  # the server's max_faces
        assert response.headers["X-Faces-Smoothed"] == "8"


def test_an_abandoned_request_stops_taking_engine_time(shared: object, six_people_bytes: bytes) -> None:
    with live_server(slow_app(0.5, max_batch=1, max_queue_delay_ms=60_000)) as (base, _):
        calls_before = model_calls(base)

        async def give_up() -> None:
            async with httpx2.AsyncClient(timeout=0.3, limits=httpx2.Limits(max_connections=6)) as client:
                results = await asyncio.gather(
                    *(client.post(f"{base}/v1/detect", content=six_people_bytes) for _ in range(6)),
                    return_exceptions=True,
                )
            assert all(isinstance(r, httpx2.TimeoutException) for r in results), results

        asyncio.run(give_up())
        time.sleep(1.5)  # what was running finishes; nothing else may start
        assert model_calls(base) - calls_before <= 2  # at most the call running when they left (and one starting)
        assert rejected(base, "client_disconnected") >= 4
        text = httpx2.get(f"{base}/metrics").text
        assert 'route="/v1/detect",status="499"' in text
        assert httpx2.post(f"{base}/v1/detect", content=six_people_bytes, timeout=30).status_code == 200


def _raw(port: int, payload: bytes, *, wait_s: float) -> tuple[bytes, float]:
    """Send ``payload`` on a raw connection and read until the server closes it: (what came back, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.perf_counter()
        if payload:
            sock.sendall(payload)
        chunks = []
        sock.settimeout(wait_s)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunks.append(b"<still open>")
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), time.perf_counter() - start


def test_slow_and_idle_connections_are_closed(shared: object) -> None:
    app = create_app(settings(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8))
    with live_server(app) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        idle, seconds = _raw(port, b"", wait_s=5)
        assert idle == b"" and 0.4 < seconds < 2, (idle, seconds)
        head, seconds = _raw(port, b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n", wait_s=5)
        assert head.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in head and seconds < 2, head
        partial_body = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\xff\xd8\xff" * 3
        body, seconds = _raw(port, partial_body, wait_s=5)
        assert body.startswith(b"HTTP/1.1 408") and seconds < 2, body
        assert json.loads(body.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        # a cap on open connections: the ninth is answered 503 and closed at once
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        try:
            refused, seconds = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=5)
            assert refused.startswith(b"HTTP/1.1 503") and b'"unavailable"' in refused and seconds < 1, refused
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx2.get(f"{base}/healthz", timeout=5).status_code == 200


def test_draining_refuses_new_requests_and_answers_unfinished_ones_with_json_503(shared: object) -> None:
    """Once draining, a new request gets the JSON 503 at once; one still running at the end of the grace period is
    cancelled and answered the JSON 503 too (uvicorn alone answered it a plain-text 500)."""
    app = slow_app(1.5, max_batch=1, max_queue_delay_ms=60_000)
    image = jpeg(Image.open(CROWD).convert("RGB"))
    with TestClient(app) as client:
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(client.post("/v1/detect", content=image)))
        worker.start()
        time.sleep(0.5)  # in flight: the slow detector takes 1.5 s
        assert client.portal is not None
        client.portal.call(app.state.drain.begin, 0.3)
        late = client.get("/healthz")
        assert late.status_code == 503 and late.json()["error"]["code"] == "unavailable"
        assert late.headers["Retry-After"] == "1"
        worker.join()
        assert results[0].status_code == 503 and results[0].json()["error"]["code"] == "unavailable"


@pytest.mark.slow
def test_shutdown_under_load_answers_json_and_exits_0(shared: object, six_people_bytes: bytes) -> None:
    """SIGTERM to a real `retinaserve serve` process with more work in flight than its 1 s grace period: the
    requests it could finish get 200, the rest the JSON 503, and the process exits with status 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RETINASERVE_MAX_INPUT_SIDE": "4096"}
    command = [sys.executable, "-m", "retinaserve.serve", "--port", str(port), "--model", MODEL]
    command += ["--weights", str(WEIGHTS / "slim_Final.pth"), "--reconstruction-model", "none", "--no-warmup"]
    command += ["--graceful-shutdown", "1", "--max-queue-delay-ms", "60000", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

        async def load() -> list[Any]:
            async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=8)) as client:
                sends = [
                    client.post(f"{base}/v1/detect?det_size=4096x4096", content=six_people_bytes) for _ in range(8)
                ]
                tasks = [asyncio.ensure_future(send) for send in sends]
                await asyncio.sleep(0.5)
                process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        answers = asyncio.run(load())
        statuses = [a.status_code if isinstance(a, httpx2.Response) else repr(a) for a in answers]
        assert set(statuses) <= {200, 503} and 503 in statuses, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["error"]["code"] == "unavailable"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
