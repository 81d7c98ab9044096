"""Parity of a backend/precision with the FP32 torch reference: matched faces, AP, landmark deviation.

The reference's faces at the model's threshold are the ground truth; the candidate's faces down to a low score
give the precision-recall curve, whose area (all-point interpolation, as PASCAL VOC since 2010) is the AP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..detection import Detector, Face
from ..detection.boxes import box_iou
from ..tables import format_table

__all__ = [
    "ParityReport",
    "average_precision",
    "compare_detections",
    "format_parity_table",
    "match_faces",
    "parity_views",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityReport:
    """One backend/precision against the reference on the same images (landmark deviations in pixels)."""

    model: str
    backend: str
    precision: str
    images: int
    reference_faces: int
    candidate_faces: int
    matched: int
    ap: float
    max_landmark_px: float
    mean_landmark_px: float
    max_box_px: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_views(photos: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each photo, its mirror, and a half-size copy: three scales/poses of every face (disjoint from calibration)."""
    views = []
    for photo in photos:
        views.append(photo)
        views.append(np.ascontiguousarray(photo[:, ::-1]))
        views.append(np.ascontiguousarray(photo[::2, ::2]))
    return views


def _boxes(faces: Sequence[Face]) -> torch.Tensor:
    return torch.tensor([f.box for f in faces], dtype=torch.float64).reshape(-1, 4)


def match_faces(
    reference: Sequence[Face], candidate: Sequence[Face], iou_threshold: float = 0.5
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by falling candidate score: (reference, candidate) pairs with IoU >= threshold."""
    if not reference or not candidate:
        return []
    iou = box_iou(_boxes(candidate), _boxes(reference))
    taken: set[int] = set()
    pairs = []
    for c in sorted(range(len(candidate)), key=lambda i: -candidate[i].score):
        overlaps = iou[c].clone()
        if taken:
            overlaps[list(taken)] = -1.0
        best = int(overlaps.argmax())
        if overlaps[best] >= iou_threshold:
            taken.add(best)
            pairs.append((best, c))
    return pairs


def average_precision(
    reference: Sequence[Sequence[Face]], candidate: Sequence[Sequence[Face]], iou_threshold: float = 0.5
) -> float:
    """AP of ``candidate`` detections (all scores) with ``reference`` faces as ground truth, over all images."""
    total = sum(len(r) for r in reference)
    if total == 0:
        return float("nan")
    scored: list[tuple[float, bool]] = []
    for ref, cand in zip(reference, candidate):
        matched = {c for _, c in match_faces(ref, cand, iou_threshold)}
        scored.extend((face.score, i in matched) for i, face in enumerate(cand))
    scored.sort(key=lambda item: -item[0])
    hits = np.cumsum([tp for _, tp in scored]) if scored else np.zeros(0)
    recall = np.concatenate([[0.0], hits / total, [1.0]])
    precision = np.concatenate([[1.0], hits / np.arange(1, len(scored) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the interpolated (monotone) envelope
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def compare_detections(
    reference: Sequence[Sequence[Face]],
    candidate: Sequence[Sequence[Face]],
    *,
    threshold: float,
    model: str,
    backend: str,
    precision: str,
    iou_threshold: float = 0.5,
) -> ParityReport:
    """Compare per-image detections made down to a low score; faces at ``threshold`` and above are counted."""
    ref_kept = [[f for f in faces if f.score >= threshold] for faces in reference]
    cand_kept = [[f for f in faces if f.score >= threshold] for faces in candidate]
    deviations: list[float] = []
    box_deviations: list[float] = []
    matched = 0
    for ref, cand in zip(ref_kept, cand_kept):
        for r, c in match_faces(ref, cand, iou_threshold):
            matched += 1
            a, b = np.asarray(ref[r].landmarks.points()), np.asarray(cand[c].landmarks.points())
            deviations.extend(np.linalg.norm(a - b, axis=1).tolist())
            box_deviations.append(float(np.abs(np.subtract(ref[r].box, cand[c].box)).max()))
    return ParityReport(
        model=model,
        backend=backend,
        precision=precision,
        images=len(reference),
        reference_faces=sum(len(r) for r in ref_kept),
        candidate_faces=sum(len(c) for c in cand_kept),
        matched=matched,
        ap=average_precision(ref_kept, candidate, iou_threshold),
        max_landmark_px=max(deviations, default=0.0),
        mean_landmark_px=float(np.mean(deviations)) if deviations else 0.0,
        max_box_px=max(box_deviations, default=0.0),
    )


def detect_all(detector: Detector, images: Sequence[np.ndarray], low_threshold: float) -> list[list[Face]]:
    """Faces down to ``low_threshold`` in every image (one call per image, as a user would)."""
    return [detector.run([image], threshold=low_threshold)[0].faces for image in images]


def format_parity_table(reports: Sequence[ParityReport]) -> str:
    """A plain-text table of parity reports."""
    header = (
        "model",
        "backend",
        "precision",
        "images",
        "ref faces",
        "cand faces",
        "matched",
        "AP",
        "lmk max px",
        "lmk mean px",
        "box max px",
    )
    rows = [
        (
            r.model,
            r.backend,
            r.precision,
            str(r.images),
            str(r.reference_faces),
            str(r.candidate_faces),
            str(r.matched),
            f"{r.ap:.4f}",
            f"{r.max_landmark_px:.2f}",
            f"{r.mean_landmark_px:.3f}",
            f"{r.max_box_px:.2f}",
        )
        for r in reports
    ]
    return format_table(header, rows)
