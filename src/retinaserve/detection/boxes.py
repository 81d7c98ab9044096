"""Geometry in torch: decoding of box and landmark regressions, IoU and NMS.

Shapes in docstrings: A anchors, K boxes. Everything runs on the tensors' device, except NMS, a sequential
algorithm that runs in NumPy on the CPU; nothing needs torchvision.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import numpy as np
import torch

__all__ = ["box_iou", "decode_boxes", "decode_landmarks", "nms"]

_FIRST_BLOCK, _MIN_BLOCK, _MAX_BLOCK = 256, 64, 2048
"""How many candidates ``nms`` takes per pass: it starts with the first and adapts between the other two."""
_ALL_PAIRS_UP_TO = 64
"""Up to this many boxes ``nms`` checks every pair; more go through a sweep along x."""
_PAIR_CHUNK = 1 << 18
"""Candidate pairs ``nms`` examines at once: bounds its temporary memory to a few tens of MB."""


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]) -> torch.Tensor:
    """Box regressions (..., A, 4) -> boxes (..., A, 4) as x1y1x2y2, normalised like ``priors`` (A, 4)."""
    centers = priors[..., :2] + loc[..., :2] * variance[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variance[1])
    top_left = centers - sizes / 2
    return torch.cat([top_left, top_left + sizes], dim=-1)


def decode_landmarks(ldm: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]) -> torch.Tensor:
    """Landmark regressions (..., A, 10) -> points (..., A, 5, 2), normalised like ``priors`` (A, 4)."""
    points = ldm.reshape(*ldm.shape[:-1], 5, 2)
    return priors[..., None, :2] + points * variance[0] * priors[..., None, 2:]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of x1y1x2y2 boxes: a (K, 4), b (M, 4) -> (K, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=torch.finfo(a.dtype).tiny)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, pixel_offset: float = 0.0) -> torch.Tensor:
    """Greedy non-maximum suppression: boxes (K, 4) x1y1x2y2, scores (K,) -> kept indices by falling score.

    ``pixel_offset`` 1 measures widths as x2 - x1 + 1 (the old inclusive-pixel convention of ``py_cpu_nms`` in the
    Pytorch_Retinaface family, which suppresses small boxes more readily); 0 is the plain geometric IoU.

    Exactly the greedy result: boxes ranked by score (ties keep their input order), and a box goes when its IoU
    with a kept, higher-ranked box exceeds ``iou_threshold`` (IoU as ``box_iou`` computes it, compared in the boxes'
    dtype; half precision is computed in float32). Runs in NumPy on the CPU, indices return on the boxes' device.

    Candidates go in rank order, a block at a time, together with the boxes kept so far, so a suppressed box is
    never looked at again; within a pass, IoU is only computed for pairs of boxes that intersect. The block grows
    while overlaps are few and shrinks in a dense cluster, where most candidates will go anyway.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() <= 1 or iou_threshold < 0:  # IoU >= 0: a negative threshold lets only the best box through
        return order[:1]
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    ranks = order.cpu().numpy()
    ranked = boxes.detach().to("cpu", dtype).numpy()[ranks]
    if pixel_offset:  # (x2 + 1) - x1 is x2 - x1 + 1: the same IoU, through the same code
        ranked[:, 2:] += ranked.dtype.type(pixel_offset)
    kept = np.zeros(0, dtype=np.int64)
    start, block = 0, _FIRST_BLOCK
    while start < len(ranked):
        members = np.concatenate([kept, np.arange(start, min(start + block, len(ranked)))])  # in rank order
        lower, upper = _pairs_over_threshold(ranked[members], iou_threshold)
        kept = members[~_greedy_suppressed(len(members), lower, upper)]
        start += block
        # few overlaps: take more at once; many (a dense cluster, where most candidates go): fewer
        block = min(2 * block, _MAX_BLOCK) if len(lower) <= 4 * block else max(block // 2, _MIN_BLOCK)
    return torch.from_numpy(ranks[kept]).to(order.device)


def _pairs_over_threshold(boxes: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Ranked boxes (K, 4) -> the index pairs (lower (E,), upper (E,)), lower < upper, whose IoU exceeds the threshold.

    The same arithmetic as ``box_iou``, pair by pair, so every decision is the same bit for bit.
    """
    x1, y1, x2, y2 = boxes.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    threshold = boxes.dtype.type(iou_threshold)
    tiny = np.finfo(boxes.dtype).tiny
    lower, upper = [], []
    for a, b in _intersecting_pairs(boxes):
        width = np.maximum(np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b]), 0)
        height = np.maximum(np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b]), 0)
        inter = width * height
        over = inter / np.maximum(area[a] + area[b] - inter, tiny) > threshold
        lower.append(a[over])
        upper.append(b[over])
    return np.concatenate(lower), np.concatenate(upper)


def _intersecting_pairs(boxes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Boxes (K, 4) -> chunks of index pairs (a, b), a < b, that include every pair with a positive intersection.

    Few boxes: all pairs. Many: a sweep along x, since once sorted by x1 a box only meets those that start before
    it ends, then a check of the y extents; chunks of about ``_PAIR_CHUNK`` pairs bound the memory. Boxes of zero
    area (or NaN) meet nothing, so their IoU is 0 and they are left out.
    """
    count = len(boxes)
    if count <= _ALL_PAIRS_UP_TO:
        index = np.arange(count)
        lower, upper = np.nonzero(index[:, None] < index)
        yield lower, upper
        return
    x1, y1, x2, y2 = boxes.T
    solid = np.flatnonzero((x2 > x1) & (y2 > y1))
    by_x1 = solid[np.argsort(x1[solid], kind="stable")]
    top, bottom = y1[by_x1], y2[by_x1]
    # the boxes at sorted positions p + 1 ... p + window[p] start before the box at p ends
    window = np.searchsorted(x1[by_x1], x2[by_x1], side="left") - np.arange(1, len(by_x1) + 1)
    step = max(_PAIR_CHUNK, len(by_x1))
    cuts = np.searchsorted(np.cumsum(window), np.arange(step, window.sum(), step)).tolist()
    for first, last in pairwise([0, *cuts, len(by_x1)]):
        counts = window[first:last]
        position = np.repeat(np.arange(first, last), counts)
        within = np.arange(len(position)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... per position
        partner = position + 1 + within
        meet = np.minimum(bottom[position], bottom[partner]) > np.maximum(top[position], top[partner])
        a, b = by_x1[position[meet]], by_x1[partner[meet]]
        yield np.minimum(a, b), np.maximum(a, b)


def _greedy_suppressed(count: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(count,) bool: which ranked boxes greedy NMS removes, given the pairs (lower, upper) that overlap too much.

    Walks the better box of each pair in rank order; one that still stands removes its worse partners.
    """
    suppressed = np.zeros(count, dtype=bool)
    if not len(lower):
        return suppressed
    by_lower = np.argsort(lower, kind="stable")
    lower, upper = lower[by_lower], upper[by_lower]
    bounds = [0, *(np.flatnonzero(lower[1:] != lower[:-1]) + 1).tolist(), len(lower)]
    for start, stop in pairwise(bounds):
        if not suppressed[lower[start]]:
            suppressed[upper[start:stop]] = True
    return suppressed
