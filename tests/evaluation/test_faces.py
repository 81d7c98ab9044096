"""``eval faces``: box AP and landmark NME on hand-built cases whose values are known by construction, the COCO and
.pts loaders, and one real run of the command on two photos annotated by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaserve.evaluation.annotations import AnnotatedImage, AnnotationError, five_from_68, load_annotations
from retinaserve.evaluation.faces import (
    FP,
    IGNORED,
    TP,
    ImageDetections,
    average_precision,
    evaluate_detections,
    interocular_distance,
    landmark_errors,
    match_detections,
    nme_auc,
)

from ..conftest import ASTRONAUT, GRACE_HOPPER, IMAGES

# A frontal face in our order (left_eye, right_eye, nose, mouth_left, mouth_right): eyes 40 px apart.
FIVE = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
EYES = 40.0


def face_at(x: float, y: float) -> tuple[list[float], np.ndarray]:
    """A 100 x 100 box at (x, y) and its five points."""
    return [x, y, x + 100, y + 100], FIVE + np.array([x, y])


def annotated(faces: list[tuple[list[float], np.ndarray]], ignore: list[bool] | None = None) -> AnnotatedImage:
    boxes = np.array([box for box, _ in faces], dtype=np.float64).reshape(-1, 4)
    points = np.array([points for _, points in faces], dtype=np.float64).reshape(-1, 5, 2)
    flags = np.array(ignore if ignore is not None else [False] * len(faces), dtype=bool)
    return AnnotatedImage(Path("photo.jpg"), boxes, points, flags)


def detected(faces: list[tuple[list[float], np.ndarray]], scores: list[float]) -> ImageDetections:
    return ImageDetections(
        np.array([box for box, _ in faces], dtype=np.float64).reshape(-1, 4),
        np.array(scores, dtype=np.float64),
        np.array([points for _, points in faces], dtype=np.float64).reshape(-1, 5, 2),
    )


def test_perfect_detections_give_ap_1_and_nme_0() -> None:
    first = [face_at(0, 0), face_at(200, 0)]
    second = [face_at(50, 300)]
    row = evaluate_detections(
        [annotated(first), annotated(second)], [detected(first, [0.99, 0.95]), detected(second, [0.9])], threshold=0.5
    )
    assert (row.ap, row.precision, row.recall) == (1.0, 1.0, 1.0)
    assert (row.faces, row.matched, row.landmark_faces) == (3, 3, 3)
    assert row.nme_mean == row.nme_median == row.nme_px == 0.0
    assert (row.auc_08, row.failure_rate) == (1.0, 0.0)
    assert row.ced_y[0] == 1.0 and row.ced_x[-1] == pytest.approx(0.08)


def test_landmarks_shifted_by_a_fraction_of_the_eye_distance_give_that_nme() -> None:
    truth = [face_at(0, 0), face_at(200, 0)]
    # every point moves by 2 % resp. 10 % of the inter-ocular distance, along unit vectors
    moved = [
        (truth[0][0], truth[0][1] + 0.02 * EYES * np.array([0.6, 0.8])),
        (truth[1][0], truth[1][1] + 0.10 * EYES * np.array([-0.8, 0.6])),
    ]
    nme, pixels = landmark_errors(np.stack([m[1] for m in moved]), np.stack([t[1] for t in truth]))
    assert nme == pytest.approx([0.02, 0.10]) and pixels == pytest.approx([0.8, 4.0])
    row = evaluate_detections([annotated(truth)], [detected(moved, [0.9, 0.8])], threshold=0.5)
    assert row.ap == 1.0 and row.landmark_faces == 2
    assert row.nme_mean == pytest.approx(0.06) and row.nme_median == pytest.approx(0.06)


def test_nme_pixels_auc_and_failures() -> None:
    truth = [face_at(0, 0), face_at(200, 0)]
    # face 1: every point 0.8 px right (NME 0.02); face 2: every point 4 px down (NME 0.10, a failure)
    moved = [(truth[0][0], truth[0][1] + [0.02 * EYES, 0.0]), (truth[1][0], truth[1][1] + [0.0, 0.10 * EYES])]
    row = evaluate_detections([annotated(truth)], [detected(moved, [0.9, 0.8])], threshold=0.5)
    assert row.nme_mean == pytest.approx(0.06) and row.nme_median == pytest.approx(0.06)
    assert row.nme_px == pytest.approx((0.8 + 4.0) / 2)
    assert row.failure_rate == 0.5
    # AUC@0.08 = mean(max(0, 1 - nme / 0.08)) = (0.75 + 0) / 2
    assert row.auc_08 == pytest.approx(0.375)
    assert nme_auc(np.array([0.04])) == pytest.approx(0.5)


def test_boxes_shifted_below_the_iou_threshold_miss_and_a_looser_iou_hits() -> None:
    truth = [face_at(0, 0)]
    # 50 px to the right: intersection 50 x 100, union 15000 -> IoU 1/3
    shifted = [face_at(50, 0)]
    strict = evaluate_detections([annotated(truth)], [detected(shifted, [0.9])], threshold=0.5, iou=0.5)
    assert (strict.ap, strict.precision, strict.recall, strict.matched) == (0.0, 0.0, 0.0, 0)
    assert np.isnan(strict.nme_mean) and strict.landmark_faces == 0
    loose = evaluate_detections([annotated(truth)], [detected(shifted, [0.9])], threshold=0.5, iou=0.3)
    assert (loose.ap, loose.precision, loose.recall, loose.matched) == (1.0, 1.0, 1.0, 1)


def test_missed_faces_lower_recall_and_ap_to_the_fraction_found() -> None:
    truth = [face_at(0, 0), face_at(200, 0), face_at(400, 0), face_at(600, 0)]
    row = evaluate_detections([annotated(truth)], [detected(truth[:3], [0.9, 0.8, 0.7])], threshold=0.5)
    # precision 1 up to recall 3/4, nothing beyond: AP = 3/4 * 1
    assert row.recall == 0.75 and row.precision == 1.0 and row.ap == pytest.approx(0.75)
    assert (row.faces, row.matched) == (4, 3)


def test_duplicates_are_false_positives() -> None:
    a, b = face_at(0, 0), face_at(200, 0)
    duplicate = (list(np.add(a[0], 2.0)), a[1])
    row = evaluate_detections([annotated([a, b])], [detected([a, duplicate, b], [0.9, 0.8, 0.7])], threshold=0.5)
    # by score: a (TP), duplicate of a (FP), b (TP) -> (recall, precision) = (1/2, 1), (1/2, 1/2), (1, 2/3);
    # made monotone: 1 up to recall 1/2, 2/3 up to 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert row.ap == pytest.approx(5 / 6)
    assert row.precision == pytest.approx(2 / 3) and row.recall == 1.0 and row.matched == 2
    labels, gt_index = match_detections(
        np.array([a[0], duplicate[0], b[0]]), np.array([0.9, 0.8, 0.7]), np.array([a[0], b[0]]), np.zeros(2, bool)
    )
    assert labels.tolist() == [TP, FP, TP] and gt_index.tolist() == [0, -1, 1]


def test_the_best_scored_detection_takes_the_best_overlapping_face() -> None:
    left, right = [0.0, 0.0, 100.0, 100.0], [60.0, 0.0, 160.0, 100.0]
    between = [50.0, 0.0, 150.0, 100.0]  # IoU 0.82 with right, 0.33 with left
    labels, gt_index = match_detections(
        np.array([left, between]), np.array([0.5, 0.9]), np.array([left, right]), np.zeros(2, bool), 0.3
    )
    assert labels.tolist() == [TP, TP] and gt_index.tolist() == [0, 1]


def test_ignored_faces_count_neither_as_hit_nor_as_miss() -> None:
    counted, crowd = face_at(0, 0), face_at(300, 0)
    image = annotated([counted, crowd], ignore=[False, True])
    # the ignored face is found with the best score, twice, then the counted one: only the last counts
    found = detected([crowd, crowd, counted], [0.99, 0.98, 0.6])
    row = evaluate_detections([image], [found], threshold=0.5)
    assert (row.ap, row.precision, row.recall, row.faces, row.matched) == (1.0, 1.0, 1.0, 1, 1)
    labels, _ = match_detections(found.boxes, found.scores, image.boxes, image.ignore)
    assert labels.tolist() == [IGNORED, IGNORED, TP]
    missed = evaluate_detections([image], [detected([crowd], [0.9])], threshold=0.5)
    assert (missed.ap, missed.recall, missed.faces) == (0.0, 0.0, 1)
    assert np.isnan(missed.precision)  # nothing counted was kept


def test_tied_scores_are_one_point_of_the_curve_whatever_their_order() -> None:
    truth, elsewhere = face_at(0, 0), face_at(500, 500)
    for order in ([truth, elsewhere], [elsewhere, truth]):
        row = evaluate_detections([annotated([truth])], [detected(order, [0.8, 0.8])], threshold=0.5)
        # no threshold separates the two: one point (recall 1, precision 1/2) -> AP 1/2
        assert row.ap == pytest.approx(0.5)
    assert average_precision(np.array([0.9, 0.8, 0.8]), np.array([True, False, True]), 2) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )


def test_detections_under_the_threshold_count_for_ap_only() -> None:
    truth = [face_at(0, 0), face_at(200, 0)]
    row = evaluate_detections([annotated(truth)], [detected(truth, [0.9, 0.3])], threshold=0.5)
    assert row.ap == 1.0 and row.recall == 0.5 and row.matched == 1 and row.landmark_faces == 1


def test_faces_without_landmarks_are_skipped_for_nme() -> None:
    truth = [face_at(0, 0), face_at(200, 0)]
    image = annotated(truth)
    assert image.points is not None
    image.points[1] = np.nan
    found = detected([(truth[0][0], truth[0][1] + [0.0, 0.04 * EYES]), truth[1]], [0.9, 0.8])
    row = evaluate_detections([image], [found], threshold=0.5)
    assert row.matched == 2 and row.landmark_faces == 1 and row.nme_mean == pytest.approx(0.04)


def ibug_68(x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """68 points in iBUG order with known eye corners, eye centres, nose tip and mouth corners."""
    points = np.zeros((68, 2))
    points[:17] = np.stack([np.linspace(0, 100, 17), 50 + 40 * np.sin(np.linspace(0, np.pi, 17))], axis=1)
    points[17:27] = np.stack([np.linspace(15, 85, 10), np.full(10, 25.0)], axis=1)
    points[27:36] = [[50, 35], [50, 42], [50, 49], [50, 56], [40, 62], [45, 63], [50, 64], [55, 63], [60, 62]]
    eye = np.array([[-10, 0], [-4, -4], [4, -4], [10, 0], [4, 4], [-4, 4]], dtype=np.float64)  # mean (0, 0)
    points[36:42] = eye + np.array([30, 40])  # outer corner 36 at x = 20
    points[42:48] = eye + np.array([70, 40])  # both eyes run left to right: 42 inner corner at 60, 45 outer at 80
    points[48:68] = np.stack([np.linspace(35, 65, 20), np.full(20, 80.0)], axis=1)
    points[48], points[54] = [35, 80], [65, 80]
    return points + np.array([x, y])


def test_68_point_truth_is_reduced_to_five_and_normalised_by_the_outer_eye_corners() -> None:
    points = ibug_68(100, 100)[None]
    five = five_from_68(points)
    assert five[0].tolist() == [[130, 140], [170, 140], [150, 156], [135, 180], [165, 180]]
    assert interocular_distance(points).tolist() == [60.0]  # corners 36 and 45: x 120 and 180
    nme, pixels = landmark_errors(five + np.array([3.0, 0.0]), points)
    assert nme.tolist() == pytest.approx([3 / 60]) and pixels.tolist() == pytest.approx([3.0])
    truth = AnnotatedImage(Path("p.jpg"), np.array([[100.0, 100, 200, 190]]), points, np.zeros(1, bool))
    row = evaluate_detections(
        [truth], [ImageDetections(truth.boxes, np.array([0.9]), five + np.array([0.0, 6.0]))], threshold=0.5
    )
    assert row.nme_mean == pytest.approx(0.1) and row.failure_rate == 1.0


# --- loaders -----------------------------------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def coco_keypoints(points: np.ndarray, visible: list[int] | None = None) -> list[float]:
    flags = visible if visible is not None else [2] * len(points)
    return [float(v) for (x, y), flag in zip(points, flags) for v in (x, y, flag)]


def test_coco_json_gives_boxes_points_in_our_order_and_ignored_faces(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.jpg")
    write_image(tmp_path / "img" / "sub" / "b.png")
    names = ["nose", "left_eye", "right_eye", "mouth_left", "mouth_right"]  # another order, by name
    named = FIVE[[2, 0, 1, 3, 4]]
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "sub/b.png"},
            {"id": 3, "file_name": "a.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "bbox": [10, 20, 30, 40], "keypoints": coco_keypoints(named, [2, 2, 1, 0, 2])},
            {"image_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"image_id": 2, "bbox": [1, 2, 3, 4], "ignore": True, "keypoints": coco_keypoints(named)},
        ],
        "categories": [{"id": 1, "name": "face", "keypoints": names}],
    }
    (tmp_path / "faces.json").write_text(json.dumps(data))
    images = load_annotations(tmp_path / "faces.json", tmp_path / "img")
    folder = tmp_path / "img"
    assert [img.path for img in images] == [folder / "a.jpg", folder / "sub" / "b.png", folder / "a.jpg"]
    first = images[0]
    assert first.boxes.tolist() == [[10, 20, 40, 60], [0, 0, 5, 5]]
    assert first.ignore.tolist() == [False, True]
    assert first.points is not None and first.points.shape == (2, 5, 2)
    expected = FIVE.copy()
    expected[3] = np.nan  # mouth_left was v = 0
    np.testing.assert_array_equal(first.points[0], expected)
    assert np.isnan(first.points[1]).all()  # a face without keypoints
    assert images[1].ignore.tolist() == [True]
    assert images[2].faces == 0  # an image without annotations is an image without faces


def test_coco_json_with_68_keypoints(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    data = {
        "images": [{"id": 7, "file_name": "a.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [0, 0, 100, 100], "keypoints": coco_keypoints(ibug_68())}],
    }
    (tmp_path / "faces.json").write_text(json.dumps(data))
    (image,) = load_annotations(tmp_path / "faces.json", tmp_path)
    assert image.points is not None and image.points.shape == (1, 68, 2)
    np.testing.assert_array_equal(image.points[0], ibug_68())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable as JSON"),
        ('{"annotations": []}', "'images' list"),
        ('{"images": [{"id": 1}]}', "'file_name'"),
        ('{"images": [{"id": 1, "file_name": "gone.jpg"}]}', "1 annotated image(s) not found"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}',
         "'image_id' 2 is not among the images"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1]}]}',
         "'bbox' must be [x, y, width, height]"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 0, 1]}]}',
         "positive width and height"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], '
         '"keypoints": [1, 2, 2, 3, 4, 2, 5, 6, 2, 7, 8, 2]}]}', "12 numbers; expected [x, y, v] for 5 points"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"keypoints": ["a", "b", "c"]}]}',
         "categories name 3 keypoints"),
    ],
)  # fmt: skip
def test_malformed_coco_json_raises_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "faces.json").write_text(content)
    with pytest.raises(AnnotationError) as caught:
        load_annotations(tmp_path / "faces.json", tmp_path)
    assert message in str(caught.value)


def test_coco_points_named_from_the_subjects_view_are_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    mirrored = FIVE[[1, 0, 2, 4, 3]]  # COCO person keypoints: "left" is the subject's left, on the image's right
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"image_id": 1, "bbox": [0, 0, 100, 100], "keypoints": coco_keypoints(mirrored)}],
    }
    (tmp_path / "faces.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="eyes are in mirrored order"):
        load_annotations(tmp_path / "faces.json", tmp_path)


def write_pts(path: Path, points: np.ndarray, declared: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{float(x)} {float(y)}" for x, y in points)
    path.write_text(f"version: 1\nn_points: {declared or len(points)}\n{{\n{body}\n}}\n")
    return path


def test_pts_folder_gives_one_face_per_file_boxed_by_its_points(tmp_path: Path) -> None:
    write_pts(tmp_path / "ann" / "one.pts", ibug_68(11, 21))  # 1-based, as 300-W's
    write_pts(tmp_path / "ann" / "deeper" / "two.pts", ibug_68(51, 61))
    write_image(tmp_path / "img" / "one.png")
    write_image(tmp_path / "img" / "deeper" / "two.jpg")
    images = load_annotations(tmp_path / "ann", tmp_path / "img")
    assert [img.path.name for img in images] == ["two.jpg", "one.png"]
    two, one = images
    assert one.points is not None and one.points.shape == (1, 68, 2)
    np.testing.assert_allclose(one.points[0], ibug_68(10, 20))
    # x from the jaw's ends (0, 100), y from the brows (25) to the chin (90), 1-based -> 0-based
    np.testing.assert_allclose(one.boxes, [[10, 45, 110, 110]])
    np.testing.assert_allclose(two.boxes, [[50, 85, 150, 150]])
    assert one.ignore.tolist() == [False]
    (single,) = load_annotations(tmp_path / "ann" / "one.pts", tmp_path / "img")
    np.testing.assert_array_equal(single.boxes, one.boxes)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("version: 1\nn_points: 68\n{\n1 2\n}\n", "n_points is 68 but 1 'x y' lines follow"),
        ("version: 1\nn_points: 68\n1 2\n", "expected 'key: value' header lines"),
        ("version: 1\n{\n1 2\n}\n", "no 'n_points'"),
        ("version: 1\nn_points: 1\n{\n1 x\n}\n", "not a number"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n", "2 points; .pts files are read as the 68-point"),
        ("version: 1\nn_points: 68\n{\n1 2\n", "between '{' and '}'"),
    ],
)
def test_malformed_pts_raises_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "a.pts").write_text(content)
    write_image(tmp_path / "a.jpg")
    with pytest.raises(AnnotationError) as caught:
        load_annotations(tmp_path / "a.pts", tmp_path)
    assert message in str(caught.value)


def test_pts_without_its_image_and_empty_folders_raise(tmp_path: Path) -> None:
    write_pts(tmp_path / "ann" / "lonely.pts", ibug_68())
    (tmp_path / "img").mkdir()
    with pytest.raises(AnnotationError, match="not found under"):
        load_annotations(tmp_path / "ann", tmp_path / "img")
    with pytest.raises(AnnotationError, match=r"no \.pts files"):
        load_annotations(tmp_path / "img", tmp_path / "img")
    with pytest.raises(AnnotationError, match="annotations not found"):
        load_annotations(tmp_path / "nothing.json", tmp_path / "img")


# --- the command on real photos ------------------------------------------------------------------------------------

# Measured by hand on the photos (zoomed, with a pixel grid), not taken from any detector: face box from the cheeks
# to the chin and the top of the forehead under the hair or cap; eye = pupil centre; points within ~3 px.
HAND_LABELS = {
    ASTRONAUT.name: ([181, 76, 87, 102], [[203, 101], [246, 103], [224, 127], [204, 140], [244, 142]]),
    GRACE_HOPPER.name: ([165, 140, 195, 188], [[221, 189], [304, 187], [264, 242], [228, 277], [303, 276]]),
}


def test_eval_faces_command_on_two_hand_annotated_photos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared: Path
) -> None:
    from retinaserve.cli import main

    data = {
        "images": [{"id": i, "file_name": name, "width": 0, "height": 0} for i, name in enumerate(HAND_LABELS)],
        "annotations": [
            {"image_id": i, "bbox": box, "keypoints": coco_keypoints(np.array(points, dtype=np.float64))}
            for i, (box, points) in enumerate(HAND_LABELS.values())
        ],
        "categories": [
            {"id": 1, "name": "face", "keypoints": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]}
        ],
    }
    (tmp_path / "faces.json").write_text(json.dumps(data))
    models, variants = ["retinaface-mnet025-edge", "ultralight-slim"], ["torch-baseline/fp32", "onnx/fp32"]
    code = main(
        [
            "eval",
            "faces",
            "--annotations",
            str(tmp_path / "faces.json"),
            "--images",
            str(IMAGES),
            "--models",
            ",".join(models),
            "--variants",
            ",".join(variants),
            "--json",
            str(tmp_path / "eval.json"),
            "--plot",
            str(tmp_path / "ced.png"),
            "-q",
        ]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [(row["model"], row["variant"]) for row in rows] == [(m, v) for m in models for v in variants]
    for row in rows:
        assert {"model", "variant", "ap", "precision", "recall", "nme_mean", "nme_median", "faces", "matched"} <= set(
            row
        )
        assert row["faces"] == 2 and row["matched"] == 2 and row["recall"] == 1.0
        assert row["ap"] == 1.0
        # hand labels within ~3 px of where the models put the points: 3 px is 7 % of the astronaut's 43 px
        assert row["nme_mean"] < 0.08 and row["nme_px"] < 5.0
    for model in models:  # the exact backends agree with the reference
        torch_row, onnx_row = (row for row in rows if row["model"] == model)
        assert onnx_row["nme_mean"] == pytest.approx(torch_row["nme_mean"], abs=1e-3)
    assert "retinaface-mnet025-edge  torch-baseline/fp32" in out and "AP@0.5" in out
    assert (tmp_path / "ced.png").stat().st_size > 0


def test_a_variant_that_cannot_run_here_gets_a_row_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared: Path
) -> None:
    from retinaserve.cli import main

    box, points = HAND_LABELS[ASTRONAUT.name]
    data = {
        "images": [{"id": 1, "file_name": ASTRONAUT.name}],
        "annotations": [{"image_id": 1, "bbox": box, "keypoints": coco_keypoints(np.array(points, np.float64))}],
    }
    (tmp_path / "faces.json").write_text(json.dumps(data))
    argv = ["eval", "faces", "--annotations", str(tmp_path / "faces.json"), "--images", str(IMAGES), "-q"]
    argv += ["--models", "retinaface-mnet025-edge", "--json", str(tmp_path / "eval.json")]
    code = main([*argv, "--variants", "torch-baseline/fp16,torch-baseline/fp32"])  # fp16 is torch's, not baseline's
    assert code == 1
    failed, ran = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert failed["variant"] == "torch-baseline/fp16" and failed["ap"] is None and failed["error"]
    assert ran["variant"] == "torch-baseline/fp32" and ran["ap"] == 1.0
    out = capsys.readouterr().out
    assert "torch-baseline/fp16  -" in out and "not run: " in out

    with pytest.raises(SystemExit):  # argparse: backend/precision expected
        main([*argv, "--variants", "onnx"])
    assert "expected backend/precision" in capsys.readouterr().err
    assert main([*argv, "--variants", "onnx/fp32", "--models", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model 'nope'")
