"""The WIDER FACE validation protocol: official ground truth, official prediction files, official AP.

Reimplemented in NumPy from the description of the standard Python evaluation (``widerface_evaluate`` shipped
with Pytorch_Retinaface, itself a port of the WIDER authors' MATLAB code), so that our numbers are the numbers
the model authors report. One image's detections are matched at once with array operations; the per-threshold
counts come from a cumulative sum and one ``searchsorted`` instead of a Python loop over 1000 thresholds.

What the official evaluation does, and we therefore do too (each of these changes the numbers):

1. Scores are min-max normalised over *every* prediction read, images outside the ground truth included, with the
   minimum clamped to at most 1 and the maximum to at least 0 (its running min and max start at 1 and 0).
2. Detections are taken in the order of the file, not sorted by score: matching is greedy in that order, and at
   each threshold an image contributes its counts up to the *last* detection in the file whose score passes, so
   a lower-scored detection listed before it counts too. Sorted files (ours, every detector's) are unaffected.
3. Each detection goes to the face it overlaps most (the first on ties), whatever that face's state; there is no
   second choice. IoU >= 0.5 with a face outside the setting's keep-list: the detection is ignored (neither TP
   nor FP). With a kept face already taken: a false positive (a duplicate). Below 0.5: a false positive.
4. IoU in the +1 pixel convention: x2 = x + w, areas (x2 - x1 + 1) * (y2 - y1 + 1), intersections likewise; the
   arithmetic is done in the same order as the original, so that values on the 0.5 boundary fall the same way.
5. An image with no detections, or no ground-truth boxes, adds nothing to the counts, but its kept faces still
   count in recall's denominator (the length of its keep-list). False positives on an image without any
   ground-truth box are never counted (WIDER val has no such image).
6. 1000 thresholds ``1 - (t + 1) / 1000``, a detection passing when its normalised score is >= the threshold;
   precision is recalled faces over non-ignored detections (0/0 = NaN where nothing passes, which never reaches
   the AP), recall is recalled faces over the kept faces of the whole dataset; VOC all-point AP with the
   sentinels (0, 0) and (1, 0) and the monotone precision envelope.
7. A file's image is named by its first line, without folders and without ``.jpg`` (the original strips the
   characters ``.jpg`` from the right, which gives the same names for every WIDER image: they end in digits).

Where the official code crashes or silently loses data we do the strict, explicit thing instead: an image without
a prediction file counts as no detections and is reported (the original raises KeyError); predictions covering no
ground-truth image raise; all scores equal (the original divides by zero and scores AP 0) count as passing every
threshold; a malformed line, a count line that disagrees with the boxes, or a non-finite number raises naming the
file (the original crashes or, for lines starting with a space, drops them silently); any whitespace separates.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RetinaServeError

if TYPE_CHECKING:
    from ..detection import Detector, ResizePolicy
    from ..detection.results import Face

__all__ = [
    "GT_FILES",
    "SETTINGS",
    "WIDER_NMS",
    "WIDER_THRESHOLD",
    "WiderCurve",
    "WiderFaceError",
    "WiderGroundTruth",
    "WiderGroundTruthError",
    "WiderPredictionError",
    "WiderPredictionRun",
    "WiderResult",
    "evaluate_wider",
    "find_wider_ground_truth",
    "list_wider_images",
    "load_wider_ground_truth",
    "predict_wider",
    "read_wider_prediction",
    "read_wider_predictions",
    "wider_box_overlaps",
    "wider_prediction_text",
    "write_wider_prediction",
]

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
"""The three difficulty settings, each a keep-list over the same faces."""
GT_FILES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")
"""The official ground-truth files: boxes per event and image, then the keep-list of each setting."""
WIDER_THRESHOLD = 0.02
"""Score threshold of the original ``test_widerface.py``: low, so that the PR curve reaches high recall."""
WIDER_NMS = 0.4
"""NMS IoU threshold of the original ``test_widerface.py``."""

Predictions = Mapping[str, Mapping[str, np.ndarray]]
"""event -> image name (no extension) -> (N, 5) x, y, w, h, score in pixels, in file order."""


class WiderFaceError(RetinaServeError):
    """WIDER FACE files that cannot be used as they are; the message names the file and what to do."""


class WiderGroundTruthError(WiderFaceError):
    """Ground-truth files that are missing or are not the official WIDER FACE .mat files."""


class WiderPredictionError(WiderFaceError, ValueError):
    """Prediction files that are malformed, or that cover none of the ground-truth images."""


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass(frozen=True, eq=False)
class WiderGroundTruth:
    """WIDER FACE val ground truth: per event, its image names and each image's boxes (K, 4) x, y, w, h in pixels;
    per setting, each image's kept faces as 0-based indices into its boxes."""

    events: tuple[str, ...]
    images: tuple[tuple[str, ...], ...]
    boxes: tuple[tuple[np.ndarray, ...], ...]
    keep: Mapping[str, tuple[tuple[np.ndarray, ...], ...]]

    def __post_init__(self) -> None:
        if not len(self.events) == len(self.images) == len(self.boxes):
            raise ValueError("events, images and boxes need one entry per event")
        for setting, lists in self.keep.items():
            for event, names, boxes, kept in zip(self.events, self.images, self.boxes, lists, strict=True):
                if not len(names) == len(boxes) == len(kept):
                    raise ValueError(f"{event}: images, boxes and {setting} keep-lists differ in length")

    @property
    def num_images(self) -> int:
        return sum(len(names) for names in self.images)

    @property
    def num_faces(self) -> int:
        return sum(len(b) for event_boxes in self.boxes for b in event_boxes)

    def num_kept(self, setting: str) -> int:
        """Faces that count in ``setting`` (recall's denominator)."""
        return sum(len(k) for event_keep in self.keep[setting] for k in event_keep)


