"""``retinaserve batch --ray`` on a real local Ray cluster (tests/on_ray/conftest.py): the rows equal ``retinaserve
detect --json``'s faces through Ray Data's decode tasks and actor pool, bad files get their error, a rerun does
nothing; the decode stage and the actor agree with the Detector's own loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retinaserve.bulk.runner import DetectorOptions, ImageDecoder
from retinaserve.cli import main
from retinaserve.ray.data import DetectorActor, decode_batch, decode_cpus
from retinaserve.ray.sizing import ReplicaPlan
from tests.conftest import WEIGHT_DIRS
from tests.test_bulk import (
    BACKEND,
    ENGINE,
    MODEL,
    assert_meshes_match,
    assert_rows_match,
    detect_reference,
    make_photo_folder,
    read_rows,
    reconstruct_reference,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    return make_photo_folder(tmp_path_factory.mktemp("ray-batch") / "photos")


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return detect_reference(photos, tmp_path_factory.mktemp("detect") / "detect.json")


def test_ray_batch_equals_detect_and_a_rerun_does_nothing(
    ray_address: str, photos: Path, reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command as a user runs it against a cluster (RAY_ADDRESS): decode tasks beside one replica (4 CPUs: 3
    for the replica, 1 for decoding), Parquet out; then a rerun in this process through the connected driver."""
    out = tmp_path / "results.parquet"
    env = {**os.environ, "RAY_ADDRESS": ray_address, "RETINASERVE_WEIGHTS_DIR": WEIGHT_DIRS}
    command = [sys.executable, "-m", "retinaserve", "batch", str(photos), "--out", str(out), "--ray", *ENGINE]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # two bad files; the other four all there
    summary = json.loads(done.stdout)
    assert summary["mode"] == "ray" and summary["done"] == 6 and summary["errors"] == 2
    assert summary["ray"]["replicas"] == 1 and summary["ray"]["actor"]["num_cpus"] == 3.0
    assert summary["ray"]["decode_cpus"] == 1.0  # the decoded arrays travel through Ray Data to the actor
    assert "ray plan: ultralight-slim onnx/fp32 at batch 8 needs" in done.stderr
    assert "bad.jpg: not an image" in done.stderr
    assert_rows_match(read_rows(out), photos, reference)
    assert not (tmp_path / "results.parquet.parts").exists()

    before = out.read_bytes()
    capsys.readouterr()
    assert main(["batch", str(photos), "--out", str(out), "--ray", *ENGINE]) == 0
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["done"] == 0 and rerun["skipped"] == 6 and rerun["skipped_errors"] == 2
    assert out.read_bytes() == before


def test_two_replicas_small_batches_jsonl(
    ray_address: str, photos: Path, reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the driver already connected): a pool of two actors, batches of 2, JSONL out."""
    out = tmp_path / "results.jsonl"
    argv = ["batch", str(photos), "--out", str(out), "--ray", "--replicas", "2", "--batch-size", "2", *ENGINE]
    assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["ray"]["replicas"] == 2 and summary["ray"]["batch"] == 2 and summary["done"] == 6
    assert_rows_match(read_rows(out), photos, reference)


def test_ray_reconstruct_equals_reconstruct_json(
    ray_address: str, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ray --reconstruct``: the actors build the Reconstructor on their Detector; the meshes of two photos equal
    ``retinaserve reconstruct --json``'s, and the plan counts the 3D model in a replica's footprint."""
    images = [photos / "grace_hopper.jpg", photos / "nested" / "six_people.jpg"]
    reference = reconstruct_reference(images, tmp_path / "ref.json")
    listing = tmp_path / "two.txt"
    listing.write_text("".join(f"{path}\n" for path in images))
    out = tmp_path / "results.parquet"
    assert main(["batch", str(listing), "--out", str(out), "--ray", "--reconstruct", *ENGINE]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["mode"] == "ray" and summary["done"] == 2 and summary["meshes"] == 7
    assert "(with facemesh-468: " in captured.err
    rows = read_rows(out)
    assert len(rows) == 2
    assert_meshes_match(rows, reference)


def test_decode_stage_and_actor_agree_with_the_detector(photos: Path, reference: dict) -> None:
    """Without a cluster: where the replicas leave no CPU, they decode their batches themselves; rows from decode
    tasks' output equal rows decoded in the actor, and detect's faces; an actor whose Detector would load images
    differently from the decode stage refuses to start."""
    two_cpus = ReplicaPlan(MODEL, BACKEND, "fp32", "cpu", 8, 1, 2.0, 0.0, 400.0, 1000.0, "")
    assert decode_cpus(two_cpus, 2.0) is None and decode_cpus(two_cpus, 4.0) == 1.0
    assert decode_cpus(two_cpus, 2.5) == 0.5
    options = DetectorOptions(model=MODEL, backend=BACKEND, batch_size=4)
    decoder = ImageDecoder.for_model(MODEL)
    paths = np.array(sorted(str(p.resolve()) for p in photos.rglob("*.*") if p.suffix != ".txt"), dtype=object)
    decoded = decode_batch({"path": paths}, decoder)
    shapes = {Path(path).name: pixels.shape for path, pixels in zip(decoded["path"], decoded["pixels"])}
    assert shapes["bad.jpg"] == (0, 0, 3) and shapes["crowd_selfie.jpg"] == (449, 800, 3)  # 1600x898 at 1/2
    from_tasks = DetectorActor(options, decoder)(decoded)["row"]
    in_actor = DetectorActor(options, decoder, decode_here=True)({"path": paths})["row"]
    strip = [{k: v for k, v in json.loads(text).items() if k != "timings_ms"} for text in from_tasks]
    assert strip == [{k: v for k, v in json.loads(text).items() if k != "timings_ms"} for text in in_actor]
    assert_rows_match([json.loads(text) for text in from_tasks], photos, reference)
    with pytest.raises(RuntimeError, match="differs from the Detector"):
        DetectorActor(options, ImageDecoder.for_model(MODEL, "exact"))
