"""Face annotations of any folder of photos: COCO-style JSON (boxes, optional 5 or 68 keypoints) or iBUG ``.pts``.

Everything becomes :class:`AnnotatedImage`: boxes x1y1x2y2 in pixels, points in our order, and which faces are to
be ignored. Five points follow :data:`retinaserve.detection.results.LANDMARK_NAMES` (left_eye, right_eye, nose,
mouth_left, mouth_right, where "left" is the one on the image's left); 68 points follow the iBUG / 300-W order
(0-based point 36 is the outer corner of the eye on the image's left).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detection.results import LANDMARK_NAMES
from ..errors import RetinaServeError
from ..images import IMAGE_SUFFIXES

__all__ = [
    "SUPPORTED_POINT_COUNTS",
    "AnnotatedImage",
    "AnnotationError",
    "five_from_68",
    "load_annotations",
    "load_coco",
    "load_pts",
    "read_pts",
]

log = logging.getLogger(__name__)

SUPPORTED_POINT_COUNTS = (5, 68)


class AnnotationError(RetinaServeError, ValueError):
    """An annotation file that cannot be read as faces: malformed, inconsistent, or naming images that are absent."""


@dataclass(frozen=True, eq=False)
class AnnotatedImage:
    """One photo and its faces.

    ``boxes``: (N, 4) x1y1x2y2 in pixels. ``points``: (N, K, 2) with K = 5 or 68, NaN for an unlabelled point (a
    face without landmarks is all NaN), or None when the file has no landmarks at all. ``ignore``: (N,) bool, faces
    that count neither as hit nor as miss (crowds, tiny faces); detections on them are ignored too.
    """

    path: Path
    boxes: np.ndarray
    points: np.ndarray | None
    ignore: np.ndarray

    def __post_init__(self) -> None:
        count = len(self.boxes)
        if self.boxes.shape != (count, 4):
            raise AnnotationError(f"{self.path}: boxes must be (N, 4), got {self.boxes.shape}")
        if self.ignore.shape != (count,) or self.ignore.dtype != bool:
            raise AnnotationError(f"{self.path}: ignore must be (N,) bool, got {self.ignore.shape} {self.ignore.dtype}")
        if self.points is not None and (
            self.points.ndim != 3 or self.points.shape[0] != count or self.points.shape[1:] not in ((5, 2), (68, 2))
        ):
            raise AnnotationError(f"{self.path}: points must be (N, 5 or 68, 2), got {self.points.shape}")

    @property
    def faces(self) -> int:
        """Number of annotated faces, ignored ones included."""
        return len(self.boxes)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) iBUG points -> (N, 5, 2) in our order: eye centres (mean of 36-41 and 42-47, 0-based), nose tip
    (30), mouth corners (48, 54). An eye centre is NaN when any of its six points is."""
    return np.stack(
        [
            points[:, 36:42].mean(axis=1),
            points[:, 42:48].mean(axis=1),
            points[:, 30],
            points[:, 48],
            points[:, 54],
        ],
        axis=1,
    )


def load_annotations(path: Path, images_dir: Path) -> list[AnnotatedImage]:
    """A COCO-style JSON file, one ``.pts`` file, or a folder of ``.pts`` files -> the annotated images, whose
    files must all exist under ``images_dir``."""
    path = Path(path)
    images_dir = Path(images_dir)
    if not path.exists():
        raise AnnotationError(f"annotations not found: {path}")
    if not images_dir.is_dir():
        raise AnnotationError(f"images folder not found: {images_dir}")
    if path.is_dir():
        pts_files = sorted(path.rglob("*.pts"))
        if not pts_files:
            raise AnnotationError(f"no .pts files in {path}; give a COCO-style .json file or a folder of .pts files")
        return load_pts(pts_files, images_dir, root=path)
    if path.suffix.lower() == ".pts":
        return load_pts([path], images_dir, root=path.parent)
    if path.suffix.lower() == ".json":
        return load_coco(path, images_dir)
    raise AnnotationError(f"{path}: expected a COCO-style .json file, a .pts file or a folder of .pts files")


