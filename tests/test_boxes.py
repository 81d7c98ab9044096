"""Geometry: priors, decoding and NMS against straightforward reference formulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import retinaserve.detection.boxes as boxes_module
import retinaserve.detection.detector as detector_module
from retinaserve.detection import Detector
from retinaserve.detection.backend import NetworkBackend
from retinaserve.detection.boxes import box_iou, decode_boxes, decode_landmarks, nms
from retinaserve.detection.priors import PriorCache, make_priors
from retinaserve.registry import get_model_spec
from retinaserve.weights import load_network

from .conftest import CROWD, WEIGHTS


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with others (M, 4), in box_iou's float32 arithmetic, one operation at a time."""
    zero = np.float32(0)
    area = max(box[2] - box[0], zero) * max(box[3] - box[1], zero)
    areas = np.maximum(others[:, 2] - others[:, 0], zero) * np.maximum(others[:, 3] - others[:, 1], zero)
    width = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), zero)
    height = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), zero)
    inter = width * height
    return inter / np.maximum(area + areas - inter, np.finfo(np.float32).tiny)


def _greedy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS by the book: best score first (ties in input order); keep a box unless its IoU with a box kept
    before it exceeds the threshold (compared in float32, as the boxes are)."""
    kept: list[int] = []
    kept_boxes = np.empty_like(boxes)
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if not (_iou(boxes[i], kept_boxes[: len(kept)]) > np.float32(thr)).any():
            kept_boxes[len(kept)] = boxes[i]
            kept.append(i)
    return kept


def _check(boxes: np.ndarray, scores: np.ndarray, thr: float) -> None:
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
    assert kept.dtype == torch.int64
    assert kept.tolist() == _greedy(boxes, scores, thr)


def _clustered(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (count, 4) around a few face-like centres, as a detector's candidates are, and their scores."""
    centres = rng.uniform(0, 1600, (max(1, count // 20), 2))
    sizes = rng.uniform(4, 200, len(centres))
    which = rng.integers(0, len(centres), count)
    middle = centres[which] + rng.normal(0, 0.15, (count, 2)) * sizes[which, None]
    half = sizes[which, None] * rng.uniform(0.35, 0.65, (count, 2))
    boxes = np.concatenate([middle - half, middle + half], 1).astype(np.float32)
    return boxes, rng.uniform(0, 1, count).astype(np.float32)


@pytest.fixture(params=["default", "tiny-blocks"])
def nms_sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The shipped block and chunk sizes, and tiny ones that send small inputs through every path; gives the
    largest input worth checking with them."""
    if request.param == "default":
        return 1500
    for name, value in [("_FIRST_BLOCK", 5), ("_MIN_BLOCK", 2), ("_MAX_BLOCK", 9), ("_ALL_PAIRS_UP_TO", 3)]:
        monkeypatch.setattr(boxes_module, name, value)
    monkeypatch.setattr(boxes_module, "_PAIR_CHUNK", 1)
    return 300


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.4, 0.5, 1.0])
def test_nms_matches_greedy_on_clustered_boxes(nms_sizes: int, seed: int, thr: float) -> None:
    rng = np.random.default_rng(seed)
    _check(*_clustered(rng, int(rng.integers(30, nms_sizes))), thr)


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_greedy_with_duplicates_ties_and_empty_boxes(nms_sizes: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    count = min(800, nms_sizes)
    boxes, _ = _clustered(rng, count)
    boxes = np.round(boxes / 8) * 8  # a coarse grid: equal coordinates, duplicates, IoUs that are exact fractions
    boxes[rng.choice(count, count // 4)] = boxes[rng.choice(count, count // 4)]
    flat = rng.choice(count, count // 10)
    boxes[flat, 2] = boxes[flat, 0]  # zero width
    boxes[flat[::3], 3] = boxes[flat[::3], 1] - 5  # and upside down
    scores = rng.integers(0, 6, count).astype(np.float32) / 5  # many equal scores
    for thr in (0.0, 0.3, 0.4, 0.5, 1.0):
        _check(boxes, scores, thr)


def test_nms_one_dense_cluster_and_one_column(nms_sizes: int) -> None:
    rng = np.random.default_rng(7)
    cluster = (np.array([100, 100, 300, 300]) + rng.normal(0, 3, (nms_sizes, 4))).astype(np.float32)
    _check(cluster, rng.uniform(0, 1, nms_sizes).astype(np.float32), 0.4)  # almost all go: blocks shrink
    top = np.arange(600, dtype=np.float32)[:, None] * 12
    column = np.concatenate([np.full_like(top, 50), top, np.full_like(top, 60), top + 11], 1)
    assert nms(torch.from_numpy(column), torch.ones(600), 0.0).tolist() == list(range(600))


def test_nms_decides_exactly_at_the_threshold() -> None:
    pair = np.array([[0, 0, 5, 1], [0, 0, 2, 1]], np.float32)  # IoU 2/5: the same float32 as 0.4
    two = np.array([0.9, 0.8], np.float32)
    assert nms(torch.from_numpy(pair), torch.from_numpy(two), 0.4).tolist() == [0, 1]
    assert nms(torch.from_numpy(pair), torch.from_numpy(two), 0.39).tolist() == [0]
    same = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    assert nms(same, torch.tensor([0.5, 0.5]), 1.0).tolist() == [0, 1]  # IoU 1 does not exceed 1


def test_nms_decides_on_box_iou_to_the_last_bit() -> None:
    """At a threshold equal to a pair's float32 IoU the pair stays; one ulp lower, the second box goes."""
    rng = np.random.default_rng(11)
    first = rng.uniform(0, 1000, (300, 2)).astype(np.float32)
    first = np.concatenate([first, first + rng.uniform(1, 100, (300, 2)).astype(np.float32)], 1)
    second = first + rng.uniform(-5, 5, (300, 4)).astype(np.float32)
    scores = torch.tensor([0.9, 0.8])
    for a, b in zip(first, second):
        iou = box_iou(torch.from_numpy(a[None]), torch.from_numpy(b[None]))[0, 0].numpy()
        assert _iou(a, b[None])[0] == iou
        if iou == 0:
            continue
        pair = torch.from_numpy(np.stack([a, b]))
        assert nms(pair, scores, float(iou)).tolist() == [0, 1]
        assert nms(pair, scores, float(np.nextafter(iou, np.float32(0)))).tolist() == [0]


def test_nms_edge_cases() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.4).tolist() == []
    assert nms(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), 0.4).tolist() == [0]
    apart = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    assert nms(apart, torch.tensor([0.1, 0.9]), 0.4).tolist() == [1, 0]
    assert nms(apart, torch.tensor([0.1, 0.9]), -0.1).tolist() == [1]  # IoU 0 exceeds a negative threshold
    same = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    assert nms(same, torch.tensor([0.5, 0.9, 0.1]), 0.4).tolist() == [1, 2]
    assert nms(same.double(), torch.tensor([0.5, 0.9, 0.1]), 0.4).tolist() == [1, 2]
    assert nms(same.half(), torch.tensor([0.5, 0.9, 0.1]).half(), 0.4).tolist() == [1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nms_on_cuda_returns_the_same_indices_there() -> None:
    boxes, scores = _clustered(np.random.default_rng(3), 1000)
    kept = nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(), 0.4)
    assert kept.is_cuda and kept.tolist() == _greedy(boxes, scores, 0.4)


def test_nms_on_the_crowd_candidates_of_the_reference_protocol(shared, monkeypatch) -> None:
    """The ~2,400 candidates the edge model gives on the crowd photo at score > 0.02, as the Detector passes them."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: float = 0.0) -> torch.Tensor:
        calls.append((boxes, scores))
        return nms(boxes, scores, iou_threshold, offset)

    spec = get_model_spec("retinaface-mnet025-edge")
    network = load_network(spec, WEIGHTS / spec.weights.filename)  # the plain torch backend: nothing to tune
    detector = Detector(spec.name, backend=NetworkBackend(network, torch.device("cpu")), threshold=0.02)
    monkeypatch.setattr(detector_module, "nms", spy)
    detector.detect(CROWD)
    boxes, scores = calls[0][0].numpy(), calls[0][1].numpy()
    assert len(boxes) > 2000
    for thr in (0.3, 0.4, 0.5):
        _check(boxes, scores, thr)


def _py_cpu_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The Pytorch_Retinaface family's NMS written out: inclusive pixels (x2 - x1 + 1), keep while IoU <= thr."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        width = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = width * height
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thr]
    return keep


@pytest.mark.parametrize("count", [30, 400, 3000])
def test_nms_pixel_offset_is_the_originals_inclusive_pixel_nms(count: int) -> None:
    rng = np.random.default_rng(count)
    boxes, scores = _clustered(rng, count)
    boxes = boxes.astype(np.float64) / 8  # small boxes, where the extra pixel decides most often
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4, pixel_offset=1.0).tolist()
    assert kept == _py_cpu_nms(boxes, scores, 0.4)
    assert kept != nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist()


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
