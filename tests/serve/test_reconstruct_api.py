"""3D reconstruction through the service on real weights: POST /v1/reconstruct in every format, the jobs API with
server-sent events, admission (429, FIFO queueing by memory), cancel, result expiry, metrics and errors."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx2
import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from retinaserve.detection import Detector
from retinaserve.reconstruction import Reconstructor
from retinaserve.serve import create_app

from ..conftest import GRACE_HOPPER, WEIGHTS
from .conftest import MODEL, live_server, png_header_only, settings, slow_app


@pytest.fixture(scope="module")
def client(shared: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings(max_upload_bytes=2_000_000))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def grace() -> bytes:
    return GRACE_HOPPER.read_bytes()


def error_of(response: Any, status: int, code: str | None = None) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def events_of(client: Any, job_id: str, **headers: str) -> list[dict[str, Any]]:
    """The job's server-sent events as parsed dicts (event, id, data)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if not line:
                if current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = json.loads(value) if field == "data" else value.strip()
    if current:
        events.append(current)
    return events


def wait_done(client: Any, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if body["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_reconstruct_json_matches_the_library(client: TestClient, grace: bytes) -> None:
    """The service's mesh of a real photo is the Reconstructor's, through the batchers and back as JSON."""
    response = client.post("/v1/reconstruct", params={"format": "json"}, content=grace)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "facemesh-468"
    assert body["image"] == {"width": 512, "height": 600}
    assert len(body["faces"]) == 1 and response.headers["X-Faces"] == "1"
    face = body["faces"][0]
    assert set(body["timings_ms"]) >= {"queue", "decode", "detect", "crop", "geometry", "texture", "total"}
    reference = Reconstructor("facemesh-468", detector=Detector(MODEL, weights=WEIGHTS / "slim_Final.pth"))(
        str(GRACE_HOPPER)
    )
    assert len(reference) == 1
    np.testing.assert_allclose(np.array(face["landmarks_68"]), reference[0].landmarks_68, atol=0.01)
    assert face["pose"] == pytest.approx({k: round(v, 3) for k, v in reference[0].pose.to_dict().items()}, abs=1e-3)
    assert face["texture_coverage"] == pytest.approx(float(reference[0].texture_mask.mean()), abs=1e-4)
    x1, y1, x2, y2 = face["box"]
    eyes = np.array(face["landmarks_68"])[36:48, :2]
    assert (eyes[:, 0] > x1).all() and (eyes[:, 0] < x2).all() and (eyes[:, 1] > y1).all() and (eyes[:, 1] < y2).all()


def test_reconstruct_glb_and_obj(client: TestClient, six_people_bytes: bytes) -> None:
    response = client.post("/v1/reconstruct", params={"face": 2}, content=six_people_bytes)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.headers["X-Faces"] == "6"
    assert 'filename="face2.glb"' in response.headers["content-disposition"]
    assert response.content[:4] == b"glTF"
    scene = trimesh.load(io.BytesIO(response.content), file_type="glb", process=False)
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.vertices) == 468 and len(mesh.faces) == 898
    texture = mesh.visual.material.baseColorTexture
    assert texture.size == (512, 512)

    response = client.post("/v1/reconstruct", params={"format": "obj", "texture_size": 256}, content=six_people_bytes)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["face0.mtl", "face0.obj", "face0.png"]
        assert Image.open(io.BytesIO(archive.read("face0.png"))).size == (256, 256)
        assert archive.read("face0.obj").count(b"\nv ") == 468


def test_no_face_is_a_clear_answer(client: TestClient) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 130, 140)).save(blank, format="PNG")
    body = client.post("/v1/reconstruct", params={"format": "json"}, content=blank.getvalue()).json()
    assert body["faces"] == [] and body["skipped"] == []
    error_of(client.post("/v1/reconstruct", content=blank.getvalue()), 422, "no_face")
    error = error_of(client.post("/v1/reconstruct", params={"face": 1}, content=GRACE_HOPPER.read_bytes()), 422)
    assert "face must be in [0, 0]" in error["message"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"texture_size": 333}, "texture_size must be one of 256, 512, 1024"),
        ({"texture_size": 2048}, "texture_size must be one of"),
        ({"max_faces": 0}, "max_faces"),
        ({"max_faces": 17}, "max_faces must be in [1, 16]"),
        ({"model": "nope"}, "is not a registered 3D model"),
        ({"model": "3ddfa-v2-mb05"}, "registered but not loaded"),
        ({"model": "retinaface-mnv2"}, "is not a registered 3D model"),
        ({"format": "gif"}, "format"),
        ({"face": -1}, "face"),
    ],
)
def test_bad_parameters_are_422(client: TestClient, grace: bytes, params: dict[str, Any], fragment: str) -> None:
    for path in ("/v1/reconstruct", "/v1/jobs/reconstruct"):
        if path.endswith("jobs/reconstruct") and ("format" in params or "face" in params):
            continue
        error = error_of(client.post(path, params=params, content=grace), 422, "invalid_parameter")
        assert fragment in error["message"]


