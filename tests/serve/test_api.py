"""The HTTP API through TestClient with the real slim model and real photos: wire format, parameters, and every
error path answering the one JSON error shape."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retinaserve.detection import Detector, ResizePolicy

from ..conftest import SIX_PEOPLE, WEIGHTS
from .conftest import MODEL, make_app, png_header_only, settings


@pytest.fixture(scope="module")
def client(shared: object) -> Iterator[TestClient]:
    app = make_app(max_upload_bytes=1_000_000, max_batch_upload_bytes=3_000_000, max_images_per_request=4)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(shared: object) -> Detector:
    return Detector(MODEL, weights=WEIGHTS / "slim_Final.pth")


def assert_error(response: object, status: int, code: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]  # type: ignore[no-any-return]


def test_detect_raw_body_matches_the_library(client: TestClient, six_people_bytes: bytes, reference: Detector) -> None:
    response = client.post("/v1/detect", content=six_people_bytes)
    assert response.status_code == 200
    body = response.json()
    expected = reference.run([SIX_PEOPLE])[0]
    assert body["faces"] == [face.to_dict() for face in expected.faces]
    assert len(body["faces"]) == 6
    assert body["image"] == {"width": 1280, "height": 886}
    assert body["model"] == MODEL
    assert {"receive", "decode", "queue", "inference", "forward", "total"} <= set(body["timings_ms"])
    assert set(body["faces"][0]["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    assert response.headers["X-Batch-Size"] == "1"


def test_type_comes_from_content_not_name(client: TestClient, six_people_bytes: bytes) -> None:
    files = {"file": ("notes.txt", six_people_bytes, "text/plain")}
    assert len(client.post("/v1/detect", files=files).json()["faces"]) == 6
    webp = io.BytesIO()
    Image.open(SIX_PEOPLE).save(webp, format="WEBP", quality=95)
    raw = client.post("/v1/detect", content=webp.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert len(raw.json()["faces"]) == 6
    fake = {"file": ("photo.jpg", b"%PDF-1.7\n" + b"x" * 500, "image/jpeg")}
    assert_error(client.post("/v1/detect", files=fake), 415, "unsupported_media_type")
    assert_error(client.post("/v1/detect", content=b"<html>hi</html>", headers={"Content-Type": "image/png"}), 415)


def test_parameters(client: TestClient, six_people_bytes: bytes, reference: Detector) -> None:
    no_points = client.post("/v1/detect?landmarks=false", content=six_people_bytes).json()
    assert "landmarks" not in no_points["faces"][0]
    assert len(client.post("/v1/detect?max_faces=2", content=six_people_bytes).json()["faces"]) == 2
    strict = client.post("/v1/detect?threshold=0.999", content=six_people_bytes).json()["faces"]
    assert all(face["score"] > 0.999 for face in strict) and len(strict) < 6
    letterbox = client.post("/v1/detect?det_size=640x640&nms=0.3", content=six_people_bytes).json()
    expected = reference.run([SIX_PEOPLE], resize=ResizePolicy(det_size=(640, 640)), nms_threshold=0.3)[0]
    assert letterbox["faces"] == [face.to_dict() for face in expected.faces]
    assert client.post("/v1/detect?long_side=320", content=six_people_bytes).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "threshold=1.5",
        "threshold=abc",
        "nms=0",
        "long_side=8",
        "long_side=100000",
        "det_size=640",
        "det_size=9999x9999",
        "long_side=640&det_size=640x640",
        "max_faces=0",
        "landmarks=maybe",
    ],
)
def test_bad_parameters_are_422(client: TestClient, six_people_bytes: bytes, query: str) -> None:
    assert_error(client.post(f"/v1/detect?{query}", content=six_people_bytes), 422, "invalid_parameter")


def test_corrupt_inputs_are_400(client: TestClient, six_people_bytes: bytes) -> None:
    assert_error(client.post("/v1/detect", content=b""), 400)
    assert_error(client.post("/v1/detect", content=six_people_bytes[:4000]), 400, "invalid_image")
    flipped = bytearray(six_people_bytes)
    flipped[3:600] = bytes(597)  # header segments zeroed: still starts like a JPEG, cannot be decoded
    assert_error(client.post("/v1/detect", content=bytes(flipped)), 400, "invalid_image")
    assert_error(client.post("/v1/detect", files={"other": (None, "text")}), 400, "missing_file")
    broken = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\nabc'
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    response = client.post("/v1/detect", content=broken, headers=headers)
    assert response.status_code in (400, 415)
    assert_error(response, response.status_code)


def test_size_limits_are_413(client: TestClient) -> None:
    big = b"\xff\xd8\xff" + bytes(1_100_000)
    assert_error(client.post("/v1/detect", content=big), 413, "payload_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield bytes(64_000)

    assert_error(client.post("/v1/detect", content=chunked()), 413, "payload_too_large")
    bomb = png_header_only(30_000, 30_000)
    assert len(bomb) < 1000
    error = assert_error(client.post("/v1/detect", content=bomb), 413, "image_too_large")
    assert "900000000 pixels" in error["message"]


def test_batch_gives_one_result_per_image_in_order(client: TestClient, six_people_bytes: bytes) -> None:
    files = [
        ("files", ("a.jpg", six_people_bytes, "image/jpeg")),
        ("files", ("b.txt", b"not an image", "image/jpeg")),
        ("files", ("c.jpg", six_people_bytes[:3000], "image/jpeg")),
        ("files", ("d.jpg", six_people_bytes, "application/octet-stream")),
    ]
    response = client.post("/v1/detect/batch?max_faces=3", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == [200, 415, 400, 200]
    assert [r["filename"] for r in results] == ["a.jpg", "b.txt", "c.jpg", "d.jpg"]
    assert len(results[0]["faces"]) == 3 and results[0]["faces"] == results[3]["faces"]
    assert results[1]["error"]["code"] == "unsupported_media_type"
    too_many = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(5)]
    assert_error(client.post("/v1/detect/batch", files=too_many), 413, "too_many_files")
    assert_error(client.post("/v1/detect/batch", content=b""), 400)


def test_beautify_returns_an_image(client: TestClient, six_people_bytes: bytes) -> None:
    response = client.post("/v1/beautify?strength=0.7", content=six_people_bytes)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["X-Faces"] == "6"
    assert Image.open(io.BytesIO(response.content)).size == (1280, 886)
    png = client.post("/v1/beautify?format=png&strength=0", content=six_people_bytes)
    assert png.headers["content-type"] == "image/png"
    unchanged = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert np.array_equal(unchanged, np.asarray(Image.open(SIX_PEOPLE).convert("RGB")))
    assert_error(client.post("/v1/beautify?strength=2", content=six_people_bytes), 422)
    assert_error(client.post("/v1/beautify", content=b"GIF89a broken"), 400)


def test_models_health_metrics_docs_page(client: TestClient, six_people_bytes: bytes) -> None:
    models = client.get("/v1/models").json()
    assert models["loaded"] == MODEL and models["precision"] == "fp32"
    engine = models["engine"]  # what auto measured and picked: the fastest exact backend, and the batch that paid
    assert engine["forward_ms"] and engine["backend"].split("-")[0] in min(
        engine["forward_ms"], key=engine["forward_ms"].get
    )
    assert engine["max_batch"] >= 1 and "ms" in engine["reason"]
    assert {m["name"] for m in models["models"] if m["loaded"]} == {MODEL}
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["model"] == MODEL
    client.post("/v1/detect", content=six_people_bytes)
    client.get("/definitely/not/here")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'retinaserve_http_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    for name in (
        "retinaserve_http_request_duration_seconds_bucket",
        "retinaserve_batch_size_bucket",
        "retinaserve_queue_depth",
        "process_resident_memory_bytes",
        "retinaserve_model_info",
    ):
        assert name in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/detect", "/v1/detect/batch", "/v1/beautify", "/v1/models", "/healthz", "/readyz"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/detect"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/v1/detect"), 405, "method_not_allowed")


def test_api_keys(shared: object, six_people_bytes: bytes) -> None:
    with TestClient(make_app(api_keys=("s3cret", "other"))) as client:
        assert_error(client.post("/v1/detect", content=six_people_bytes), 401, "unauthorized")
        assert_error(client.post("/v1/detect", content=six_people_bytes, headers={"X-API-Key": "wrong"}), 401)
        assert client.post("/v1/detect", content=six_people_bytes, headers={"X-API-Key": "other"}).status_code == 200
        assert_error(client.get("/metrics"), 401)
        assert_error(client.get("/v1/models"), 401)
        assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["auth_required"] is True


def test_not_ready_before_start_up(shared: object, six_people_bytes: bytes) -> None:
    client = TestClient(make_app())  # no `with`: the lifespan (model loading) never runs
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503, "not_ready")
    error_response = client.post("/v1/detect", content=six_people_bytes)
    assert_error(error_response, 503)
    assert error_response.headers["Retry-After"] == "1"


def test_warm_up_then_ready(shared: object) -> None:
    with TestClient(make_app(warmup=True, max_batch=2)) as client:
        assert client.get("/readyz").status_code == 200


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="precision"):
        settings(precision="fp8")
    with pytest.raises(ValueError, match="max_batch"):
        settings(max_batch=-1)
    with pytest.raises(ValueError, match="backend"):
        settings(backend="tensorflow")
    with pytest.raises(ValueError, match="fp32"):
        settings(backend="onnx", precision="bf16")
