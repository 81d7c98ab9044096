"""The Ray Serve application on a real local Ray cluster, on loopback: the same answers as the plain server (JSON,
4xx, API keys, health, metrics, web page), two model replicas that both get traffic, and Serve's batching."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

from ..conftest import ASTRONAUT, CROWD, GRACE_HOPPER, SIX_PEOPLE
from ..serve.conftest import live_server, make_app, png_header_only, settings
from .conftest import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

KEY = "test-key"
PHOTOS = (SIX_PEOPLE, GRACE_HOPPER, ASTRONAUT, CROWD)
OVERRIDES: dict[str, Any] = {
    "backend": "onnx",  # one backend on both sides: "auto" could measure its way to different ones
    "api_keys": (KEY,),
    "max_upload_bytes": 1_000_000,
    "max_batch": 4,
    "max_wait_ms": 20.0,
    "max_queue_delay_ms": 10_000.0,  # admit what the tests send at once (the default admits about one batch ahead)
}
"""The plain server and the Serve app get these same settings (3D with the default facemesh-468); 1 MB uploads make the
size limit testable."""


def _wait_ready(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Serve application at {url} did not become ready")


@pytest.fixture(scope="module")
def serve_url(ray_address: str) -> Iterator[str]:
    """The Serve application with two model replicas, on a free loopback port."""
    from retinaserve.ray.serve_app import APP_NAME, build_application

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    application = build_application(settings(**OVERRIDES), replicas=2)
    serve.run(application, name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    try:
        yield url
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def plain_url(shared: object) -> Iterator[str]:
    """The plain server on the same settings."""
    with live_server(make_app(**OVERRIDES)) as (url, _server):
        yield url


def _post(url: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"X-API-Key": KEY, **kwargs.pop("headers", {})}
    return httpx.post(f"{url}{path}", headers=headers, timeout=60, **kwargs)


def _same_faces(ray_faces: list[dict[str, Any]], plain_faces: list[dict[str, Any]]) -> None:
    """The same faces, keys and order; coordinates equal to 1e-3 px and scores to 1e-5. Two processes' ONNX Runtime
    sessions may differ in the last bits (1e-5 px was seen at one input size), as two machines would."""
    assert len(ray_faces) == len(plain_faces)
    for a, b in zip(ray_faces, plain_faces):
        assert a.keys() == b.keys()
        assert a["box"] == pytest.approx(b["box"], abs=1e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        if "landmarks" in b:
            assert a["landmarks"].keys() == b["landmarks"].keys()
            for name, point in b["landmarks"].items():
                assert a["landmarks"][name] == pytest.approx(point, abs=1e-3)


def _same_json(ray_body: dict[str, Any], plain_body: dict[str, Any]) -> None:
    """Equal except the timings' values (the keys must match) and float noise in the faces."""
    assert set(ray_body) == set(plain_body)
    for key in ray_body:
        if key == "timings_ms":
            assert set(ray_body[key]) == set(plain_body[key])
        elif key == "results":
            assert len(ray_body[key]) == len(plain_body[key])
            for a, b in zip(ray_body[key], plain_body[key]):
                _same_json(a, b)
        elif key == "faces":
            _same_faces(ray_body[key], plain_body[key])
        else:
            assert ray_body[key] == plain_body[key], key


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.stem)
def test_detect_gives_the_plain_servers_json(serve_url: str, plain_url: str, photo: Any) -> None:
    data = photo.read_bytes()
    if len(data) > OVERRIDES["max_upload_bytes"]:
        pytest.skip(f"{photo.name} is over the test's upload limit")
    for query in ("", "?threshold=0.3&long_side=480", "?landmarks=false"):
        ray_answer = _post(serve_url, f"/v1/detect{query}", content=data)
        plain_answer = _post(plain_url, f"/v1/detect{query}", content=data)
        assert ray_answer.status_code == plain_answer.status_code == 200, ray_answer.text
        _same_json(ray_answer.json(), plain_answer.json())
        assert ray_answer.json()["faces"], "a face in every shared photo"
        assert ray_answer.headers["X-Replica"]
        assert "X-Replica" not in plain_answer.headers


def test_batch_route_and_bad_images_in_it(serve_url: str, plain_url: str) -> None:
    files = [
        ("files", ("a.jpg", SIX_PEOPLE.read_bytes(), "image/jpeg")),
        ("files", ("b.txt", b"not an image", "text/plain")),
        ("files", ("c.jpg", GRACE_HOPPER.read_bytes(), "image/jpeg")),
    ]
    ray_answer = _post(serve_url, "/v1/detect/batch", files=files)
    plain_answer = _post(plain_url, "/v1/detect/batch", files=files)
    assert ray_answer.status_code == plain_answer.status_code == 200
    _same_json(ray_answer.json(), plain_answer.json())
    assert [r["status"] for r in ray_answer.json()["results"]] == [200, 415, 200]


