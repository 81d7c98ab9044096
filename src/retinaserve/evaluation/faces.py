"""Box AP and landmark accuracy of a detector on any annotated folder (see :mod:`.annotations`).

The metrics are small NumPy functions on arrays; :func:`evaluate_detections` ties them together on precomputed
detections, :func:`evaluate_faces` runs a :class:`~retinaserve.detection.Detector` first.

- Matching: each image's detections, best score first, take the unmatched face with the highest IoU >= ``iou``;
  one that only overlaps ignored faces is ignored (neither TP nor FP), anything else is a false positive.
- AP: VOC all-point interpolated AP over every detection of the folder (the detector runs at a very low threshold).
- Precision, recall and landmarks: at the model's default threshold.
- NME: mean point-to-point error over the 5 points over the inter-ocular distance: the distance between the eye
  centres (inter-pupil) for 5-point ground truth; between the outer eye corners (points 36 and 45) as in 300-W for
  68-point ground truth, whose 5 points are derived from the 68 (:func:`five_from_68`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..detection.boxes import box_iou as detection_box_iou
from .annotations import AnnotatedImage, five_from_68

if TYPE_CHECKING:
    from ..detection import Detector, ResizePolicy
    from ..detection.results import Face

__all__ = [
    "AP_THRESHOLD",
    "NME_LIMIT",
    "FaceEvalRow",
    "ImageDetections",
    "average_precision",
    "box_iou",
    "ced_curve",
    "evaluate_detections",
    "evaluate_faces",
    "interocular_distance",
    "landmark_errors",
    "match_detections",
    "nme_auc",
    "precision_recall",
]

AP_THRESHOLD = 0.02
"""Score threshold the detector runs at for AP, so that the precision/recall curve reaches high recall."""
NME_LIMIT = 0.08
"""NME above which a face counts as a landmark failure; the CED curve and its AUC go up to it (300-W practice)."""

TP, FP, IGNORED = 1, 0, -1
"""Labels of a detection after matching."""


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """One image's detections: ``boxes`` (M, 4) x1y1x2y2 px, ``scores`` (M,), ``points`` (M, 5, 2) px."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    @classmethod
    def from_faces(cls, faces: Sequence[Face]) -> ImageDetections:
        return cls(
            np.array([face.box for face in faces], dtype=np.float64).reshape(-1, 4),
            np.array([face.score for face in faces], dtype=np.float64),
            np.array([face.landmarks.points() for face in faces], dtype=np.float64).reshape(-1, 5, 2),
        )


