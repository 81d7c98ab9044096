"""A real local Ray cluster for the tests of ``retinaserve.ray``: one head node started with ``ray start`` for the
whole session (workers, object store, GCS: nothing mocked), stopped at the end. Tests drive it from this process
(``ray.init(address=...)``) and from the CLI in subprocesses (``RAY_ADDRESS``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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
        "--node-ip-address=127.0.0.1",  # loopback only: nothing of the test cluster listens on other interfaces
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = (tmp_path_factory.getbasetemp() / "ray-head.log").open("w")
    # --block keeps `ray start` in the foreground: ending it stops this cluster's processes and no others (`ray stop`
    # would stop every Ray on the machine, a benchmark's or another session's included)
    head = subprocess.Popen(
        [*command, "--block"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"127.0.0.1:{port}"
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this driver and the CLI subprocesses the tests start
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in Path(log.name).read_text():  # the head node is up (GCS and raylet)
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray start did not finish within 180 s; see {log.name}")
            time.sleep(0.5)
        ray.init(address=address, log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
