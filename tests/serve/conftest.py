"""Fixtures for the service tests: apps on the real slim weights, a real uvicorn server on a loopback port,
and small hand-made malformed inputs."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from retinaserve.detection import Detector, ImageResult
from retinaserve.serve import ServeSettings, create_app
from retinaserve.serve.inference import build_detector
from retinaserve.serve.server import server_for

from ..conftest import SIX_PEOPLE, WEIGHTS

MODEL = "ultralight-slim"
"""Fast, with real weights in ../shared; every service test uses it unless it says otherwise."""


def settings(**overrides: Any) -> ServeSettings:
    """Test settings: the slim model from ../shared, no warm-up (each app would repeat it), then overrides."""
    base: dict[str, Any] = {"model": MODEL, "weights": WEIGHTS / "slim_Final.pth", "warmup": False}
    return ServeSettings(**{**base, **overrides})


@pytest.fixture(scope="session")
def six_people_bytes(shared: object) -> bytes:
    return SIX_PEOPLE.read_bytes()


@dataclass
class SlowDetector:
    """A real detector that takes ``delay_s`` longer per call, to make queues and timeouts observable."""

    inner: Detector
    delay_s: float

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, images: Sequence[Any], **options: Any) -> list[ImageResult]:
        time.sleep(self.delay_s)
        return self.inner.run(images, **options)


def slow_app(delay_s: float, **overrides: Any) -> FastAPI:
    """An app on the test settings whose detector takes ``delay_s`` longer per call (queues become observable)."""

    def factory(s: ServeSettings) -> SlowDetector:
        detector = build_detector(s)
        assert isinstance(detector, Detector)
        return SlowDetector(detector, delay_s)

    return create_app(settings(**overrides), detector_factory=factory)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(
    os.environ.get("RETINASERVE_SCREENSHOTS", Path(__file__).resolve().parents[2] / "out" / "screenshots")
)
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="headless Chromium not installed (apt-get install chromium chromium-driver)",
)
"""The web page tests drive Debian's chromium + chromium-driver (installed by .ci/run)."""


@contextmanager
def headless_chromium(*flags: str, window: str) -> Iterator[Any]:
    """A Selenium driver of headless Chromium with ``flags`` besides the common ones, quit on exit."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    common = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking")
    for arg in (*common, "--disable-component-update", "--no-first-run", f"--window-size={window}", *flags):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def live_server(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 (a free port) in a thread, as ``retinaserve serve`` runs it
    (its connection limits and draining shutdown); yields its base URL and server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = server_for(app, app.state.settings, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture
def make_live_server(shared: object) -> Any:
    return live_server


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width x height`` pixels (a decompression bomb's header) with one row of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_app(**overrides: Any) -> FastAPI:
    return create_app(settings(**overrides))
