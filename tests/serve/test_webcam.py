"""The live Webcam view: the /v1/stream WebSocket protocol in process (the faces of POST /v1/detect, errors that
leave the socket open, stale frames dropped and never queued, API keys, frames of two sockets and an HTTP request in
one model call, draining), then the page in headless Chromium with a fake camera playing six_people.jpg through a
real uvicorn, and a screenshot."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from retinaserve.serve import create_app

from ..conftest import CROWD, SIX_PEOPLE
from .conftest import SCREENSHOTS, headless_chromium, live_server, needs_chromium, settings, slow_app

STREAM = "/v1/stream"


def receive(ws: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    """The next JSON message, or WebSocketDisconnect when the server closed the socket; fails after ``timeout_s``
    (Starlette's ``receive`` would wait forever, hanging the suite on a bug)."""

    async def within() -> Any:
        with anyio.fail_after(timeout_s):
            return await ws._send_rx.receive()

    message = ws.portal.call(within)
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    return json.loads(message["text"])  # type: ignore[no-any-return]


@contextmanager
def connected(client: TestClient, **kwargs: Any) -> Iterator[Any]:
    """A socket on /v1/stream whose ``ready`` message has been read."""
    with client.websocket_connect(STREAM, **kwargs) as ws:
        ready = receive(ws)
        assert ready["type"] == "ready", ready
        yield ws


def jpeg(path: Path, long_side: int | None = None) -> bytes:
    """The photo's bytes, or re-encoded as a JPEG of ``long_side`` pixels on its long side (what the page sends)."""
    if long_side is None:
        return path.read_bytes()
    image = cv2.imread(str(path))
    scale = long_side / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + selector + '}') if selector else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match[1]) if match else 0.0


@pytest.fixture(scope="module")
def client(shared: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings(reconstruction_model="none"))) as test_client:
        yield test_client


def test_frames_get_the_faces_of_post_detect(client: TestClient) -> None:
    cases = [
        (jpeg(SIX_PEOPLE), {}),
        (jpeg(CROWD), {}),
        (jpeg(SIX_PEOPLE, 640), {"threshold": 0.5, "long_side": 320}),
        (jpeg(CROWD, 640), {"det_size": "480x320", "max_faces": 5}),
    ]
    with client.websocket_connect(STREAM) as ws:
        ready = receive(ws)
        assert ready == {"type": "ready", "model": "ultralight-slim", "max_frame_bytes": 10 * 1024 * 1024}
        for number, (data, options) in enumerate(cases, start=1):
            expected = client.post("/v1/detect", content=data, params=options)
            assert expected.status_code == 200, expected.text
            ws.send_json({"type": "options", **options})
            ws.send_bytes(data)
            result = receive(ws)
            assert result["type"] == "result" and result["id"] == number  # unnamed frames count from 1
            assert result["faces"] == expected.json()["faces"]
            assert result["image"] == expected.json()["image"]
            assert result["dropped"] == 0 and result["batch_size"] == 1
            timings = result["timings_ms"]
            assert {"wait", "decode", "queue", "inference", "total"} <= set(timings)
            assert 0 < timings["inference"] <= timings["total"]
        assert len(result["faces"]) == 5
        # a named frame, and landmarks off
        ws.send_json({"type": "options", "landmarks": False})
        ws.send_json({"type": "frame", "id": "cam-7"})
        ws.send_bytes(jpeg(SIX_PEOPLE, 640))
        result = receive(ws)
        assert result["id"] == "cam-7" and len(result["faces"]) == 6
        assert all(set(face) == {"box", "score"} for face in result["faces"])