def _bad_requests() -> list[tuple[str, str, dict[str, Any]]]:
    six = SIX_PEOPLE.read_bytes()
    zeroed = bytearray(six)
    zeroed[3:600] = bytes(597)
    return [
        ("empty body", "/v1/detect", {"content": b""}),
        ("truncated", "/v1/detect", {"content": six[:4000]}),
        ("zeroed header", "/v1/detect", {"content": bytes(zeroed)}),
        ("not an image", "/v1/detect", {"content": b"hello, this is text"}),
        ("too many bytes", "/v1/detect", {"content": b"\xff\xd8\xff" + bytes(1_100_000)}),
        ("decompression bomb", "/v1/detect", {"content": png_header_only(30_000, 30_000)}),
        ("bad threshold", "/v1/detect?threshold=2", {"content": six}),
        ("bad det_size", "/v1/detect?det_size=9999x9999", {"content": six}),
        ("no file part", "/v1/detect", {"files": {"other": (None, "text")}}),
        ("no key", "/v1/detect", {"content": six, "headers": {"X-API-Key": ""}}),
        ("wrong key", "/v1/detect", {"content": six, "headers": {"X-API-Key": "nope"}}),
        ("unknown route", "/v1/nothing", {"content": six}),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda c: c[0])
def test_bad_requests_get_the_same_4xx(serve_url: str, plain_url: str, case: tuple[str, str, dict[str, Any]]) -> None:
    _, path, kwargs = case
    ray_answer = _post(serve_url, path, **kwargs)
    plain_answer = _post(plain_url, path, **kwargs)
    assert 400 <= plain_answer.status_code < 500
    assert ray_answer.status_code == plain_answer.status_code, ray_answer.text
    assert ray_answer.json() == plain_answer.json()


def test_two_replicas_both_get_traffic_and_serve_batches(serve_url: str) -> None:
    data = GRACE_HOPPER.read_bytes()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _post(serve_url, "/v1/detect", content=data), range(48)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    replicas = {a.headers["X-Replica"] for a in answers}
    assert len(replicas) == 2, replicas
    sizes = [int(a.headers["X-Batch-Size"]) for a in answers]
    assert max(sizes) > 1, "16 clients at once: Serve's batching should put several images in one call"
    assert max(sizes) <= OVERRIDES["max_batch"]


def test_health_metrics_models_and_page(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{serve_url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "ultralight-slim" and ready["auth_required"] is True
    _post(serve_url, "/v1/detect", content=SIX_PEOPLE.read_bytes())
    metrics = httpx.get(f"{serve_url}/metrics", headers={"X-API-Key": KEY}).text
    assert 'retinaserve_http_requests_total{method="POST",route="/v1/detect",status="200"}' in metrics
    assert "retinaserve_batch_size_count" in metrics
    assert 'retinaserve_model_info{model="ultralight-slim",precision="fp32"} 1.0' in metrics
    models = httpx.get(f"{serve_url}/v1/models", headers={"X-API-Key": KEY}).json()
    assert models["loaded"] == "ultralight-slim"
    assert models["engine"]["replicas"] == 2 and models["engine"]["batching"] == "ray serve"
    page = httpx.get(f"{serve_url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{serve_url}/static/app.js").status_code == 200


def test_webcam_stream_goes_through_serve(serve_url: str) -> None:
    """/v1/stream (the web page's webcam view) over Serve's proxy: the key in the first message, then a frame."""
    from websockets.sync.client import connect

    data = SIX_PEOPLE.read_bytes()
    expected = _post(serve_url, "/v1/detect", content=data).json()
    with connect(serve_url.replace("http://", "ws://") + "/v1/stream", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "auth", "key": KEY}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["model"] == "ultralight-slim"
        ws.send(data)
        result = json.loads(ws.recv(timeout=60))
        assert result["type"] == "result" and result["id"] == 1, result
        _same_faces(result["faces"], expected["faces"])
        ws.send(b"not an image")
        error = json.loads(ws.recv(timeout=60))
        assert error["type"] == "error" and error["status"] == 415, error


def test_reconstruct_through_serve(serve_url: str, plain_url: str) -> None:
    """The 3D routes on Ray: the mesh network in the ingress, its face detection in the model replicas."""
    data = GRACE_HOPPER.read_bytes()
    ray_answer = _post(serve_url, "/v1/reconstruct", params={"format": "json"}, content=data)
    plain_answer = _post(plain_url, "/v1/reconstruct", params={"format": "json"}, content=data)
    assert ray_answer.status_code == plain_answer.status_code == 200, ray_answer.text
    ray_body, plain_body = ray_answer.json(), plain_answer.json()
    assert ray_body["model"] == plain_body["model"] == "facemesh-468"
    assert ray_body["image"] == plain_body["image"]
    assert len(ray_body["faces"]) == len(plain_body["faces"]) == 1
    ray_face, plain_face = ray_body["faces"][0], plain_body["faces"][0]
    np.testing.assert_allclose(np.array(ray_face["landmarks_68"]), np.array(plain_face["landmarks_68"]), atol=0.01)
    assert ray_face["pose"] == pytest.approx(plain_face["pose"], abs=1e-3)
    glb = _post(serve_url, "/v1/reconstruct", content=data)
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