def _loadmat(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    from scipy.io import loadmat

    if not path.is_file():
        raise WiderGroundTruthError(
            f"WIDER FACE ground truth {path} not found; the folder needs {', '.join(GT_FILES)} "
            "(the official evaluation's ground_truth folder)"
        )
    try:
        data = loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3), OSError ...
        raise WiderGroundTruthError(f"{path} is not a readable MATLAB .mat file ({exc})") from exc
    missing = [key for key in keys if key not in data]
    if missing:
        raise WiderGroundTruthError(
            f"{path} is not the expected WIDER FACE ground truth: it lacks {', '.join(missing)}"
        )
    return data


def _cells(array: Any, path: Path, what: str) -> list[Any]:
    """A MATLAB cell column (n, 1) of objects -> its n cells."""
    if not isinstance(array, np.ndarray) or array.dtype != object or array.ndim != 2 or array.shape[1] != 1:
        raise WiderGroundTruthError(f"{path}: {what} is not a cell column as in the official WIDER FACE files")
    return [cell[0] for cell in array]


def load_wider_ground_truth(gt_dir: Path) -> WiderGroundTruth:
    """Reads the four official .mat files in ``gt_dir`` (see :data:`GT_FILES`)."""
    gt_dir = Path(gt_dir)
    main_path = gt_dir / GT_FILES[0]
    data = _loadmat(main_path, ("event_list", "file_list", "face_bbx_list"))
    event_cells = _cells(data["event_list"], main_path, "event_list")
    file_cells = _cells(data["file_list"], main_path, "file_list")
    box_cells = _cells(data["face_bbx_list"], main_path, "face_bbx_list")
    if not len(event_cells) == len(file_cells) == len(box_cells):
        raise WiderGroundTruthError(f"{main_path}: event_list, file_list and face_bbx_list differ in length")
    events = tuple(str(np.asarray(cell).ravel()[0]) for cell in event_cells)
    images: list[tuple[str, ...]] = []
    boxes: list[tuple[np.ndarray, ...]] = []
    for event, files, event_boxes in zip(events, file_cells, box_cells):
        names = tuple(str(np.asarray(cell[0]).ravel()[0]) for cell in files)
        if len(event_boxes) != len(names):
            raise WiderGroundTruthError(
                f"{main_path}: {event} has {len(names)} images but {len(event_boxes)} box lists"
            )
        images.append(names)
        boxes.append(tuple(np.asarray(cell[0], dtype=np.float64).reshape(-1, 4) for cell in event_boxes))

    keep: dict[str, tuple[tuple[np.ndarray, ...], ...]] = {}
    for setting, filename in zip(SETTINGS, GT_FILES[1:]):
        path = gt_dir / filename
        lists = _cells(_loadmat(path, ("gt_list",))["gt_list"], path, "gt_list")
        if len(lists) != len(events):
            raise WiderGroundTruthError(f"{path}: {len(lists)} events, {main_path.name} has {len(events)}")
        per_event = []
        for event, names, event_boxes, event_lists in zip(events, images, boxes, lists):
            if len(event_lists) != len(names):
                raise WiderGroundTruthError(
                    f"{path}: {event} has {len(event_lists)} keep-lists for {len(names)} images"
                )
            kept = tuple(np.asarray(cell[0]).astype(np.int64).ravel() - 1 for cell in event_lists)
            for name, image_boxes, indices in zip(names, event_boxes, kept):
                if indices.size and (indices.min() < 0 or indices.max() >= len(image_boxes)):
                    raise WiderGroundTruthError(f"{path}: {event}/{name} keeps a face index out of range")
            per_event.append(kept)
        keep[setting] = tuple(per_event)
    return WiderGroundTruth(events, tuple(images), tuple(boxes), keep)


