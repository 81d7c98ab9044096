"""A model's default score threshold from evidence: precision, recall and F1 per photo at every threshold, and the
pick rule that benchmarks/thresholds.py applies and tests/test_real_photos.py checks against the registry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .annotations import AnnotatedImage
from .faces import FaceEvalRow, ImageDetections, evaluate_detections

__all__ = ["THRESHOLDS", "WITHIN", "f1", "macro_f1", "pick_threshold", "sweep"]

THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""0.05, 0.10, ... 0.95."""
WITHIN = 0.01
"""The pick is the highest threshold whose macro F1 is within this of the best: the evidence cannot tell such
thresholds apart, and the higher one gives fewer false positives."""


def f1(row: FaceEvalRow) -> float:
    """Harmonic mean of the row's precision and recall (0 where both are 0)."""
    total = row.precision + row.recall
    return 2 * row.precision * row.recall / total if total > 0 else 0.0


def sweep(
    images: Sequence[AnnotatedImage], found: Sequence[ImageDetections], thresholds: Sequence[float] = THRESHOLDS
) -> list[FaceEvalRow]:
    """One evaluation per threshold of detections made once at a low threshold (see :func:`evaluate_detections`)."""
    return [evaluate_detections(images, found, threshold=t) for t in thresholds]


def macro_f1(per_photo: Sequence[Sequence[FaceEvalRow]]) -> np.ndarray:
    """(T,) mean over photos of each photo's F1 per threshold: every photo weighs the same, so a false positive on
    a portrait counts as much as a crowd's recall. ``per_photo``: one :func:`sweep` per photo."""
    return np.array([[f1(row) for row in rows] for rows in per_photo]).mean(axis=0)


def pick_threshold(macro: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> float:
    """The highest threshold whose macro F1 is within :data:`WITHIN` of the best."""
    best = float(np.max(macro))
    return max(t for t, value in zip(thresholds, macro) if value >= best - WITHIN)
