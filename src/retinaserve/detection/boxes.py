"""Geometry in torch: decoding of box and landmark regressions, IoU and NMS.

Shapes in docstrings: A anchors, K boxes. Everything runs on the tensors' device; nothing needs torchvision.
"""

from __future__ import annotations

import torch

__all__ = ["box_iou", "decode_boxes", "decode_landmarks", "nms"]


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


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: boxes (K, 4) x1y1x2y2, scores (K,) -> kept indices by falling score.

    Exact greedy result; each step removes every remaining box overlapping the current best by more than
    ``iou_threshold``, so the loop runs once per kept box, not once per candidate.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() <= 1:
        return order
    boxes = boxes[order]
    iou = box_iou(boxes, boxes) if boxes.shape[0] <= 4096 else None
    remaining = torch.arange(boxes.shape[0], device=boxes.device)
    keep = []
    while remaining.numel():
        best = remaining[0]
        keep.append(best)
        rest = remaining[1:]
        overlap = iou[best, rest] if iou is not None else box_iou(boxes[best : best + 1], boxes[rest])[0]
        remaining = rest[overlap <= iou_threshold]
    return order[torch.stack(keep)]
