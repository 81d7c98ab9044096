"""Batches of differently sized images give exactly what running each image alone gives; sizes map back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinaserve import ResizePolicy

from .conftest import CROWD, SIX_PEOPLE


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    six = np.asarray(Image.open(SIX_PEOPLE).convert("RGB"))
    crowd = np.asarray(Image.open(CROWD).convert("RGB"))
    return [six, crowd, six[100:700, 200:1100].copy(), np.ascontiguousarray(six[:, ::-1]), six]


@pytest.mark.parametrize(
    "resize", [ResizePolicy(long_side=640), ResizePolicy(det_size=(640, 640)), ResizePolicy()], ids=str
)
def test_batch_equals_one_by_one(detector_factory, images, resize: ResizePolicy) -> None:
    detector = detector_factory("ultralight-slim", resize=resize, batch_size=4)
    batched = detector(images)
    assert len(batched) == len(images)
    for image, faces in zip(images, batched):
        alone = detector(image)
        assert len(alone) == len(faces) > 0
        for a, b in zip(alone, faces):
            assert np.allclose(a.box, b.box, atol=1e-3) and abs(a.score - b.score) < 1e-5
            assert np.allclose(a.landmarks.points(), b.landmarks.points(), atol=1e-3)


def test_results_are_in_original_pixels_for_every_resize_policy(detector_factory) -> None:
    """The same faces come back at long side 640, letterboxed 640x640, and 800x600 (different scale)."""
    by_long_side = detector_factory("ultralight-rfb", resize=ResizePolicy(long_side=640))(SIX_PEOPLE)
    for resize in (ResizePolicy(det_size=(640, 640)), ResizePolicy(det_size=(800, 600)), ResizePolicy()):
        other = detector_factory("ultralight-rfb", resize=resize)(SIX_PEOPLE)
        assert len(other) == 6
        for face in by_long_side:
            nearest = min(other, key=lambda f: np.abs(np.subtract(f.box, face.box)).sum())
            assert np.abs(np.subtract(nearest.box, face.box)).max() < 0.15 * face.width, (resize, face.box)


def test_letterbox_input_shape(detector_factory) -> None:
    result = detector_factory("ultralight-rfb", resize=ResizePolicy(det_size=(640, 480))).run([SIX_PEOPLE])[0]
    assert result.input_size == (640, 480)
    assert (result.width, result.height) == (1280, 886)
    assert set(result.timings_ms) >= {"decode", "preprocess", "forward", "postprocess", "total"}