@dataclass(frozen=True, eq=False)
class FaceEvalRow:
    """One model and engine variant on one annotated folder. NME values are fractions of the inter-ocular distance
    (NaN where no matched face has landmarks); ``ced_x``/``ced_y`` is the cumulative error distribution."""

    model: str
    variant: str
    ap: float
    precision: float
    recall: float
    nme_mean: float
    nme_median: float
    nme_px: float
    auc_08: float
    failure_rate: float
    faces: int
    """Ground-truth faces counted (ignored ones not)."""
    matched: int
    """Faces matched at ``threshold``."""
    threshold: float
    iou: float
    landmark_faces: int
    """Matched faces with landmark ground truth: what the NME figures are over."""
    ced_x: np.ndarray = field(repr=False)
    ced_y: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, the CED curve two lists."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, np.ndarray):
                out[key] = [round(float(v), 6) for v in value]
            elif isinstance(value, float):
                out[key] = None if math.isnan(value) else value
            else:
                out[key] = value
        return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair: ``a`` (N, 4), ``b`` (M, 4) x1y1x2y2 -> (N, M), in float64 (the Detector's ``box_iou``)."""
    return detection_box_iou(
        torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    ).numpy()


def match_detections(
    boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, ignore: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one image: ``boxes`` (M, 4), ``scores`` (M,), ``gt_boxes`` (N, 4), ``ignore`` (N,) bool.

    Detections are taken best score first (ties in input order); each takes the unmatched counted face with the
    highest IoU >= ``iou_threshold``. One that finds none but overlaps an ignored face that much is IGNORED (an
    ignored face may absorb several, as COCO's crowds do); the rest, duplicates included, are FP.
    Returns ``labels`` (M,) int8 in {TP=1, FP=0, IGNORED=-1} and ``gt_index`` (M,) int, -1 where not a TP.
    """
    labels = np.full(len(boxes), FP, dtype=np.int8)
    gt_index = np.full(len(boxes), -1, dtype=np.int64)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return labels, gt_index
    iou = box_iou(boxes, gt_boxes)
    taken = ignore.astype(bool).copy()  # ignored faces are never matched as hits
    for det in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[det])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            labels[det] = TP
            gt_index[det] = best
            taken[best] = True
        elif ignore.any() and iou[det, ignore].max() >= iou_threshold:
            labels[det] = IGNORED
    return labels, gt_index


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_faces: int) -> float:
    """VOC all-point interpolated AP (VOC 2010 onwards): the area under the precision/recall curve of all
    detections sorted by score, precision made monotone (each point takes the best precision at any higher recall).

    ``scores`` (D,), ``is_tp`` (D,) bool over the counted detections of a whole folder (ignored ones removed);
    ``num_faces``: counted ground-truth faces. Tied scores form one point of the curve (no threshold separates
    them), so the result does not depend on their order. NaN when there are no faces.
    """
    if num_faces <= 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    recall = np.concatenate([[0.0], tp / num_faces, [1.0]])
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def precision_recall(scores: np.ndarray, is_tp: np.ndarray, num_faces: int, threshold: float) -> tuple[float, float]:
    """(precision, recall) of the detections with score > ``threshold`` (strictly, as the Detector keeps them).

    ``scores`` (D,), ``is_tp`` (D,) bool; precision is NaN with no detection kept, recall NaN with no faces.
    """
    kept = scores > threshold
    tp = int(np.sum(is_tp[kept]))
    count = int(np.sum(kept))
    precision = tp / count if count else float("nan")
    recall = tp / num_faces if num_faces else float("nan")
    return precision, recall


def interocular_distance(gt_points: np.ndarray) -> np.ndarray:
    """(N, 5, 2) -> (N,) distance between the eye centres (inter-pupil); (N, 68, 2) -> (N,) between the outer
    eye corners, points 36 and 45 (0-based), as 300-W normalises."""
    if gt_points.shape[1] == 68:
        return np.asarray(np.linalg.norm(gt_points[:, 45] - gt_points[:, 36], axis=-1))
    return np.asarray(np.linalg.norm(gt_points[:, 1] - gt_points[:, 0], axis=-1))


def landmark_errors(predicted: np.ndarray, gt_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: (NME, mean error in pixels), both (N,), from ``predicted`` (N, 5, 2) and ``gt_points`` (N, 5 or
    68, 2).

    The error is the mean Euclidean distance over the labelled points of the five (68-point ground truth is
    reduced by :func:`five_from_68`); NME divides it by :func:`interocular_distance`. NaN for a face without the
    points needed.
    """
    five = five_from_68(gt_points) if gt_points.shape[1] == 68 else gt_points
    distances = np.linalg.norm(predicted - five, axis=-1)  # (N, 5), NaN where unlabelled
    labelled = np.isfinite(distances)
    counts = labelled.sum(axis=1)
    pixels = np.where(labelled, distances, 0.0).sum(axis=1) / np.where(counts > 0, counts, 1)
    pixels = np.where(counts > 0, pixels, np.nan)
    normaliser = interocular_distance(gt_points)
    valid = np.isfinite(normaliser) & (normaliser > 0)
    nme = np.where(valid, pixels / np.where(valid, normaliser, 1.0), np.nan)
    return nme, pixels


def ced_curve(nme: np.ndarray, limit: float = NME_LIMIT, steps: int = 161) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution of ``nme`` (F,): x (steps,) from 0 to ``limit``, y (steps,) the fraction of
    faces with NME <= x."""
    x = np.linspace(0.0, limit, steps)
    if len(nme) == 0:
        return x, np.zeros_like(x)
    return x, np.mean(np.sort(nme)[None, :] <= x[:, None], axis=1)


def nme_auc(nme: np.ndarray, limit: float = NME_LIMIT) -> float:
    """Area under the CED curve from 0 to ``limit``, over ``limit`` so that it lies in [0, 1] (1: every NME is 0).

    Computed exactly, not on a grid: the CED is a step function, and each face adds ``max(0, limit - nme)``
    to its area. NaN for no faces.
    """
    if len(nme) == 0:
        return float("nan")
    return float(np.mean(np.clip(1.0 - nme / limit, 0.0, 1.0)))


def evaluate_detections(
    images: Sequence[AnnotatedImage],
    detections: Sequence[ImageDetections],
    *,
    threshold: float,
    iou: float = 0.5,
    model: str = "",
    variant: str = "",
) -> FaceEvalRow:
    """Box AP over all ``detections`` (one per image, run at a low threshold), and precision, recall and landmark
    errors of those with score > ``threshold``."""
    if len(images) != len(detections):
        raise ValueError(f"{len(images)} annotated images but {len(detections)} detection sets")
    all_scores: list[np.ndarray] = []
    all_tp: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    num_faces = 0
    point_count = next((img.points.shape[1] for img in images if img.points is not None), 5)
    for image, found in zip(images, detections):
        labels, gt_index = match_detections(found.boxes, found.scores, image.boxes, image.ignore, iou)
        counted = labels != IGNORED
        all_scores.append(found.scores[counted])
        all_tp.append(labels[counted] == TP)
        num_faces += int(np.sum(~image.ignore))
        if image.points is None:
            continue
        if image.points.shape[1] != point_count:
            raise ValueError(f"{image.path}: {image.points.shape[1]} points where other images have {point_count}")
        hits = (labels == TP) & (found.scores > threshold)
        predicted.append(found.points[hits])
        truth.append(image.points[gt_index[hits]])
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    is_tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    precision, recall = precision_recall(scores, is_tp, num_faces, threshold)
    if predicted:
        nme, pixels = landmark_errors(np.concatenate(predicted), np.concatenate(truth))
        keep = np.isfinite(nme)
        nme, pixels = nme[keep], pixels[keep]
    else:
        nme = pixels = np.zeros(0)
    ced_x, ced_y = ced_curve(nme)
    has_nme = len(nme) > 0
    return FaceEvalRow(
        model=model,
        variant=variant,
        ap=average_precision(scores, is_tp, num_faces),
        precision=precision,
        recall=recall,
        nme_mean=float(np.mean(nme)) if has_nme else float("nan"),
        nme_median=float(np.median(nme)) if has_nme else float("nan"),
        nme_px=float(np.mean(pixels)) if has_nme else float("nan"),
        auc_08=nme_auc(nme),
        failure_rate=float(np.mean(nme > NME_LIMIT)) if has_nme else float("nan"),
        faces=num_faces,
        matched=int(np.sum(is_tp & (scores > threshold))),
        threshold=threshold,
        iou=iou,
        landmark_faces=len(nme),
        ced_x=ced_x,
        ced_y=ced_y,
    )


def evaluate_faces(
    images: Sequence[AnnotatedImage],
    detector: Detector,
    *,
    iou: float = 0.5,
    threshold: float | None = None,
    resize: ResizePolicy | None = None,
    variant: str = "",
    progress: bool = False,
) -> FaceEvalRow:
    """Run ``detector`` on every image at :data:`AP_THRESHOLD` (JPEGs decoded exactly) and evaluate: AP over all
    detections; precision, recall and NME at ``threshold`` (None: the model's default threshold).

    One low-threshold run serves both: NMS and matching go best score first, so the detections and matches above
    the higher threshold are those a run at that threshold would give.
    """
    from tqdm import tqdm

    threshold = detector.spec.default_threshold if threshold is None else threshold
    run_threshold = min(AP_THRESHOLD, threshold)
    found = [
        ImageDetections.from_faces(
            detector.run([image.path], threshold=run_threshold, resize=resize, decode="exact")[0].faces
        )
        for image in tqdm(images, desc=f"{detector.name} {variant}".strip(), unit="img", disable=not progress)
    ]
    return evaluate_detections(images, found, threshold=threshold, iou=iou, model=detector.name, variant=variant)