def find_wider_ground_truth(near: Path) -> Path | None:
    """The folder holding the official ground truth next to a WIDER images folder, or None.

    Looks in ``ground_truth``, ``wider_face_split`` and ``eval_tools/ground_truth`` beside ``near`` and up to two
    folders above it (``WIDER_val/images`` -> ``WIDER_val`` -> the dataset root), and in those folders themselves.
    """
    near = Path(near).resolve()
    for base in (near, *list(near.parents)[:2]):
        for candidate in (base / "ground_truth", base / "wider_face_split", base / "eval_tools" / "ground_truth", base):
            if all((candidate / name).is_file() for name in GT_FILES):
                return candidate
    return None


# ----------------------------------------------------------------------------------------------- prediction files


def _image_stem(image_name: str) -> str:
    """``0_Parade_marchingband_1_465`` from that name with or without folders and ``.jpg``."""
    stem = image_name.replace("\\", "/").rsplit("/", 1)[-1]
    return stem.removesuffix(".jpg")


def wider_prediction_text(image_name: str, faces: Sequence[Face]) -> str:
    """One image's detections in the official format: its name, their count, then ``x y w h score`` per face
    (boxes to 3 decimals, scores to 6), in the order given (best first from a Detector)."""
    lines = [_image_stem(image_name), str(len(faces))]
    for face in faces:
        x1, y1, x2, y2 = face.box
        lines.append(f"{x1:.3f} {y1:.3f} {x2 - x1:.3f} {y2 - y1:.3f} {face.score:.6f}")
    return "\n".join(lines) + "\n"


def write_wider_prediction(out_dir: Path, event: str, image_name: str, faces: Sequence[Face]) -> Path:
    """Writes ``out_dir/event/<image name>.txt`` (see :func:`wider_prediction_text`), atomically: a file that
    exists is complete, which is what makes :func:`predict_wider` resumable."""
    stem = _image_stem(image_name)
    if not stem or not event or "/" in event or "\\" in event:
        raise ValueError(f"expected an event folder name and an image name, got {event!r} and {image_name!r}")
    folder = Path(out_dir) / event
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.txt"
    partial = folder / f".{stem}.txt.partial"
    partial.write_text(wider_prediction_text(stem, faces))
    partial.replace(target)
    return target