def test_bad_frames_and_messages_get_errors_and_the_socket_goes_on(client: TestClient) -> None:
    good = jpeg(SIX_PEOPLE, 640)
    truncated = good[: len(good) // 3]
    too_large = b"\xff\xd8\xff" + bytes(10 * 1024 * 1024)
    with client.websocket_connect(STREAM) as ws:
        receive(ws)
        frames = [
            (truncated, 400, "invalid_image"),
            (b"GIF89a nonsense", 400, "invalid_image"),
            (b"not an image at all", 415, "unsupported_media_type"),
            (b"", 400, "invalid_image"),
            (too_large, 413, "payload_too_large"),
        ]
        for number, (data, status, code) in enumerate(frames):
            ws.send_bytes(data)
            error = receive(ws)
            assert error["type"] == "error" and error["id"] == 2 * number + 1, error  # each bad frame, then a good one
            assert (error["status"], error["error"]["code"]) == (status, code), error
            ws.send_bytes(good)
            result = receive(ws)
            assert result["type"] == "result" and len(result["faces"]) == 6
        controls = [
            ("{not json", 400, "invalid_message"),
            ("[1, 2]", 400, "invalid_message"),
            ('{"type": "subscribe"}', 400, "invalid_message"),
            ('{"type": "options", "threshold": 1.5}', 422, "invalid_parameter"),
            ('{"type": "options", "zoom": 2}', 422, "invalid_parameter"),
            ('{"type": "options", "long_side": 320, "det_size": "640x640"}', 422, "invalid_parameter"),
            ('{"type": "options", "det_size": "big"}', 422, "invalid_parameter"),
            ('{"type": "options", "max_faces": 100000}', 422, "invalid_parameter"),
            ('{"type": "frame", "id": "' + "x" * 65 + '"}', 422, "invalid_parameter"),
            ('{"type": "frame", "pad": "' + "x" * 5000 + '"}', 413, "payload_too_large"),
        ]
        for text, status, code in controls:
            ws.send_text(text)
            error = receive(ws)
            assert error["type"] == "error" and error["id"] is None, (text, error)
            assert (error["status"], error["error"]["code"]) == (status, code), (text, error)
        assert error["status"] == 413
        ws.send_text('{"type": "options", "threshold": 1.5, "zoom": 2}')
        details = receive(ws)["error"]["details"]
        assert [d["location"] for d in details] == ["options.threshold", "options.zoom"]
        ws.send_bytes(good)  # the refused options changed nothing
        assert len(receive(ws)["faces"]) == 6
    assert metric(client, "retinaserve_stream_frames_total", outcome="failed") >= len(frames)


def test_stale_frames_are_dropped_never_queued(shared: object) -> None:
    """A socket sending faster than the model runs: the frame in flight is answered, each frame that arrives while
    another waits replaces it (answered ``dropped``), and the newest is answered after the one in flight."""
    frame = jpeg(SIX_PEOPLE, 640)
    sent = 12
    with TestClient(slow_app(0.25, reconstruction_model="none")) as client, connected(client) as ws:
        for _ in range(sent):
            ws.send_bytes(frame)
        answers = [receive(ws) for _ in range(sent)]
        ids = sorted(answer["id"] for answer in answers)
        assert ids == list(range(1, sent + 1)), answers  # every frame answered exactly once
        results = [a for a in answers if a["type"] == "result"]
        dropped = [a for a in answers if a["type"] == "dropped"]
        assert len(results) + len(dropped) == sent
        assert 1 <= len(results) <= sent // 3 and len(dropped) >= sent - sent // 3
        assert answers[-1]["type"] == "result" and answers[-1]["id"] == sent  # the newest frame was answered
        assert [a["dropped"] for a in dropped] == list(range(1, len(dropped) + 1))
        assert answers[-1]["dropped"] == len(dropped)
        assert all(len(r["faces"]) == 6 for r in results)
        # the frame answered last waited for the one in flight, not for a queue of stale ones
        assert answers[-1]["timings_ms"]["wait"] < 1000
        assert metric(client, "retinaserve_stream_frames_received_total") == sent
        assert metric(client, "retinaserve_stream_frames_total", outcome="processed") == len(results)
        assert metric(client, "retinaserve_stream_frames_total", outcome="dropped") == len(dropped)
        assert metric(client, "retinaserve_stream_connections") == 1


def test_api_keys_are_enforced(shared: object) -> None:
    app = create_app(settings(reconstruction_model="none", api_keys=("s3cret",), header_timeout_s=0.5))
    frame = jpeg(SIX_PEOPLE, 640)
    with TestClient(app) as client:
        with connected(client, headers={"X-API-Key": "s3cret"}) as ws:  # non-browser clients: the handshake's header
            ws.send_bytes(frame)
            assert receive(ws)["type"] == "result"
        with client.websocket_connect(STREAM) as ws:  # browsers: the first message
            ws.send_json({"type": "auth", "key": "s3cret"})
            assert receive(ws)["type"] == "ready"
            ws.send_bytes(frame)
            assert len(receive(ws)["faces"]) == 6
        refused: list[tuple[dict[str, Any], Any]] = [
            ({"headers": {"X-API-Key": "wrong"}}, None),
            ({}, {"type": "auth", "key": "wrong"}),
            ({}, frame),  # a frame before the key
            ({}, {"type": "options", "threshold": 0.5}),
            ({}, None),  # nothing within header_timeout_s
        ]
        for kwargs, first in refused:
            with client.websocket_connect(STREAM, **kwargs) as ws:
                if isinstance(first, bytes):
                    ws.send_bytes(first)
                elif first is not None:
                    ws.send_json(first)
                error = receive(ws)
                assert (error["status"], error["error"]["code"]) == (401, "unauthorized"), (kwargs, first)
                with pytest.raises(WebSocketDisconnect) as closed:
                    receive(ws)
                assert closed.value.code == 1008, (kwargs, first)


def test_frames_of_two_sockets_and_an_http_request_share_a_model_call(shared: object) -> None:
    """The first frame waits up to max_wait_ms for company: the other socket's frame and a POST /v1/detect arriving
    meanwhile run in the same detector call."""
    frame = jpeg(SIX_PEOPLE, 640)
    app = create_app(settings(reconstruction_model="none", max_batch=4, max_wait_ms=1500))
    with TestClient(app) as client:
        http: dict[str, Any] = {}
        request = threading.Thread(target=lambda: http.update(answer=client.post("/v1/detect", content=frame)))
        with connected(client) as first, connected(client) as second:
            first.send_bytes(frame)
            second.send_bytes(frame)
            request.start()
            results = [receive(first), receive(second)]
        request.join(timeout=20)
        answer = http["answer"]
        assert answer.status_code == 200 and answer.headers["X-Batch-Size"] == "3"
        assert [r["batch_size"] for r in results] == [3, 3]
        assert [r["faces"] for r in results] == [answer.json()["faces"]] * 2
        assert metric(client, "retinaserve_batch_size_count") == 1  # one model call for the three images


def test_draining_and_not_ready_close_the_socket(shared: object) -> None:
    app = create_app(settings(reconstruction_model="none"))
    with TestClient(app) as client:
        with connected(client) as ws:
            assert client.portal is not None
            client.portal.call(app.state.drain.begin, 60.0)  # what the server does on SIGTERM
            ws.send_bytes(jpeg(SIX_PEOPLE, 640))
            error = receive(ws)
            assert (error["status"], error["error"]["code"]) == (503, "unavailable")
            with pytest.raises(WebSocketDisconnect) as closed:
                receive(ws)
            assert closed.value.code == 1012
        with client.websocket_connect(STREAM) as late:
            assert receive(late)["error"]["code"] == "unavailable"
            with pytest.raises(WebSocketDisconnect) as closed:
                receive(late)
            assert closed.value.code == 1012
    starting = TestClient(create_app(settings(reconstruction_model="none")))  # lifespan not run: no model yet
    with starting.websocket_connect(STREAM) as ws:
        assert receive(ws)["error"]["code"] == "not_ready"
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == 1013


def write_y4m(path: Path, image: Path, frames: int = 4, fps: int = 30) -> None:
    """A raw YUV 4:2:0 clip of ``frames`` copies of ``image``, the format Chromium's fake camera plays (looped)."""
    bgr = cv2.imread(str(image))
    height, width = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # (H * 3/2, W): the Y plane, then U, then V
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + np.ascontiguousarray(i420).tobytes())