def test_bad_images(client: TestClient, grace: bytes) -> None:
    for path in ("/v1/reconstruct", "/v1/jobs/reconstruct"):
        error_of(client.post(path, content=b""), 400, "empty_body")
        error_of(client.post(path, content=b"%PDF-1.4 not an image"), 415, "unsupported_media_type")
        error_of(client.post(path, content=png_header_only(40_000, 40_000)), 413, "image_too_large")
        error_of(client.post(path, content=b"\xff\xd8\xff" + b"\0" * 2_100_000), 413, "payload_too_large")
        error_of(client.post(path, files={"other": (None, "text")}), 400, "missing_file")


def test_a_truncated_image_fails_the_job_not_the_server(client: TestClient, grace: bytes) -> None:
    """A JPEG whose header reads but whose pixels do not: /v1/reconstruct answers 400; a job (which decodes only when
    its turn comes) is accepted and fails with the decoder's error, as its last event."""
    broken = grace[: len(grace) // 3]
    error_of(client.post("/v1/reconstruct", content=broken), 400, "invalid_image")
    created = client.post("/v1/jobs/reconstruct", content=broken)
    assert created.status_code == 202
    events = events_of(client, created.json()["id"])
    assert events[-1]["data"]["state"] == "failed"
    assert events[-1]["data"]["error"]["code"] == "invalid_image"
    error_of(client.get(f"/v1/jobs/{created.json()['id']}/result"), 409, "job_failed")


def test_job_lifecycle_with_events(client: TestClient, six_people_bytes: bytes) -> None:
    created = client.post(
        "/v1/jobs/reconstruct", params={"texture_size": 256}, files={"file": ("a.jpg", six_people_bytes)}
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/v1/jobs/{job['id']}" == job["urls"]["self"]
    assert job["state"] == "queued"

    events = events_of(client, job["id"])
    assert [int(e["id"]) for e in events] == list(range(len(events)))
    stages = [e["data"]["state"] for e in events if e["event"] == "stage"]
    assert stages == ["queued", "detecting", "geometry", "texture", "exporting", "done"]
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    texture_steps = [e["data"]["done"] for e in events if e["event"] == "progress" and e["data"]["state"] == "texture"]
    assert texture_steps == [1, 2, 3, 4, 5, 6]
    assert events[-1]["data"]["faces"] == 6

    state = client.get(f"/v1/jobs/{job['id']}").json()
    assert state["state"] == "done" and state["faces"] == 6 and state["progress"] == 1.0
    assert set(state["timings_ms"]) >= {"queued", "detecting", "geometry", "texture", "exporting", "total"}

    resumed = events_of(client, job["id"], **{"Last-Event-ID": "3"})
    assert [int(e["id"]) for e in resumed] == list(range(4, len(events)))
    assert events_of(client, job["id"], **{"Last-Event-ID": str(len(events) - 1)}) == []  # ends, does not hang
    assert events_of(client, job["id"], **{"Last-Event-ID": "9" * 5000}) == []
    for garbage in ("-1", "x", "1e3", ""):
        assert len(events_of(client, job["id"], **{"Last-Event-ID": garbage})) == len(events)

    result = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "json"}).json()
    assert len(result["faces"]) == 6 and [f["index"] for f in result["faces"]] == list(range(6))
    glb = client.get(f"/v1/jobs/{job['id']}/result", params={"face": 5})
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    texture = client.get(f"/v1/jobs/{job['id']}/texture", params={"face": 1})
    assert texture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(texture.content)).size == (256, 256)
    error_of(client.get(f"/v1/jobs/{job['id']}/texture", params={"face": 6}), 422, "invalid_parameter")

    deleted = client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert "was deleted" in error_of(client.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")["message"]
    error_of(client.get(f"/v1/jobs/{job['id']}/events"), 404, "job_not_found")
    error_of(client.get("/v1/jobs/no-such-job/result"), 404, "job_not_found")
    error_of(client.delete("/v1/jobs/" + "x" * 65), 422)


def test_metrics_and_models(client: TestClient, grace: bytes) -> None:
    assert client.post("/v1/jobs/reconstruct", content=grace).status_code == 202
    client.post("/v1/reconstruct", params={"format": "json"}, content=grace)
    time.sleep(0.5)
    text = client.get("/metrics").text
    for stage in ("queue", "decode", "detect", "crop", "geometry", "texture"):
        count = re.search(rf'^retinaserve_reconstruct_stage_seconds_count{{stage="{stage}"}} (\S+)$', text, re.M)
        assert count and float(count[1]) >= 1, stage
    assert re.search(r'^retinaserve_jobs\{state="done"\} [1-9]', text, re.M)
    assert re.search(r"^retinaserve_job_queue_depth 0", text, re.M)
    assert re.search(r"^retinaserve_mesh_batch_size_count [1-9]", text, re.M)
    models = client.get("/v1/models").json()
    assert models["reconstruction"]["loaded"] == "facemesh-468"
    assert {m["name"] for m in models["reconstruction"]["models"]} == {"facemesh-468", "3ddfa-v2-mb05"}


def test_full_queue_is_429_and_cancel_works(shared: object, grace: bytes) -> None:
    with TestClient(slow_app(1.0, max_jobs=2, max_running_jobs=1)) as client:
        first = client.post("/v1/jobs/reconstruct", content=grace).json()
        second = client.post("/v1/jobs/reconstruct", content=grace).json()
        refused = client.post("/v1/reconstruct", content=grace)
        error_of(refused, 429, "too_many_requests")
        assert refused.headers["Retry-After"] == "2"
        error_of(client.post("/v1/jobs/reconstruct", content=grace), 429, "too_many_requests")
        assert client.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"  # waits behind the first

        cancelled = client.delete(f"/v1/jobs/{second['id']}").json()
        assert cancelled["state"] == "cancelled" and cancelled["deleted"] is False
        assert events_of(client, second["id"])[-1]["data"]["state"] == "cancelled"
        error_of(client.get(f"/v1/jobs/{second['id']}/result"), 409, "job_cancelled")
        third = client.post("/v1/jobs/reconstruct", content=grace)  # the cancelled job gave its place back
        assert third.status_code == 202

        assert wait_done(client, first["id"])["state"] == "done"
        assert wait_done(client, third.json()["id"])["state"] == "done"
        rejected = re.search(
            r'^retinaserve_rejected_requests_total\{reason="job_queue_full"\} (\S+)$', client.get("/metrics").text, re.M
        )
        assert rejected and float(rejected[1]) == 2


def test_running_job_cancelled_mid_way(shared: object, grace: bytes) -> None:
    with TestClient(slow_app(1.0)) as client:
        job = client.post("/v1/jobs/reconstruct", content=grace).json()
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "detecting" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.delete(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
        time.sleep(1.5)  # the detector call it was waiting on finishes; the job stays cancelled
        body = client.get(f"/v1/jobs/{job['id']}").json()
        assert body["state"] == "cancelled" and body["faces"] is None
        assert client.post("/v1/reconstruct", params={"format": "json"}, content=grace).status_code == 200


def test_memory_budget_queues_first_come_first_served(shared: object, grace: bytes) -> None:
    """A budget that fits one job at a time: jobs run one by one, in the order they came."""
    with TestClient(slow_app(0.3, job_memory_mb=200, max_running_jobs=4, max_jobs=4)) as client:
        ids = [client.post("/v1/jobs/reconstruct", content=grace).json()["id"] for _ in range(3)]
        time.sleep(0.1)
        states = [client.get(f"/v1/jobs/{i}").json()["state"] for i in ids]
        assert states[1:] == ["queued", "queued"], states
        bodies = [wait_done(client, i) for i in ids]
        assert [b["state"] for b in bodies] == ["done"] * 3
        assert bodies[2]["timings_ms"]["queued"] > bodies[1]["timings_ms"]["queued"] > 250


def test_results_expire(shared: object, grace: bytes) -> None:
    with TestClient(create_app(settings(job_result_ttl_s=0.5, max_job_results=1))) as client:
        first = client.post("/v1/jobs/reconstruct", content=grace).json()["id"]
        assert wait_done(client, first)["state"] == "done"
        second = client.post("/v1/jobs/reconstruct", content=grace).json()["id"]
        assert wait_done(client, second)["state"] == "done"
        error = error_of(client.get(f"/v1/jobs/{first}/result"), 404, "job_not_found")
        assert "pushed it out" in error["message"]
        time.sleep(0.7)
        assert "expired" in error_of(client.get(f"/v1/jobs/{second}"), 404, "job_not_found")["message"]


def test_jobs_belong_to_their_api_key(shared: object, grace: bytes) -> None:
    with TestClient(create_app(settings(api_keys=("alice", "bob")))) as client:
        error_of(client.post("/v1/jobs/reconstruct", content=grace), 401, "unauthorized")
        job = client.post("/v1/jobs/reconstruct", content=grace, headers={"X-API-Key": "alice"}).json()
        assert client.get(f"/v1/jobs/{job['id']}", headers={"X-API-Key": "alice"}).status_code == 200
        error_of(client.get(f"/v1/jobs/{job['id']}", headers={"X-API-Key": "bob"}), 404, "job_not_found")
        error_of(client.delete(f"/v1/jobs/{job['id']}", headers={"X-API-Key": "bob"}), 404, "job_not_found")


def test_reconstruction_can_be_turned_off(shared: object, grace: bytes) -> None:
    with TestClient(create_app(settings(reconstruction_model="none"))) as client:
        error_of(client.post("/v1/reconstruct", content=grace), 404, "not_enabled")
        error_of(client.post("/v1/jobs/reconstruct", content=grace), 404, "not_enabled")
        assert client.get("/v1/models").json()["reconstruction"]["loaded"] is None
        assert client.post("/v1/detect", content=grace).status_code == 200


def test_faces_of_concurrent_requests_share_mesh_calls(shared: object, grace: bytes) -> None:
    """Four one-face photos at once on a real server: one detector call, then their four crops in one mesh call."""
    with live_server(slow_app(0.3, max_batch=8, max_wait_ms=100)) as (base, _):

        async def four() -> list[httpx2.Response]:
            async with httpx2.AsyncClient(base_url=base, timeout=60) as client:
                return await asyncio.gather(
                    *(client.post("/v1/reconstruct", params={"format": "json"}, content=grace) for _ in range(4))
                )

        responses = asyncio.run(four())
        assert [r.status_code for r in responses] == [200] * 4
        landmarks = [np.array(r.json()["faces"][0]["landmarks_68"]) for r in responses]
        for other in landmarks[1:]:
            np.testing.assert_allclose(other, landmarks[0], atol=0.01)  # batched or not, the same answer (float32)
        text = httpx2.get(f"{base}/metrics").text
        calls = float(re.search(r"^retinaserve_mesh_batch_size_count (\S+)$", text, re.M)[1])  # type: ignore[index]
        faces = float(re.search(r"^retinaserve_mesh_batch_size_sum (\S+)$", text, re.M)[1])  # type: ignore[index]
        assert faces == 4 and calls < 4, (calls, faces)