def read_wider_prediction(path: Path) -> tuple[str, np.ndarray]:
    """One official prediction file -> (image name from its first line, (N, 5) x, y, w, h, score in file order)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise WiderPredictionError(f"{path}: expected an image name line and a count line, found {len(lines)} lines")
    name = _image_stem(lines[0].strip())
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise WiderPredictionError(f"{path}: line 2 should be the number of faces, got {lines[1]!r}") from None
    rows: list[list[float]] = []
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if not tokens:
            continue
        try:
            if len(tokens) < 5:
                raise ValueError
            rows.append([float(token) for token in tokens[:5]])
        except ValueError:
            raise WiderPredictionError(f"{path}:{number}: expected 'x y w h score', got {line!r}") from None
    boxes = np.array(rows, dtype=np.float64).reshape(-1, 5)
    if len(boxes) != count:
        raise WiderPredictionError(f"{path}: line 2 says {count} faces but {len(boxes)} follow (a truncated file?)")
    if not np.isfinite(boxes).all():
        raise WiderPredictionError(f"{path}: contains a non-finite number (nan or inf)")
    return name, boxes


def read_wider_predictions(pred_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """A prediction folder (one subfolder per event, one ``.txt`` per image) -> event -> image name -> (N, 5).

    Images are named by each file's first line, as the official evaluation does; two files naming the same image
    raise. Files outside event folders and hidden files are not read.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise WiderPredictionError(f"prediction folder {pred_dir} does not exist")
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        per_image: dict[str, np.ndarray] = {}
        for path in sorted(event_dir.glob("*.txt")):
            if path.name.startswith("."):
                continue
            name, boxes = read_wider_prediction(path)
            if name in per_image:
                raise WiderPredictionError(f"{path}: a second file for image {name!r} in {event_dir}")
            if name != path.stem:
                log.warning("%s names image %r on its first line; that name is used", path, name)
            per_image[name] = boxes
        predictions[event_dir.name] = per_image
    return predictions


# ----------------------------------------------------------------------------------------------- the metric


def wider_box_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU of ``boxes`` (N, 4) and ``query`` (K, 4), both x1y1x2y2 inclusive pixel coordinates (+1 convention):
    (N, K). Operations in the original's order, so that results are bit-identical to it."""
    query_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iw = np.minimum(boxes[:, None, 2], query[None, :, 2]) - np.maximum(boxes[:, None, 0], query[None, :, 0]) + 1
    ih = np.minimum(boxes[:, None, 3], query[None, :, 3]) - np.maximum(boxes[:, None, 1], query[None, :, 1]) + 1
    intersection = iw * ih
    union = box_area[:, None] + query_area[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), intersection / union, 0.0)


def _xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=4) x, y, w, h -> (N, 4) x1, y1, x1 + w, y1 + h (float64)."""
    out = np.array(boxes[:, :4], dtype=np.float64)
    out[:, 2] = out[:, 2] + out[:, 0]
    out[:, 3] = out[:, 3] + out[:, 1]
    return out


def _score_normaliser(predictions: Predictions) -> tuple[float, float]:
    """(minimum, range) of every score, clamped as the original does (minimum <= 1, maximum >= 0)."""
    low, high = 1.0, 0.0
    for per_image in predictions.values():
        for boxes in per_image.values():
            if len(boxes):
                low = min(low, float(np.min(boxes[:, 4])))
                high = max(high, float(np.max(boxes[:, 4])))
    return low, high - low


def _normalised_scores(scores: np.ndarray, low: float, spread: float) -> np.ndarray:
    if spread == 0.0:  # every score equal: the original divides by zero; all pass every threshold here
        return np.ones_like(scores)
    return (scores - low) / spread


def _last_passing(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the last detection (in file order) whose score is >= each threshold, -1 where none: (T,)."""
    suffix_max = np.maximum.accumulate(scores[::-1])[::-1]  # non-increasing
    return np.searchsorted(-suffix_max, -thresholds, side="right") - 1