@needs_chromium
def test_webcam_view_in_a_browser_with_a_fake_camera(shared: object, tmp_path: Path) -> None:
    """The page says why it cannot start (camera permission denied, no camera, no API key), then streams the fake
    camera's frames (six_people.jpg) to a real uvicorn for longer than its request-head timeout (upgraded sockets must
    outlive it), shows the faces, latency and fps, draws boxes over the video, and says so when the server shuts
    down."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "six_people.y4m"
    write_y4m(clip, SIX_PEOPLE)
    camera = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    )
    app = create_app(settings(reconstruction_model="none", header_timeout_s=1.0, api_keys=("s3cret",)))
    with headless_chromium("--disable-gpu", *camera, window="1280,1100") as browser:
        with live_server(app) as (base, _):
            browser.get(f"{base}/")
            wait = WebDriverWait(browser, 30)
            browser.find_element(By.ID, "tab-webcam").click()
            assert browser.find_element(By.ID, "photo-view").is_displayed() is False
            view = browser.find_element(By.ID, "webcam-view")
            error = browser.find_element(By.ID, "webcam-error")
            for name, says in (("NotAllowedError", "permission denied"), ("NotFoundError", "No camera found")):
                browser.execute_script(
                    "window.realGetUserMedia = window.realGetUserMedia || navigator.mediaDevices.getUserMedia;"
                    f"navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('no', '{name}'));"
                )
                browser.find_element(By.ID, "webcam-button").click()
                wait.until(lambda d, says=says: says in error.text)
            browser.execute_script("navigator.mediaDevices.getUserMedia = window.realGetUserMedia;")
            browser.find_element(By.ID, "webcam-button").click()  # without the key the server closes with 1008
            wait.until(lambda d: view.get_attribute("data-state") == "closed")
            assert "needs an API key" in error.text
            browser.find_element(By.ID, "api-key").send_keys("s3cret")  # app.js opened its box: the server has keys
            browser.find_element(By.ID, "webcam-button").click()
            started = time.monotonic()
            view = browser.find_element(By.ID, "webcam-view")
            wait.until(lambda d: int(view.get_attribute("data-frames") or 0) >= 10)
            time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # past header_timeout_s
            frames = int(view.get_attribute("data-frames"))
            wait.until(lambda d: int(view.get_attribute("data-frames")) > frames)  # still streaming
            assert error.is_displayed() is False
            assert abs(int(browser.find_element(By.ID, "webcam-faces").text) - 6) <= 1
            latency = browser.find_element(By.ID, "webcam-latency").text
            fps = browser.find_element(By.ID, "webcam-fps").text
            assert re.fullmatch(r"\d+ ms", latency) and int(latency.split()[0]) > 0, latency
            assert re.fullmatch(r"\d+\.\d fps", fps) and float(fps.split()[0]) > 1, fps
            assert re.fullmatch(r"\d+ ms", browser.find_element(By.ID, "webcam-server").text)
            assert browser.find_element(By.ID, "webcam-dropped").text.isdigit()
            # boxes in the photo view's green and the five points' colours over the video, at the sent frame's size
            overlay = browser.execute_script(
                "const c = document.getElementById('webcam-overlay'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let box = 0, eye = 0;"
                "for (let i = 0; i < d.length; i += 4) {"
                "  if (d[i] === 40 && d[i+1] === 220 && d[i+2] === 60) box++;"
                "  if (d[i] === 255 && d[i+1] === 64 && d[i+2] === 64) eye++; }"
                "return [c.width, c.height, box, eye];"
            )
            assert overlay[:2] == [640, 443] and overlay[2] > 1000 and overlay[3] > 20, overlay
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(SCREENSHOTS / "web_webcam.png"))
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 10  # the open socket did not hold up the shutdown
        WebDriverWait(browser, 10).until(lambda d: view.get_attribute("data-state") == "closed")
        assert "shutting down" in error.text
        assert browser.find_element(By.ID, "webcam-button").text == "Start camera"
