"""The OpenVINO backend on the real weights and photos: FP32 head outputs equal torch's, the Detector on it finds
the torch Detector's faces, shapes change freely, batches equal singles, INT8 stays close to the reference, and a
missing package says what to do.

Tolerances (retinaface-mnet025-edge, real photos): raw FP32 head outputs within 1e-3 of torch (measured 6.5e-5);
detections on six_people.jpg: the same faces, boxes within 0.5 px, scores within 1e-3 (measured 1.2e-4 px and
1.2e-7). INT8 (NNCF, calibrated on crops of the two photos): AP >= 0.98 on their parity views, mean landmark
deviation <= 2 px, as for ONNX INT8.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from retinaserve import Detector, ResizePolicy
from retinaserve.detection.backend import HeadOutputs, NetworkBackend
from retinaserve.engine import BackendUnavailableError, EngineConfig, PrecisionNotSupportedError
from retinaserve.engine.factory import onnx_model_path
from retinaserve.engine.onnx_models import PhotoCalibrationReader
from retinaserve.engine.ov_backend import (
    OpenVinoBackend,
    OpenVinoInt8Options,
    OpenVinoOptions,
    create_openvino_backend,
    openvino_available,
    openvino_cache_dir,
    openvino_int8_path,
)
from retinaserve.engine.parity import compare_detections, detect_all, match_faces, parity_views
from retinaserve.registry import get_model_spec
from retinaserve.weights import load_network

from ..conftest import WEIGHTS
from .conftest import EDGE

SPEC = get_model_spec(EDGE)
CPU = torch.device("cpu")
SIZES = ((640, 640), (640, 480), (256, 320))
"""(W, H) letterbox sizes run one after the other on the same backend."""


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return load_network(SPEC, WEIGHTS / SPEC.weights.filename).eval()


@pytest.fixture(scope="module")
def onnx_path(network: torch.nn.Module, engine_cache: Path) -> Path:
    return onnx_model_path(SPEC, network, "test-openvino", "fp32", EngineConfig())


@pytest.fixture(scope="module")
def backend(onnx_path: Path) -> OpenVinoBackend:
    return create_openvino_backend(onnx_path, CPU, SPEC.anchors)


@pytest.fixture(scope="module")
def reference(network: torch.nn.Module) -> Detector:
    return Detector(EDGE, backend=NetworkBackend(network, CPU), resize=ResizePolicy(det_size=(640, 640)))


@pytest.fixture(scope="module")
def inputs(reference: Detector, photos: list[np.ndarray]) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Per (W, H) size, the normalised network input of each shared photo, (3, H, W)."""
    return {
        size: [reference.preprocess(photo, ResizePolicy(det_size=size)).tensor for photo in photos] for size in SIZES
    }


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("max_static_shapes", [16, 1, 0], ids=["static", "static-then-dynamic", "dynamic"])
def test_head_outputs_match_torch_across_shapes(
    onnx_path: Path, network: torch.nn.Module, inputs: dict, max_static_shapes: int
) -> None:
    options = OpenVinoOptions(max_static_shapes=max_static_shapes)
    candidate = OpenVinoBackend(onnx_path, CPU, SPEC.anchors, options=options)
    for size in SIZES:  # different shapes in a row on one backend
        batch = inputs[size][0][None]
        outputs = candidate.forward(batch)
        with torch.inference_mode():
            expected = network(batch)
        assert _max_diff(outputs, expected) < 1e-3
        candidate.release(outputs)


def test_large_shapes_share_the_dynamic_model(onnx_path: Path, network: torch.nn.Module, inputs: dict) -> None:
    """Above max_static_pixels no static model is compiled (each would keep its shape's memory)."""
    small, large = sorted(SIZES, key=lambda size: size[0] * size[1])[:2]
    options = OpenVinoOptions(max_static_pixels=small[0] * small[1])
    candidate = OpenVinoBackend(onnx_path, CPU, SPEC.anchors, options=options)
    for size in (small, large):
        batch = inputs[size][0][None]
        outputs = candidate.forward(batch)
        with torch.inference_mode():
            assert _max_diff(outputs, network(batch)) < 1e-3
        candidate.release(outputs)
    assert list(candidate._static) == [(1, 3, small[1], small[0])] and candidate._dynamic is not None


