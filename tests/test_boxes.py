"""Geometry: priors, decoding and NMS against straightforward reference formulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retinaserve.detection.boxes import box_iou, decode_boxes, decode_landmarks, nms
from retinaserve.detection.priors import PriorCache, make_priors


def _naive_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= thr:
                rest.append(j)
        order = rest
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5])
def test_nms_matches_naive_greedy(seed: int, thr: float) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 60, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert kept == _naive_nms(boxes, scores, thr)


def test_nms_edge_cases() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.4).numel() == 0
    assert nms(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), 0.4).tolist() == [0]
    same = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    assert nms(same, torch.tensor([0.5, 0.9, 0.1]), 0.4).tolist() == [1, 2]


def test_box_iou_known_values() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_priors_layout() -> None:
    priors = make_priors(100, 60, [[16, 32], [64]], [8, 32])
    rows8, cols8 = math.ceil(100 / 8), math.ceil(60 / 8)
    assert priors.shape == (rows8 * cols8 * 2 + 4 * 2 * 1, 4)
    # first cell: two anchors of 16 and 32 px centred at (4, 4)
    assert priors[0].tolist() == pytest.approx([4 / 60, 4 / 100, 16 / 60, 16 / 100])
    assert priors[1].tolist() == pytest.approx([4 / 60, 4 / 100, 32 / 60, 32 / 100])
    # row-major: the next cell is one step to the right
    assert priors[2, 0].item() == pytest.approx(12 / 60)
    assert priors[2 * cols8, 1].item() == pytest.approx(12 / 100)


def test_prior_cache_reuses_and_bounds() -> None:
    cache = PriorCache([[16]], [8], capacity=2)
    first = cache.get(32, 32)
    assert cache.get(32, 32) is first
    cache.get(40, 40)
    cache.get(48, 48)
    assert cache.get(32, 32) is not first


def test_decode_inverts_the_training_encoding() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.2], [0.2, 0.3, 0.05, 0.05]])
    boxes = torch.tensor([[0.44, 0.38, 0.57, 0.61], [0.18, 0.27, 0.23, 0.34]])
    variance = (0.1, 0.2)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    loc = torch.cat(
        [(centers - priors[:, :2]) / (variance[0] * priors[:, 2:]), torch.log(sizes / priors[:, 2:]) / 0.2], 1
    )
    assert torch.allclose(decode_boxes(loc, priors, variance), boxes, atol=1e-6)
    points = torch.rand(2, 5, 2)
    ldm = ((points - priors[:, None, :2]) / (variance[0] * priors[:, None, 2:])).reshape(2, 10)
    assert torch.allclose(decode_landmarks(ldm, priors, variance), points, atol=1e-6)
