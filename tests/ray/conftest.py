"""A real local Ray cluster for the tests of ``retinaserve.ray``: one head node started with ``ray start`` for the
whole session (workers, object store, GCS: nothing mocked), stopped at the end. Tests drive it from this process
(``ray.init(address=...)``) and from the CLI in subprocesses (``RAY_ADDRESS``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'retinaserve[ray]')")

RAY_CPUS = 4
"""Logical CPUs of the test cluster: two model replicas, the ingress and Ray Data's read tasks fit on this 2-core
machine (Ray schedules by logical resources; the cores are shared, as on any oversubscribed node)."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.is_file() else (shutil.which("ray") or "ray")


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[str]:
    """The GCS address of a head node started for the session, with the weights the tests resolve in its
    workers' environment; the driver of this process is connected to it."""
    from tests.conftest import WEIGHT_DIRS

    port = free_port()
    env = {
        **os.environ,
        "RETINASERVE_WEIGHTS_DIR": WEIGHT_DIRS,
        "XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "xdg-cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",  # a loopback test cluster; a token in ~/.ray (another cluster's) must not apply
    }
    temp = Path("/tmp") / f"ray-rs-{os.getpid()}"  # short: Ray's socket paths must stay under 107 characters
    command = [
        _ray_cli(),
        "start",
        "--head",
        f"--port={port}",
        f"--num-cpus={RAY_CPUS}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=180)
    address = f"127.0.0.1:{port}"
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this driver and the CLI subprocesses the tests start
    try:
        ray.init(address=address, log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