def test_detections_match_the_torch_detector(backend: OpenVinoBackend, reference: Detector, photos: list) -> None:
    photo = photos[0]  # six_people.jpg
    expected = reference.detect(photo)
    faces = Detector(EDGE, backend=backend, resize=reference.resize).detect(photo)
    assert len(expected) >= 6
    pairs = match_faces(expected, faces, iou_threshold=0.9)
    assert len(pairs) == len(expected) == len(faces)
    for r, c in pairs:
        assert np.abs(np.subtract(expected[r].box, faces[c].box)).max() < 0.5
        assert abs(expected[r].score - faces[c].score) < 1e-3


def test_batch_of_two_equals_two_singles(backend: OpenVinoBackend, inputs: dict) -> None:
    first, second = inputs[(640, 480)]
    batched = backend.forward(torch.stack([first, second]))
    for row, single in enumerate((first, second)):
        alone = backend.forward(single[None])
        assert _max_diff(tuple(t[row : row + 1] for t in batched), alone) < 1e-4
        backend.release(alone)
    backend.release(batched)


def test_outputs_stay_valid_until_released(backend: OpenVinoBackend, inputs: dict) -> None:
    """Outputs live in pooled buffers: a later forward (another thread's, say) never overwrites unreleased ones."""
    first, second = (x[None] for x in inputs[(256, 320)])
    held = backend.forward(first)
    kept = tuple(t.clone() for t in held)
    results: list[HeadOutputs] = []
    threads = [threading.Thread(target=lambda: results.append(backend.forward(second))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _max_diff(held, kept) == 0.0
    assert _max_diff(results[0], results[1]) == 0.0 and _max_diff(results[0], held) > 0.1
    for outputs in [held, *results]:
        backend.release(outputs)


def test_int8_parity_within_tolerance(
    onnx_path: Path, photos: list[np.ndarray], reference: Detector, engine_cache: Path
) -> None:
    readers: list[PhotoCalibrationReader] = []

    def calibration() -> PhotoCalibrationReader:
        readers.append(PhotoCalibrationReader(photos, lambda view: reference.preprocess(view).tensor.numpy()))
        return readers[-1]

    backend = create_openvino_backend(onnx_path, CPU, SPEC.anchors, "int8", calibration=calibration, calibration_id="t")
    assert backend.name == "openvino-int8 CPU" and backend.model_path.suffix == ".xml"
    assert backend.model_path == openvino_int8_path(onnx_path, OpenVinoInt8Options(), "t")
    views = parity_views(photos)
    report = compare_detections(
        detect_all(reference, views, 0.05),
        detect_all(Detector(EDGE, backend=backend, resize=reference.resize), views, 0.05),
        threshold=SPEC.default_threshold,
        model=EDGE,
        backend=backend.name,
        precision="int8",
    )
    assert report.reference_faces > 100
    assert report.ap >= 0.98 and report.mean_landmark_px <= 2.0
    # cached: a second backend reuses the IR without calibrating again
    again = create_openvino_backend(onnx_path, CPU, SPEC.anchors, "int8", calibration=calibration, calibration_id="t")
    assert again.model_path == backend.model_path and len(readers) == 1


def test_compiled_blobs_are_cached_in_the_retinaserve_cache(backend: OpenVinoBackend, engine_cache: Path) -> None:
    backend.release(backend.forward(torch.zeros(1, 3, 64, 96)))
    folder = openvino_cache_dir()
    assert str(engine_cache) in str(folder)
    assert any(folder.glob("*.blob"))


def test_missing_openvino_says_what_to_do(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert not openvino_available()
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        OpenVinoBackend(onnx_path, CPU, SPEC.anchors)


def test_refuses_other_devices_precisions_and_uncalibrated_int8(onnx_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="CPU only"):
        OpenVinoBackend(onnx_path, torch.device("cuda"), SPEC.anchors)
    with pytest.raises(PrecisionNotSupportedError, match="fp32 or int8"):
        create_openvino_backend(onnx_path, CPU, SPEC.anchors, "fp16")
    with pytest.raises(PrecisionNotSupportedError, match="calibrate"):
        create_openvino_backend(onnx_path, CPU, SPEC.anchors, "int8", calibration_id="never-made")
