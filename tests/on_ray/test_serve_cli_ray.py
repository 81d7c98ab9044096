"""``retinaserve serve --ray`` as a user runs it: a real process joining the test's Ray cluster, serving until
SIGTERM; and its argument errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from retinaserve.cli import main

from ..conftest import GRACE_HOPPER, WEIGHT_DIRS, WEIGHTS
from .conftest import free_port

serve = pytest.importorskip("ray.serve")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell starts children with SIGINT ignored


def test_serve_ray_serves_until_sigterm(ray_address: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_address, "RETINASERVE_WEIGHTS_DIR": WEIGHT_DIRS}
    command = [
        sys.executable,
        "-m",
        "retinaserve",
        "serve",
        "--ray",
        "--replicas",
        "1",
        "--port",
        str(port),
        "--model",
        "ultralight-slim",
        "--weights",
        str(WEIGHTS / "slim_Final.pth"),
        "--backend",
        "onnx",
        "--reconstruction-model",
        "none",
        "--no-warmup",
    ]
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while "serving on" not in log_path.read_text():  # deployed: Serve reports the application running
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve --ray did not come up"
            time.sleep(0.5)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        answer = httpx.post(f"{url}/v1/detect", content=GRACE_HOPPER.read_bytes(), timeout=60)
        assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
        assert answer.headers["X-Replica"]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        output = log_path.read_text()
        assert process.returncode == 0, output[-3000:]
        assert f"serving on http://127.0.0.1:{port}" in output
        assert "model replica plan: ultralight-slim onnx/fp32 at batch" in output
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
        serve.shutdown()  # the Serve instance this process joined: the next test module starts its own proxy


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "2"], "--replicas and --autoscale are for --ray"),
        (["--ray", "--autoscale", "3:1"], "autoscale wants MIN:MAX"),
        (["--ray", "--autoscale", "two"], "autoscale wants MIN:MAX"),
    ],
)
def test_serve_ray_argument_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "ultralight-slim", *flags]) == 2
    assert message in capsys.readouterr().err


def test_replicas_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--ray", "--replicas", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