def _image_counts(
    best_face: np.ndarray, matched: np.ndarray, kept: np.ndarray, last: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One image, one setting -> (T,) non-ignored detections and (T,) recalled kept faces at each threshold.

    ``best_face`` (N,): the face each detection overlaps most; ``matched`` (N,): that IoU >= the threshold;
    ``kept`` (K,) bool: the setting's keep-list; ``last`` (T,): from :func:`_last_passing`.
    """
    on_kept = matched & kept[best_face]
    counted = np.cumsum(~(matched & ~kept[best_face]))  # a detection on a face outside the keep-list is ignored
    positions = np.flatnonzero(on_kept)
    _, first = np.unique(best_face[positions], return_index=True)  # later detections of a face: duplicates
    newly_recalled = np.zeros(len(best_face), dtype=np.int64)
    newly_recalled[positions[first]] = 1
    recalled = np.cumsum(newly_recalled)
    passing = last >= 0
    index = np.where(passing, last, 0)
    return np.where(passing, counted[index], 0), np.where(passing, recalled[index], 0)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the monotone precision envelope, sentinels (0, 0) and (1, 0) added."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass(frozen=True, eq=False)
class WiderCurve:
    """One setting's result: AP and the PR curve over the thresholds (precision NaN where nothing passes)."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    faces: int
    """Kept faces in this setting (recall's denominator)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "ap": self.ap,
            "faces": self.faces,
            "precision": [None if math.isnan(v) else v for v in self.precision.tolist()],
            "recall": self.recall.tolist(),
        }


@dataclass(frozen=True, eq=False)
class WiderResult:
    """AP and PR curve per setting, and which ground-truth images had no prediction file."""

    curves: dict[str, WiderCurve]
    images: int
    """Ground-truth images."""
    missing: tuple[str, ...] = ()
    """``event/image`` of the ground-truth images without a prediction file (counted as no detections)."""
    extra: int = 0
    """Prediction files for images outside the ground truth (not scored; their scores do enter the normalisation,
    as in the original)."""
    iou: float = 0.5
    thresholds: int = 1000

    @property
    def ap(self) -> dict[str, float]:
        return {setting: curve.ap for setting, curve in self.curves.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": "WIDER FACE val, official evaluation (reimplemented)",
            "ap": self.ap,
            "images": self.images,
            "missing_images": len(self.missing),
            "missing": list(self.missing),
            "extra_images": self.extra,
            "iou": self.iou,
            "thresholds": self.thresholds,
            "settings": {setting: curve.to_json() for setting, curve in self.curves.items()},
        }


def _check_shapes(predictions: Predictions) -> None:
    for event, per_image in predictions.items():
        for name, boxes in per_image.items():
            if boxes.ndim != 2 or (len(boxes) and boxes.shape[1] < 5):
                raise WiderPredictionError(f"{event}/{name}: expected (N, 5) x, y, w, h, score, got {boxes.shape}")


def evaluate_wider(
    predictions: Predictions, ground_truth: WiderGroundTruth, iou: float = 0.5, thresholds: int = 1000
) -> WiderResult:
    """The official WIDER FACE AP of ``predictions`` (event -> image -> (N, 5) x, y, w, h, score, file order).

    An image without predictions counts as no detections and is listed in :attr:`WiderResult.missing`; predictions
    that cover none of the ground-truth images raise :class:`WiderPredictionError`. The inputs are not modified.
    """
    if thresholds < 1:
        raise ValueError(f"thresholds must be >= 1, got {thresholds}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    _check_shapes(predictions)
    low, spread = _score_normaliser(predictions)
    threshold_values = 1 - np.arange(1, thresholds + 1) / thresholds
    counted = {setting: np.zeros(thresholds, dtype=np.int64) for setting in ground_truth.keep}
    recalled = {setting: np.zeros(thresholds, dtype=np.int64) for setting in ground_truth.keep}
    missing: list[str] = []
    seen = 0
    for e, (event, names) in enumerate(zip(ground_truth.events, ground_truth.images)):
        per_image = predictions.get(event, {})
        for i, name in enumerate(names):
            detections = per_image.get(name)
            if detections is None:
                missing.append(f"{event}/{name}")
                continue
            seen += 1
            gt_boxes = ground_truth.boxes[e][i]
            if len(gt_boxes) == 0 or len(detections) == 0:
                continue
            overlaps = wider_box_overlaps(_xywh_to_corners(detections), _xywh_to_corners(gt_boxes))
            best_face = overlaps.argmax(axis=1)
            matched = overlaps.max(axis=1) >= iou
            scores = _normalised_scores(np.asarray(detections[:, 4], np.float64), low, spread)
            last = _last_passing(scores, threshold_values)
            for setting, keep_lists in ground_truth.keep.items():
                kept = np.zeros(len(gt_boxes), dtype=bool)
                kept[keep_lists[e][i]] = True
                n_counted, n_recalled = _image_counts(best_face, matched, kept, last)
                counted[setting] += n_counted
                recalled[setting] += n_recalled
    if seen == 0:
        raise WiderPredictionError(
            f"the predictions cover none of the {ground_truth.num_images} ground-truth images (events read: "
            f"{', '.join(sorted(predictions)[:3]) or 'none'}{', ...' if len(predictions) > 3 else ''}); is this the "
            "prediction folder for this ground truth?"
        )
    if missing:
        log.info("%d of %d images have no predictions: counted as no detections", len(missing), seen + len(missing))
    known = {event: set(names) for event, names in zip(ground_truth.events, ground_truth.images)}
    extra = sum(1 for event, per_image in predictions.items() for name in per_image if name not in known.get(event, ()))
    curves = {}
    for setting in ground_truth.keep:
        faces = ground_truth.num_kept(setting)
        if faces == 0:
            raise WiderFaceError(f"the {setting} keep-list holds no face: recall is undefined")
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = recalled[setting] / counted[setting].astype(np.float64)
        recall = recalled[setting] / float(faces)
        curves[setting] = WiderCurve(_voc_ap(recall, precision), precision, recall, faces)
    return WiderResult(curves, ground_truth.num_images, tuple(missing), extra, iou, thresholds)


# ----------------------------------------------------------------------------------------------- running a model


@dataclass(frozen=True)
class WiderPredictionRun:
    """What :func:`predict_wider` did: files written now, files found from an earlier run, images that failed."""

    out_dir: Path
    written: int
    cached: int
    failed: dict[str, str] = field(default_factory=dict)
    """``event/image file`` -> why it failed."""


def list_wider_images(images_dir: Path) -> list[tuple[str, Path]]:
    """(event, image path) of every image in a WIDER layout: ``images_dir/<event>/<name>.jpg``, sorted.

    ``images_dir`` may also be the folder above ``images`` (``WIDER_val``).
    """
    from ..images import IMAGE_SUFFIXES

    images_dir = Path(images_dir)
    if (images_dir / "images").is_dir():
        images_dir = images_dir / "images"
    if not images_dir.is_dir():
        raise WiderFaceError(f"WIDER images folder {images_dir} does not exist")
    found = [
        (event_dir.name, path)
        for event_dir in sorted(p for p in images_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for path in sorted(event_dir.iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found:
        raise WiderFaceError(
            f"no images in {images_dir}: expected the WIDER layout <images>/<event>/<name>.jpg "
            "(e.g. WIDER_val/images/0--Parade/0_Parade_marchingband_1_465.jpg)"
        )
    return found


def predict_wider(
    images_dir: Path,
    out_dir: Path,
    detector: Detector,
    *,
    threshold: float = WIDER_THRESHOLD,
    nms_threshold: float = WIDER_NMS,
    resize: ResizePolicy | None = None,
    progress: bool = True,
) -> WiderPredictionRun:
    """Runs ``detector`` over a WIDER images folder, one official prediction file per image in ``out_dir``.

    Resumable: an image whose file exists is skipped (files are written atomically). Images are decoded at full
    size ("exact") and sized by ``resize`` (None: the detector's own policy). An image that cannot be read is
    reported (logged and returned in :attr:`WiderPredictionRun.failed`) and the others go on.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    out_dir = Path(out_dir)
    images = list_wider_images(images_dir)
    todo = [(event, path) for event, path in images if not (out_dir / event / f"{path.stem}.txt").is_file()]
    cached = len(images) - len(todo)
    if cached:
        log.info("%d of %d images already predicted in %s", cached, len(images), out_dir)
    failed: dict[str, str] = {}
    written = 0
    with logging_redirect_tqdm():
        bar = tqdm(todo, desc=f"WIDER {detector.name}", unit="img", disable=not progress, file=sys.stderr)
        for event, path in bar:
            try:
                result = detector.run(
                    [path], threshold=threshold, nms_threshold=nms_threshold, resize=resize, decode="exact"
                )[0]
            except (RetinaServeError, OSError) as exc:
                reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                failed[f"{event}/{path.name}"] = reason
                log.warning("%s (skipped: no prediction file written)", reason)
                continue
            write_wider_prediction(out_dir, event, path.stem, result.faces)
            written += 1
    return WiderPredictionRun(out_dir, written, cached, failed)
