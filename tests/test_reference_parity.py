"""Our detector against what the original implementation outputs on a real photo with the same weights."""

from __future__ import annotations

import json

import numpy as np

from retinaserve import Face, ResizePolicy

from .conftest import REFERENCE, SIX_PEOPLE


def _as_rows(faces: list[Face]) -> np.ndarray:
    return np.array([[*f.box, f.score, *np.ravel(f.landmarks.points())] for f in faces])


def test_mnet025_edge_reproduces_reference(detector_factory) -> None:
    reference = json.loads((REFERENCE / "mnet025_six_people_640.json").read_text())
    assert "long side is 640" in reference["protocol"] and "score>0.02" in reference["protocol"]
    expected = np.array(reference["detections"])
    # The reference protocol: long side 640, keep score > 0.02, top 5000, NMS IoU 0.4, keep 750.
    detector = detector_factory(
        "retinaface-mnet025-edge", threshold=0.02, nms_threshold=0.4, resize=ResizePolicy(long_side=640), max_faces=750
    )
    ours = _as_rows([f for f in detector(SIX_PEOPLE) if f.score >= 0.3])
    assert ours.shape == expected.shape, f"{len(ours)} detections >= 0.3, reference has {len(expected)}"
    # match each reference row to our nearest box (order may differ only for equal scores)
    for row in expected:
        nearest = ours[np.argmin(np.abs(ours[:, :4] - row[:4]).sum(1))]
        assert np.abs(nearest[:4] - row[:4]).max() <= 0.5, (nearest[:4], row[:4])
        assert np.abs(nearest[5:] - row[5:]).max() <= 0.5, (nearest[5:], row[5:])
        assert abs(nearest[4] - row[4]) <= 1e-3
