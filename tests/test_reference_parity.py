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
    # The reference protocol: full decode, long side 640, keep score > 0.02, top 5000, NMS IoU 0.4, keep 750.
    detector = detector_factory(
        "retinaface-mnet025-edge",
        threshold=0.02,
        nms_threshold=0.4,
        resize=ResizePolicy(long_side=640),
        max_faces=750,
        decode="exact",
    )
    ours = _as_rows([f for f in detector(SIX_PEOPLE) if f.score >= 0.3])
    assert ours.shape == expected.shape, f"{len(ours)} detections >= 0.3, reference has {len(expected)}"
    # match each reference row to our nearest box (order may differ only for equal scores)
    for row in expected:
        nearest = ours[np.argmin(np.abs(ours[:, :4] - row[:4]).sum(1))]
        assert np.abs(nearest[:4] - row[:4]).max() <= 0.5, (nearest[:4], row[:4])
        assert np.abs(nearest[5:] - row[5:]).max() <= 0.5, (nearest[5:], row[5:])
        assert abs(nearest[4] - row[4]) <= 1e-3


def test_mnv2_detector_reproduces_the_tf_graph_end_to_end(detector_factory) -> None:
    """Decode, threshold and NMS of our Detector against the frozen graph's own final detections (golden file)."""
    golden = np.load(REFERENCE / "mnv2_six_people_tf.npz")["out"]  # normalised to the 896x1280 padded input
    detector = detector_factory(
        "retinaface-mnv2", threshold=0.5, nms_threshold=0.4, resize=ResizePolicy(), decode="exact"
    )
    result = detector.run([SIX_PEOPLE])[0]
    assert result.input_size == (1280, 896)
    ours = _as_rows(result.faces)
    expected = np.concatenate(
        [golden[:, :4] * [1280, 896, 1280, 896], golden[:, 15:16], golden[:, 4:14] * np.tile([1280, 896], 5)], 1
    )
    assert ours.shape == expected.shape
    for row in expected:
        nearest = ours[np.argmin(np.abs(ours[:, :4] - row[:4]).sum(1))]
        assert np.abs(nearest[:4] - row[:4]).max() <= 0.05
        assert np.abs(nearest[5:] - row[5:]).max() <= 0.05
        assert abs(nearest[4] - row[4]) <= 1e-4
