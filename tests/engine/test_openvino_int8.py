"""OpenVINO INT8 with accuracy control on the real edge model: layers go back to FP32 until the detections on
held-out photos (never the calibration ones) are within the bound, the result is cached, and asking for it without
held-out photos says what to do.

Calibration: crops of six_people.jpg and grace_hopper.jpg; held out: crowd_selfie.jpg (its parity views, 105
faces), the most faces of the shared photos. Measured here (AVX2, no VNNI): plain INT8 scores 0.982 (drop 0.018);
reverting the most sensitive layer gives 0.989, so a bound of 0.015 is met after one ranking of the ~44 layer
groups (~25 s); the shipped 0.01 needs five layers and three rankings (~75 s), too slow for the suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from retinaserve import Detector, ResizePolicy
from retinaserve.detection.backend import NetworkBackend
from retinaserve.engine import EngineConfig, PrecisionNotSupportedError, create_backend
from retinaserve.engine.factory import onnx_model_path
from retinaserve.engine.onnx_models import PhotoCalibrationReader
from retinaserve.engine.ov_backend import (
    OpenVinoBackend,
    OpenVinoInt8Options,
    create_openvino_backend,
    float_layers,
    openvino_int8_path,
)
from retinaserve.engine.parity import HeldOutAccuracy
from retinaserve.registry import get_model_spec
from retinaserve.weights import load_network

from ..conftest import CROWD, GRACE_HOPPER, SIX_PEOPLE, WEIGHTS
from .conftest import EDGE

SPEC = get_model_spec(EDGE)
CPU = torch.device("cpu")
SIZE = (640, 640)
CONTROLLED = OpenVinoInt8Options(accuracy_control=True, max_drop=0.015)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def reference(shared: Path) -> Detector:
    network = load_network(SPEC, WEIGHTS / SPEC.weights.filename).eval()
    return Detector(EDGE, backend=NetworkBackend(network, CPU), resize=ResizePolicy(det_size=SIZE))


def test_accuracy_control_meets_the_bound_on_held_out_views_and_is_cached(
    reference: Detector, engine_cache: Path
) -> None:
    network = reference.backend.network  # type: ignore[attr-defined]  # a NetworkBackend
    onnx_path = onnx_model_path(SPEC, network, "test-openvino-int8", "fp32", EngineConfig())
    built: list[str] = []

    def calibration() -> PhotoCalibrationReader:
        built.append("calibration")
        photos = [_rgb(SIX_PEOPLE), _rgb(GRACE_HOPPER)]
        return PhotoCalibrationReader(photos, lambda view: reference.preprocess(view).tensor.numpy())

    held_out = HeldOutAccuracy(reference, [_rgb(CROWD)])

    def accuracy() -> HeldOutAccuracy:
        built.append("accuracy")
        return held_out

    def make(options: OpenVinoInt8Options) -> OpenVinoBackend:
        return create_openvino_backend(
            onnx_path,
            CPU,
            SPEC.anchors,
            "int8",
            calibration=calibration,
            calibration_id="t",
            int8=options,
            accuracy=accuracy,
        )

    plain = make(OpenVinoInt8Options())
    assert built == ["calibration"]  # plain INT8 never measures held-out accuracy
    controlled = make(CONTROLLED)
    assert controlled.model_path == openvino_int8_path(onnx_path, CONTROLLED, "t") != plain.model_path
    assert "-ac0.015-" in controlled.model_path.name
    plain_metric = held_out.metric(held_out.report(plain))
    report = held_out.report(controlled)
    assert report.reference_faces > 100
    assert held_out.metric(report) >= 1.0 - CONTROLLED.max_drop
    assert held_out.metric(report) >= plain_metric
    reverted = set(float_layers(controlled.model_path)) - set(float_layers(plain.model_path))
    if plain_metric < 1.0 - CONTROLLED.max_drop:  # measured here: 0.982
        assert 0 < len(reverted) < 10  # some layers back in FP32, most still INT8
    # cached: a second backend reuses the IR without calibrating or validating again
    again = make(CONTROLLED)
    assert again.model_path == controlled.model_path
    assert sorted(built) == ["accuracy", "calibration", "calibration"]


def test_held_out_metric_counts_a_landmark_pixel_as_an_ap_point(reference: Detector) -> None:
    held_out = HeldOutAccuracy(reference, [_rgb(SIX_PEOPLE)])
    metric, per_view = held_out(reference.backend, held_out.items)
    assert metric == 1.0 and per_view == [1.0, 1.0, 1.0]  # the reference against itself
    report = held_out.report(reference.backend)
    assert held_out.metric(report.__class__(**{**report.to_dict(), "mean_landmark_px": 2.0})) == pytest.approx(0.98)


def test_accuracy_control_without_held_out_photos_says_what_to_do(engine_cache: Path) -> None:
    config = EngineConfig(
        backend="openvino", precision="int8", calibration_photos=(SIX_PEOPLE,), openvino_int8=CONTROLLED
    )
    with pytest.raises(PrecisionNotSupportedError, match="validation_photos"):
        create_backend(EDGE, config)
