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
from ..detection.backend import Backend
from ..detection.boxes import box_iou
from ..tables import format_table

__all__ = [
    "HeldOutAccuracy",
    "ParityReport",
    "average_precision",
    "compare_detections",
    "detect_all",
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


class HeldOutAccuracy:
    """Detections of a candidate backend against the reference's on held-out photos (their :func:`parity_views`),
    as one number for INT8 accuracy control: ``min(AP, 1 - mean landmark px / (100 * landmark_px_per_point))``.

    The reference scores 1; a drop of at most 0.01 then means both "AP within 1 point" and "landmarks within
    ``landmark_px_per_point`` px on average". Items are view indices; the value per item is the same on one view.
    """

    def __init__(
        self,
        reference: Detector,
        photos: Sequence[np.ndarray],
        *,
        low_threshold: float = 0.05,
        landmark_px_per_point: float = 1.0,
    ) -> None:
        self.model = reference.spec.name
        self.resize = reference.resize
        self.threshold = reference.threshold
        self.low_threshold = low_threshold
        self.landmark_px_per_point = landmark_px_per_point
        self.views = parity_views(photos)
        self.references = detect_all(reference, self.views, low_threshold)

    @property
    def items(self) -> list[int]:
        return list(range(len(self.views)))

    def metric(self, report: ParityReport) -> float:
        """The one number of a parity report: AP, or less where landmarks moved more than allowed."""
        ap = 1.0 if np.isnan(report.ap) else report.ap
        return min(ap, 1.0 - report.mean_landmark_px / (100.0 * self.landmark_px_per_point))

    def report(self, backend: Backend, items: Sequence[int] | None = None) -> ParityReport:
        """The parity of ``backend`` with the reference on the views ``items`` (default: all)."""
        references, candidate = self._detect(backend, self.items if items is None else items)
        return self._compare(references, candidate, backend)

    def __call__(self, backend: Backend, items: Sequence[int]) -> tuple[float, list[float]]:
        references, candidate = self._detect(backend, items)
        per_item = [self.metric(self._compare([r], [c], backend)) for r, c in zip(references, candidate)]
        return self.metric(self._compare(references, candidate, backend)), per_item

    def _detect(self, backend: Backend, items: Sequence[int]) -> tuple[list[list[Face]], list[list[Face]]]:
        detector = Detector(self.model, backend=backend, resize=self.resize)
        candidate = detect_all(detector, [self.views[i] for i in items], self.low_threshold)
        return [self.references[i] for i in items], candidate

    def _compare(
        self, references: Sequence[Sequence[Face]], candidate: Sequence[Sequence[Face]], backend: Backend
    ) -> ParityReport:
        return compare_detections(
            references, candidate, threshold=self.threshold, model=self.model, backend=backend.name, precision="int8"
        )


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