def load_coco(path: Path, images_dir: Path) -> list[AnnotatedImage]:
    """COCO-style JSON: ``images[{id, file_name}]``, ``annotations[{image_id, bbox [x, y, w, h], keypoints
    [x, y, v] * K (optional), iscrowd / ignore (optional)}]``, ``categories[{keypoints: names}]`` (optional).

    K is 5 (our order; reordered when the category names them with :data:`LANDMARK_NAMES` in another order) or 68
    (iBUG order); v = 0 marks an unlabelled point. Images without annotations count as images without faces.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{path}: expected a COCO-style object with an 'images' list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise AnnotationError(f"{path}: 'annotations' must be a list")
    order = _keypoint_order(path, data.get("categories", []))

    files: dict[Any, Path] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise AnnotationError(f"{path}: images[{index}] needs an 'id' and a 'file_name'")
        if image["id"] in files:
            raise AnnotationError(f"{path}: image id {image['id']!r} appears twice")
        files[image["id"]] = images_dir / image["file_name"]
    _check_files_exist(list(files.values()), images_dir)

    per_image: dict[Any, list[tuple[list[float], np.ndarray | None, bool]]] = {key: [] for key in files}
    point_count: int | None = None
    for index, ann in enumerate(annotations):
        where = f"{path}: annotations[{index}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in files:
            raise AnnotationError(f"{where}: 'image_id' {_get(ann, 'image_id')!r} is not among the images")
        box = _coco_box(where, ann.get("bbox"))
        points = None
        if ann.get("keypoints"):
            points = _coco_keypoints(where, ann["keypoints"])
            if point_count is not None and len(points) != point_count:
                raise AnnotationError(f"{where}: {len(points)} keypoints where earlier faces have {point_count}")
            point_count = len(points)
        ignore = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        per_image[ann["image_id"]].append((box, points, ignore))

    if order is not None and point_count is not None and len(order) != point_count:
        raise AnnotationError(f"{path}: categories name {len(order)} keypoints but the faces have {point_count}")
    images = [
        _annotated(files[key], faces, point_count, order if point_count == 5 else None)
        for key, faces in per_image.items()
    ]
    if point_count is not None:
        _check_not_mirrored(path, images)
    return images


def read_pts(path: Path) -> np.ndarray:
    """An iBUG ``.pts`` file (``version: 1``, ``n_points: 68``, ``{``, one ``x y`` per line, ``}``) -> (68, 2).

    As menpo reads them, .pts coordinates are 1-based (the 300-W annotations were made in Matlab): 1 is subtracted.
    """
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not readable as a .pts file ({exc})") from None
    header: dict[str, str] = {}
    body_start = None
    for index, line in enumerate(lines):
        if line == "{":
            body_start = index + 1
            break
        key, sep, value = line.partition(":")
        if not sep:
            raise AnnotationError(f"{path}: expected 'key: value' header lines before '{{', got {line!r}")
        header[key.strip().lower()] = value.strip()
    if body_start is None or "}" not in lines[body_start:]:
        raise AnnotationError(f"{path}: expected the points between '{{' and '}}'")
    body = lines[body_start : lines.index("}", body_start)]
    try:
        declared = int(header["n_points"])
        points = np.array([[float(v) for v in line.split()] for line in body], dtype=np.float64)
    except KeyError:
        raise AnnotationError(f"{path}: header has no 'n_points'") from None
    except ValueError as exc:
        raise AnnotationError(f"{path}: not a number ({exc})") from None
    if points.shape != (declared, 2):
        raise AnnotationError(f"{path}: n_points is {declared} but {len(body)} 'x y' lines follow")
    if declared != 68:
        raise AnnotationError(f"{path}: {declared} points; .pts files are read as the 68-point iBUG layout")
    return points - 1.0


def load_pts(pts_files: Sequence[Path], images_dir: Path, *, root: Path) -> list[AnnotatedImage]:
    """One face per ``.pts`` file (68 iBUG points) on the image with the same relative path and stem under
    ``images_dir``. The box is the points' bounding box: tighter than a detector's box (no forehead), so a looser
    ``iou`` may suit such annotations; other faces in the image are not annotated and count as false positives."""
    images: list[AnnotatedImage] = []
    missing: list[Path] = []
    for pts in pts_files:
        relative = pts.relative_to(root)
        image_path = _find_image(images_dir / relative.parent, relative.stem)
        if image_path is None:
            missing.append(images_dir / relative.with_suffix(".*"))
            continue
        points = read_pts(pts)
        box = np.concatenate([points.min(axis=0), points.max(axis=0)])[None]
        images.append(AnnotatedImage(image_path, box, points[None], np.zeros(1, dtype=bool)))
    if missing:
        raise AnnotationError(_missing_message(missing, images_dir))
    _check_not_mirrored(root, images)
    return images


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _keypoint_order(path: Path, categories: Any) -> list[int] | None:
    """Indices that put 5 named keypoints in our order, or None when the file does not name them as we do."""
    names = None
    for category in categories if isinstance(categories, list) else []:
        if isinstance(category, dict) and category.get("keypoints"):
            names = [str(name) for name in category["keypoints"]]
            break
    if names is None:
        return None
    if len(names) not in SUPPORTED_POINT_COUNTS:
        raise AnnotationError(
            f"{path}: categories name {len(names)} keypoints; supported are 5 ({', '.join(LANDMARK_NAMES)}) "
            "or the 68 iBUG points"
        )
    if len(names) == 5 and sorted(names) == sorted(LANDMARK_NAMES):
        return [names.index(name) for name in LANDMARK_NAMES]
    return list(range(len(names)))


def _coco_box(where: str, bbox: Any) -> list[float]:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}") from None
    if not (w > 0 and h > 0):
        raise AnnotationError(f"{where}: 'bbox' needs a positive width and height, got {bbox!r}")
    return [x, y, x + w, y + h]


def _coco_keypoints(where: str, keypoints: Any) -> np.ndarray:
    """[x, y, v] * K -> (K, 2), NaN where v == 0 (not labelled)."""
    try:
        values = np.asarray(keypoints, dtype=np.float64)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: 'keypoints' must be numbers [x, y, v] * K") from None
    if values.ndim != 1 or len(values) % 3 or len(values) // 3 not in SUPPORTED_POINT_COUNTS:
        raise AnnotationError(
            f"{where}: 'keypoints' has {values.size} numbers; expected [x, y, v] for 5 points (15 numbers) "
            "or for the 68 iBUG points (204 numbers)"
        )
    triples = values.reshape(-1, 3)
    points = triples[:, :2].copy()
    points[triples[:, 2] <= 0] = np.nan
    return points


def _annotated(
    path: Path,
    faces: list[tuple[list[float], np.ndarray | None, bool]],
    point_count: int | None,
    order: list[int] | None,
) -> AnnotatedImage:
    boxes = np.array([box for box, _, _ in faces], dtype=np.float64).reshape(-1, 4)
    ignore = np.array([flag for _, _, flag in faces], dtype=bool)
    points = None
    if point_count is not None:
        points = np.full((len(faces), point_count, 2), np.nan)
        for index, (_, face_points, _) in enumerate(faces):
            if face_points is not None:
                points[index] = face_points if order is None else face_points[order]
    return AnnotatedImage(path, boxes, points, ignore)


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _check_files_exist(paths: list[Path], images_dir: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise AnnotationError(_missing_message(missing, images_dir))


def _missing_message(missing: list[Path], images_dir: Path) -> str:
    shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"{len(missing)} annotated image(s) not found under {images_dir}: {shown}; check --images"


def _check_not_mirrored(source: Path, images: Sequence[AnnotatedImage]) -> None:
    """Raise when most faces name their eyes or mouth corners from the subject's view (image-right first).

    The sign of (right - left) x (mouth centre - eye centre) does not change with in-plane rotation, so upside-down
    faces pass; it flips when left and right are swapped.
    """
    stacks = [img.points for img in images if img.points is not None and len(img.points)]
    if not stacks:
        return
    points = np.concatenate(stacks)
    five = five_from_68(points) if points.shape[1] == 68 else points
    eye_mid = (five[:, 0] + five[:, 1]) / 2
    mouth_mid = (five[:, 3] + five[:, 4]) / 2
    down = mouth_mid - eye_mid
    for name, first, second in (("eyes", 0, 1), ("mouth corners", 3, 4)):
        across = five[:, second] - five[:, first]
        cross = across[:, 0] * down[:, 1] - across[:, 1] * down[:, 0]
        cross = cross[np.isfinite(cross)]
        if len(cross) and np.mean(cross < 0) > 0.5:
            raise AnnotationError(
                f"{source}: in {np.sum(cross < 0)} of {len(cross)} faces the {name} are in mirrored order; points "
                "must name left and right as seen in the image (left_eye is the eye on the image's left, the "
                "subject's right eye), unlike COCO person keypoints"
            )
