"""A real uvicorn server on a loopback port: concurrent requests are batched (seen in the batch-size metric),
batching can be turned off, a full queue answers 429, slow work 504, and shutdown finishes in-flight requests.

Admission by cost (tests/serve/test_overload.py) would refuse most of a burst; the tests of the queue itself turn
it off with a long ``max_queue_delay_ms``."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from retinaserve.serve import create_app

from .conftest import live_server, settings, slow_app

NO_ADMISSION = {"max_queue_delay_ms": 60_000}
"""Admit whatever the count-based queue takes."""


def batch_metrics(base: str) -> tuple[float, float]:
    """(number of model calls, images in them) from the server's /metrics."""
    text = httpx2.get(f"{base}/metrics").text
    count = float(re.search(r"^retinaserve_batch_size_count (\S+)$", text, re.M)[1])  # type: ignore[index]
    total = float(re.search(r"^retinaserve_batch_size_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
    return count, total


async def post_many(url: str, body: bytes, n: int, **kwargs: Any) -> list[httpx2.Response]:
    async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post(url, content=body, **kwargs) for _ in range(n)))


def test_concurrent_requests_are_batched(shared: object, six_people_bytes: bytes) -> None:
    app = create_app(settings(max_batch=8, max_wait_ms=50, **NO_ADMISSION))
    with live_server(app) as (base, _):
        responses = asyncio.run(post_many(f"{base}/v1/detect", six_people_bytes, 16))
        assert [r.status_code for r in responses] == [200] * 16
        assert all(len(r.json()["faces"]) == 6 for r in responses)
        sizes = [int(r.headers["X-Batch-Size"]) for r in responses]
        calls, images = batch_metrics(base)
        assert images == 16 and calls < 16 and max(sizes) > 1, (calls, sizes)
        text = httpx2.get(f"{base}/metrics").text
        assert 'retinaserve_http_requests_total{method="POST",route="/v1/detect",status="200"} 16.0' in text


def test_batching_off_runs_one_image_per_call(shared: object, six_people_bytes: bytes) -> None:
    with live_server(create_app(settings(max_batch=1, **NO_ADMISSION))) as (base, _):
        responses = asyncio.run(post_many(f"{base}/v1/detect", six_people_bytes, 8))
        assert all(r.status_code == 200 and r.headers["X-Batch-Size"] == "1" for r in responses)
        assert batch_metrics(base) == (8.0, 8.0)


def test_full_queue_answers_429_with_retry_after(shared: object, six_people_bytes: bytes) -> None:
    with live_server(slow_app(0.3, max_batch=1, max_queue=2, **NO_ADMISSION)) as (base, _):
        responses = asyncio.run(post_many(f"{base}/v1/detect", six_people_bytes, 10))
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert 'retinaserve_rejected_requests_total{reason="queue_full"}' in httpx2.get(f"{base}/metrics").text


def test_pixel_budget_bounds_decoded_images_in_flight(shared: object, six_people_bytes: bytes) -> None:
    # six_people is 1.13 Mpx: with a 2 Mpx budget only one can be decoded, queued or running at a time
    with live_server(slow_app(0.4, max_pixels=2_000_000, max_pixels_in_flight=2_000_000, **NO_ADMISSION)) as (base, _):
        responses = asyncio.run(post_many(f"{base}/v1/detect", six_people_bytes, 3))
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and 429 in statuses, statuses
        assert 'retinaserve_rejected_requests_total{reason="pixel_budget"}' in httpx2.get(f"{base}/metrics").text
        assert httpx2.post(f"{base}/v1/detect", content=six_people_bytes, timeout=30).status_code == 200


def test_slow_work_times_out_with_504(shared: object, six_people_bytes: bytes) -> None:
    # the cost model measures the detector at start-up and refuses what cannot fit (413, 429), so a 504 needs a
    # detector that slows down after it was measured
    app = slow_app(0.0, request_timeout_s=0.3)
    with live_server(app) as (base, _):
        app.state.service.detector.delay_s = 0.6
        response = httpx2.post(f"{base}/v1/detect", content=six_people_bytes, timeout=30)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert httpx2.get(f"{base}/healthz").status_code == 200


def test_shutdown_finishes_in_flight_requests(shared: object, six_people_bytes: bytes) -> None:
    app = slow_app(0.5, max_batch=2, max_wait_ms=1, **NO_ADMISSION)
    with live_server(app) as (base, server), ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx2.post, f"{base}/v1/detect", content=six_people_bytes, timeout=30) for _ in range(4)
        ]
        time.sleep(0.3)  # all four are in: two running, two queued
        stopped = time.perf_counter()
        server.should_exit = True
        responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 4
        assert all(len(r.json()["faces"]) == 6 for r in responses)
        assert time.perf_counter() - stopped < 20
        for _ in range(100):  # the server goes away once they are answered
            if not any(t.name == "detect-batcher_0" for t in threading.enumerate()):
                break
            time.sleep(0.05)
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{base}/healthz", timeout=2)
