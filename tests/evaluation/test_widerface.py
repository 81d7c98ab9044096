"""The WIDER FACE protocol: the official .mat files, known-by-construction APs, the official code's own numbers on
synthetic predictions, the prediction file format, and ``retinaserve eval widerface`` end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from retinaserve.cli import main
from retinaserve.detection.results import Face, Landmarks
from retinaserve.evaluation.widerface import (
    SETTINGS,
    WiderGroundTruth,
    WiderGroundTruthError,
    WiderPredictionError,
    evaluate_wider,
    load_wider_ground_truth,
    predict_wider,
    read_wider_prediction,
    read_wider_predictions,
    wider_box_overlaps,
    wider_prediction_text,
    write_wider_prediction,
)

from ..conftest import GRACE_HOPPER, SHARED, SIX_PEOPLE, WEIGHTS

WIDER_GT = SHARED / "wider_face" / "ground_truth"


@pytest.fixture(scope="module")
def wider_gt() -> WiderGroundTruth:
    if not (WIDER_GT / "wider_face_val.mat").is_file():
        pytest.skip(f"official WIDER FACE ground truth not at {WIDER_GT}")
    return load_wider_ground_truth(WIDER_GT)


_NO_POINTS = Landmarks((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))


def _face(x: float, y: float, w: float, h: float, score: float) -> Face:
    return Face(box=(x, y, x + w, y + h), score=score, landmarks=_NO_POINTS)


def _small_gt(boxes: Sequence[Sequence[Sequence[float]]], keep: list[list[int]] | None = None) -> WiderGroundTruth:
    """One event ``0--Test`` with images ``img0``, ``img1`` ...; the same keep-list (default: every face) in all
    three settings."""
    arrays = tuple(np.array(b, dtype=np.float64).reshape(-1, 4) for b in boxes)
    kept = tuple(np.array(keep[i] if keep is not None else range(len(b)), dtype=np.int64) for i, b in enumerate(arrays))
    names = tuple(f"img{i}" for i in range(len(arrays)))
    return WiderGroundTruth(("0--Test",), (names,), (arrays,), {s: (kept,) for s in SETTINGS})


def _preds(*rows_per_image: Sequence[Sequence[float]]) -> dict[str, dict[str, np.ndarray]]:
    return {"0--Test": {f"img{i}": np.array(r, dtype=np.float64).reshape(-1, 5) for i, r in enumerate(rows_per_image)}}


# ----------------------------------------------------------------------------------------------- the .mat files


def test_official_ground_truth_counts(wider_gt: WiderGroundTruth) -> None:
    # The same numbers came out of the official evaluation.py's own reader (get_gt_boxes) on these files:
    # 61 events, 3226 images, 39708 faces; keep-lists 7211 / 13319 / 31958 faces.
    assert len(wider_gt.events) == 61
    assert wider_gt.num_images == 3226
    assert wider_gt.num_faces == 39708
    assert {s: wider_gt.num_kept(s) for s in SETTINGS} == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert wider_gt.events[0] == "0--Parade"
    assert wider_gt.images[0][0] == "0_Parade_marchingband_1_465"
    np.testing.assert_array_equal(wider_gt.boxes[0][0][0], [345, 211, 4, 4])
    assert all(len(names) == len(set(names)) for names in wider_gt.images)


def test_every_ground_truth_box_as_a_detection_scores_ap_one(wider_gt: WiderGroundTruth) -> None:
    rng = np.random.default_rng(0)
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for event, names, boxes in zip(wider_gt.events, wider_gt.images, wider_gt.boxes):
        per_image = {}
        for name, image_boxes in zip(names, boxes):
            _, first = np.unique(image_boxes, axis=0, return_index=True)
            usable = np.sort(first[(image_boxes[first, 2] >= 0) & (image_boxes[first, 3] >= 0)])
            per_image[name] = np.hstack([image_boxes[usable], rng.random((len(usable), 1))])
        predictions[event] = per_image
    ap = evaluate_wider(predictions, wider_gt).ap
    assert ap["easy"] == pytest.approx(1.0, abs=1e-12)
    assert ap["medium"] == pytest.approx(1.0, abs=1e-12)
    # Two hard faces no detection can recall: one box has a negative width (39_Ice_Skating_iceskiing_39_583,
    # w = -2: IoU 0 even with itself) and one is listed twice (21_Festival_Festival_21_604: the second copy
    # always loses the argmax to the first). Precision stays 1, so AP is the final recall.
    assert ap["hard"] == pytest.approx(31956 / 31958, abs=1e-12)


def test_missing_and_foreign_ground_truth_files_raise(tmp_path: Path) -> None:
    with pytest.raises(WiderGroundTruthError, match="wider_face_val.mat not found"):
        load_wider_ground_truth(tmp_path)
    (tmp_path / "wider_face_val.mat").write_bytes(b"this is not a MATLAB file, just some bytes" * 10)
    with pytest.raises(WiderGroundTruthError, match="not a readable MATLAB .mat file"):
        load_wider_ground_truth(tmp_path)
    savemat(tmp_path / "wider_face_val.mat", {"something_else": np.zeros(3)})
    with pytest.raises(WiderGroundTruthError, match="lacks event_list, file_list, face_bbx_list"):
        load_wider_ground_truth(tmp_path)


# ----------------------------------------------------------------------------------------------- known by construction


def test_box_overlaps_use_the_plus_one_pixel_convention() -> None:
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])  # 11 x 11 pixels
    shifted = np.array([[3.5, 0.0, 13.5, 10.0]])  # 7.5 x 11 in common: 82.5 / (242 - 82.5)
    assert wider_box_overlaps(shifted, gt)[0, 0] == pytest.approx(82.5 / 159.5)
    assert wider_box_overlaps(np.array([[11.0, 0.0, 20.0, 10.0]]), gt)[0, 0] == 0.0  # touching: no pixel in common
    # the same pair without the +1 is 65 / 135 = 0.48 < 0.5: the convention decides a match here
    one = _small_gt([[[0, 0, 10, 10]]])
    assert evaluate_wider(_preds([[3.5, 0, 10, 10, 0.9]]), one).ap["hard"] == pytest.approx(1.0)
    assert evaluate_wider(_preds([[3.8, 0, 10, 10, 0.9]]), one).ap["hard"] == 0.0


def test_detections_below_half_iou_score_zero() -> None:
    boxes = [[[10, 10, 20, 20], [100, 50, 30, 40]], [[5, 5, 50, 60]]]
    gt = _small_gt(boxes)
    rows = [[[x + 0.6 * w, y, w, h, s] for (x, y, w, h), s in zip(image, (0.9, 0.5))] for image in boxes]
    result = evaluate_wider(_preds(*rows), gt)
    assert result.ap == {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    assert result.curves["hard"].recall.max() == 0.0


def test_recall_stops_at_the_share_of_faces_detected() -> None:
    rng = np.random.default_rng(3)
    boxes = [[[x * 60.0, y * 80.0, 40.0, 50.0] for x in range(2) for y in range(2)] for _ in range(10)]
    gt = _small_gt(boxes)
    rows = []
    for image in boxes:
        found = image[:2]  # half of every image's faces, with the high scores
        fps = [[500.0 + 60 * k, 500.0, 30.0, 30.0, float(rng.uniform(0.05, 0.3))] for k in range(3)]
        rows.append([[*b, float(rng.uniform(0.6, 1.0))] for b in found] + fps)
    result = evaluate_wider(_preds(*rows), gt)
    for setting in SETTINGS:
        curve = result.curves[setting]
        assert curve.faces == 40
        assert curve.recall.max() == 0.5
        assert curve.ap == pytest.approx(0.5, abs=1e-12)  # precision 1 up to recall 0.5, nothing after


def test_duplicates_are_false_positives_and_there_is_no_second_choice() -> None:
    gt = _small_gt([[[0, 0, 40, 40], [100, 0, 40, 40]]])
    face_a, face_b = [0, 0, 40, 40], [100, 0, 40, 40]
    assert evaluate_wider(_preds([[*face_a, 0.9], [*face_b, 0.7]]), gt).ap["hard"] == pytest.approx(1.0)
    # A duplicate of face A between them: (P, R) = (1, 1/2), (1/2, 1/2), (2/3, 1) -> AP 1/2 + 1/2 * 2/3
    with_duplicate = _preds([[*face_a, 0.9], [2, 1, 40, 40, 0.8], [*face_b, 0.7]])
    assert evaluate_wider(with_duplicate, gt).ap["hard"] == pytest.approx(5 / 6)
    # A detection that overlaps A most (taken) and B by more than 0.5 does not fall back to B: false positive
    gt_close = _small_gt([[[0, 0, 40, 40], [8, 0, 40, 40]]])
    between = _preds([[0, 0, 40, 40, 0.9], [2, 0, 40, 40, 0.8]])
    assert wider_box_overlaps(np.array([[2.0, 0, 42, 40]]), np.array([[8.0, 0, 48, 40]]))[0, 0] > 0.5
    assert evaluate_wider(between, gt_close).curves["hard"].recall.max() == 0.5


def test_detections_on_faces_outside_the_keep_list_are_ignored() -> None:
    # faces A and C count, B (index 1) is outside the keep-list
    gt = _small_gt([[[0, 0, 40, 40], [100, 0, 40, 40], [200, 0, 40, 40]]], keep=[[0, 2]])
    base = [[0, 0, 40, 40, 0.9], [300, 300, 40, 40, 0.7], [200, 0, 40, 40, 0.6]]
    on_b = [[101, 1, 40, 40, 0.95], [99, 0, 41, 40, 0.3], [100, 2, 40, 40, 0.65]]
    expected = 1 / 2 + 1 / 2 * 2 / 3  # TP, FP, TP
    assert evaluate_wider(_preds(base), gt).ap["hard"] == pytest.approx(expected)
    in_score_order = sorted(base + on_b, key=lambda row: -row[4])
    assert evaluate_wider(_preds(in_score_order), gt).ap["hard"] == pytest.approx(expected)
    # out of score order too, as long as no ignored detection outscores a counted one listed before it (see
    # test_tied_scores_pass_together_and_file_order_is_kept for the original's file-order rule)
    assert evaluate_wider(_preds(on_b[:1] + base + on_b[1:2]), gt).ap["hard"] == pytest.approx(expected)
    # near B but below 0.5 IoU: a false positive like any other (the first detection, so precision drops to 0.5)
    near_b = [[120, 0, 40, 40, 0.95]]
    assert evaluate_wider(_preds(near_b + base), gt).ap["hard"] == pytest.approx(1 / 2 * 1 / 2 + 1 / 2 * 2 / 4)


def test_tied_scores_pass_together_and_file_order_is_kept() -> None:
    gt = _small_gt([[[0, 0, 40, 40], [100, 0, 40, 40]]])
    a, b, fp = [0, 0, 40, 40, 0.9], [100, 0, 40, 40, 0.5], [300, 300, 40, 40, 0.5]
    # (P, R) = (1, 1/2) then, the tie passing together, (2/3, 1): AP 1/2 + 1/2 * 2/3 in either order of the tie
    assert evaluate_wider(_preds([a, b, fp]), gt).ap["hard"] == pytest.approx(5 / 6)
    assert evaluate_wider(_preds([a, fp, b]), gt).ap["hard"] == pytest.approx(5 / 6)
    # The official evaluation does not sort: at a threshold only A passes, it counts everything listed up to A,
    # so a false positive listed first already costs precision: (1/2, 1/2), (2/3, 1) -> AP 2/3
    assert evaluate_wider(_preds([fp, a, b]), gt).ap["hard"] == pytest.approx(2 / 3)


def test_scores_are_normalised_over_every_prediction_read() -> None:
    gt = _small_gt([[[0, 0, 40, 40], [100, 0, 40, 40]]])
    rows = [[0, 0, 40, 40, 0.8995], [300, 300, 40, 40, 0.8994], [100, 0, 40, 40, 0.8993]]
    # alone, the three scores span the whole 0..1 range after normalisation: three operating points
    assert evaluate_wider(_preds(rows), gt).ap["hard"] == pytest.approx(5 / 6)
    # an image outside the ground truth with scores 0 and 1 leaves them as they are, inside one threshold step
    # (0.899, 0.9]: they pass together, (P, R) = (2/3, 1) only
    predictions = _preds(rows)
    predictions["9--Elsewhere"] = {"other": np.array([[0, 0, 5, 5, 0.0], [0, 0, 5, 5, 1.0]])}
    result = evaluate_wider(predictions, gt)
    assert result.ap["hard"] == pytest.approx(2 / 3)
    assert result.extra == 1


def test_equal_scores_pass_every_threshold() -> None:
    gt = _small_gt([[[0, 0, 40, 40], [100, 0, 40, 40]]])
    result = evaluate_wider(_preds([[0, 0, 40, 40, 1.0], [300, 300, 40, 40, 1.0]]), gt)
    assert result.ap["hard"] == pytest.approx(0.5 * 0.5)  # the one point (P, R) = (1/2, 1/2)
    assert np.all(result.curves["hard"].precision == 0.5)


def test_missing_prediction_files_count_as_no_detections() -> None:
    gt = _small_gt([[[0, 0, 40, 40]], [[0, 0, 40, 40]]])
    predictions = {"0--Test": {"img0": np.array([[0, 0, 40, 40, 0.9], [50, 50, 10, 10, 0.1]])}}
    result = evaluate_wider(predictions, gt)
    assert result.missing == ("0--Test/img1",)
    assert result.curves["hard"].recall.max() == 0.5
    assert result.to_json()["missing_images"] == 1
    with pytest.raises(WiderPredictionError, match="cover none of the 2 ground-truth images"):
        evaluate_wider({"0--Other": {"img0": np.zeros((0, 5))}}, gt)


def test_precision_is_nan_where_nothing_passes_and_json_says_null() -> None:
    gt = _small_gt([[[0, 0, 40, 40]]])
    result = evaluate_wider(_preds([[0, 0, 40, 40, 0.3], [300, 0, 40, 40, 0.9]]), gt)
    assert not np.isnan(result.curves["easy"].precision[0])  # 0.9 normalises to 1, passing every threshold
    empty = evaluate_wider(_preds([]), gt)
    assert np.isnan(empty.curves["easy"].precision).all() and empty.ap["easy"] == 0.0
    assert json.loads(json.dumps(empty.to_json()))["settings"]["easy"]["precision"][0] is None


# ----------------------------------------------------------------------------------------------- the official code


def synthetic_predictions(ground_truth: WiderGroundTruth, seed: int) -> dict[str, dict[str, list[Face]]]:
    """Deterministic detections over the real ground truth: jittered faces with random scores, misses, duplicates,
    false positives, images without detections, tied scores, files in score order or not, and one event outside
    the ground truth (its scores set the normalisation's minimum)."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[Face]]] = {}
    for event, names, boxes in zip(ground_truth.events, ground_truth.images, ground_truth.boxes):
        per_image: dict[str, list[Face]] = {}
        for name, image_boxes in zip(names, boxes):
            faces: list[Face] = []
            if rng.random() >= 0.03:  # else: a file with no detection
                for x, y, w, h in image_boxes:
                    if rng.random() < 0.25:
                        continue  # missed
                    size = max(w, h, 1.0)
                    jitter = rng.normal(0.0, 0.12 * size, 2)
                    scale = np.exp(rng.normal(0.0, 0.12, 2))
                    score = float(rng.uniform(0.02, 1.0)) if size > 12 else float(rng.uniform(0.02, 0.6))
                    faces.append(_face(x + jitter[0], y + jitter[1], w * scale[0], h * scale[1], score))
                    if rng.random() < 0.05:  # a duplicate, scored lower
                        faces.append(_face(x + 1.5, y - 1.0, w, h, score * float(rng.uniform(0.5, 1.0))))
                extent = np.maximum(image_boxes[:, :2].max(axis=0) + 100.0, 200.0) if len(image_boxes) else (900, 900)
                for _ in range(rng.poisson(2.0)):
                    side = float(rng.uniform(4.0, 120.0))
                    x, y = rng.uniform(0.0, extent[0]), rng.uniform(0.0, extent[1])
                    faces.append(_face(x, y, side, side * float(rng.uniform(0.8, 1.4)), float(rng.uniform(0.02, 0.7))))
            if rng.random() < 0.3:  # coarse scores: ties
                faces = [Face(f.box, round(f.score, 2), f.landmarks) for f in faces]
            if rng.random() < 0.8:
                faces.sort(key=lambda f: -f.score)
            else:
                faces = [faces[i] for i in rng.permutation(len(faces))]
            per_image[name] = faces
        out[event] = per_image
    out["99--Outside"] = {"99_outside_1": [_face(10.0, 10.0, 30.0, 30.0, 0.005), _face(50.0, 10.0, 30.0, 30.0, 0.4)]}
    return out


def write_synthetic_predictions(folder: Path, ground_truth: WiderGroundTruth, seed: int) -> int:
    """Writes :func:`synthetic_predictions` as official prediction files; returns how many files."""
    written = 0
    for event, per_image in synthetic_predictions(ground_truth, seed).items():
        for name, faces in per_image.items():
            write_wider_prediction(folder, event, name, faces)
            written += 1
    return written


OFFICIAL_AP = {"easy": 0.21837585668534687, "medium": 0.31160790825352114, "hard": 0.4362868031260641}
"""What the official widerface_evaluate/evaluation.py (Pytorch_Retinaface b984b4b7, its box_overlaps.pyx compiled
with Cython 3.3, numpy 1.23.5, scipy 1.15.3) printed for the folder ``write_synthetic_predictions(folder, official
ground truth, seed=2024)`` wrote (3227 files; it took 52 s). Ours gives the same digits."""


def test_same_ap_as_the_official_evaluation(wider_gt: WiderGroundTruth, tmp_path: Path) -> None:
    assert write_synthetic_predictions(tmp_path, wider_gt, seed=2024) == wider_gt.num_images + 1
    result = evaluate_wider(read_wider_predictions(tmp_path), wider_gt)
    assert result.missing == () and result.extra == 1
    for setting in SETTINGS:
        assert result.ap[setting] == pytest.approx(OFFICIAL_AP[setting], abs=1e-6), setting


# ----------------------------------------------------------------------------------------------- prediction files


def test_prediction_files_round_trip_to_the_printed_precision(tmp_path: Path) -> None:
    faces = [
        Face((10.123456, -3.3333, 50.98765, 70.5), 0.98765432, _NO_POINTS),
        Face((100.0, 200.0, 100.0004, 260.25), 0.0200004, _NO_POINTS),
    ]
    text = wider_prediction_text("0_Parade_marchingband_1_465.jpg", faces)
    assert text == (
        "0_Parade_marchingband_1_465\n2\n10.123 -3.333 40.864 73.833 0.987654\n100.000 200.000 0.000 60.250 0.020000\n"
    )
    path = write_wider_prediction(tmp_path, "0--Parade", "0_Parade_marchingband_1_465", faces)
    assert path == tmp_path / "0--Parade" / "0_Parade_marchingband_1_465.txt"
    assert path.read_text() == text
    name, boxes = read_wider_prediction(path)
    assert name == "0_Parade_marchingband_1_465"
    expected = [
        [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3), round(face.score, 6)]
        for face in faces
        for x1, y1, x2, y2 in [face.box]
    ]
    np.testing.assert_array_equal(boxes, expected)
    write_wider_prediction(tmp_path, "0--Parade", "0_Parade_marchingband_1_20", [])
    assert read_wider_predictions(tmp_path)["0--Parade"]["0_Parade_marchingband_1_20"].shape == (0, 5)
    assert not list(tmp_path.rglob(".*"))  # no partial files left behind


def test_reads_the_original_test_widerface_format(tmp_path: Path) -> None:
    # Pytorch_Retinaface's test_widerface.py: name without .jpg, integer boxes, a space before the newline
    event = tmp_path / "0--Parade"
    event.mkdir()
    (event / "0_Parade_Parade_0_904.txt").write_text("0_Parade_Parade_0_904\n2\n10 20 30 40 0.99 \n5 6 7 8 0.5 \n")
    (event / "0_Parade_Parade_0_905.txt").write_text("images/0--Parade/0_Parade_Parade_0_905.jpg\n0\n")
    predictions = read_wider_predictions(tmp_path)
    np.testing.assert_array_equal(predictions["0--Parade"]["0_Parade_Parade_0_904"][1], [5, 6, 7, 8, 0.5])
    assert predictions["0--Parade"]["0_Parade_Parade_0_905"].shape == (0, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("img\n2\n1 2 3 4 0.5\n", "line 2 says 2 faces but 1 follow"),
        ("img\ntwo\n", "line 2 should be the number of faces"),
        ("img\n1\n1 2 3 0.5\n", "expected 'x y w h score'"),
        ("img\n1\n1 2 3 4 nan\n", "non-finite"),
        ("", "expected an image name line and a count line"),
    ],
)
def test_malformed_prediction_files_raise_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "0--Test" / "img.txt"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(WiderPredictionError, match=message) as info:
        read_wider_predictions(tmp_path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------- end to end


def _cells(items: Sequence[object]) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    return array


def _write_ground_truth(folder: Path, images: dict[str, dict[str, list[tuple[int, int, int, int]]]]) -> None:
    """The official .mat structure: cell columns per event of cell columns per image; keep-lists 1-based."""
    folder.mkdir(parents=True)
    events = list(images)
    savemat(
        folder / "wider_face_val.mat",
        {
            "event_list": _cells([np.array([event]) for event in events]),
            "file_list": _cells([_cells([np.array([name]) for name in images[event]]) for event in events]),
            "face_bbx_list": _cells(
                [_cells([np.array(b, dtype=np.int32).reshape(-1, 4) for b in images[e].values()]) for e in events]
            ),
        },
    )
    for setting in SETTINGS:  # easy: faces at least 100 px wide; medium and hard: every face
        keep = [
            _cells(
                [
                    np.array([i + 1 for i, b in enumerate(boxes) if setting != "easy" or b[2] >= 100], np.uint8)[
                        :, None
                    ]
                    for boxes in images[event].values()
                ]
            )
            for event in events
        ]
        savemat(folder / f"wider_{setting}_val.mat", {"gt_list": _cells(keep), "event_list": _cells(events)})


# hand-made ground truth for the shared photos (boxes of another detector, ultralight-rfb, rounded)
_TINY_WIDER = {
    "0--Group": {
        "six_people": [
            (746, 340, 102, 138),
            (463, 261, 109, 151),
            (59, 266, 108, 129),
            (270, 144, 97, 125),
            (1128, 268, 97, 129),
            (899, 49, 109, 154),
        ]
    },
    "1--Portrait": {"grace_hopper": [(174, 116, 177, 228)], "broken": [(10, 10, 50, 50)]},
}


@pytest.fixture
def tiny_wider(tmp_path: Path) -> Path:
    if not SIX_PEOPLE.is_file() or not (WEIGHTS / "mobilenet0.25_Final.pth").is_file():
        pytest.skip(f"shared photos and weights not found at {SHARED}")
    root = tmp_path / "WIDER"
    for event, path in (("0--Group", SIX_PEOPLE), ("1--Portrait", GRACE_HOPPER)):
        (root / "WIDER_val" / "images" / event).mkdir(parents=True)
        shutil.copy(path, root / "WIDER_val" / "images" / event / path.name)
    (root / "WIDER_val" / "images" / "1--Portrait" / "broken.jpg").write_bytes(SIX_PEOPLE.read_bytes()[:3000])
    _write_ground_truth(root / "ground_truth", _TINY_WIDER)
    return root


def test_eval_widerface_end_to_end(tiny_wider: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tiny_wider / "WIDER_val" / "images"
    out = tmp_path / "report"
    argv = ["eval", "widerface", "--images", str(images), "--model", "retinaface-mnet025-edge"]
    argv += ["--backend", "torch-baseline", "--out", str(out), "-q"]
    assert main(argv) == 1  # the broken image: reported, the others scored
    captured = capsys.readouterr()
    assert "1--Portrait/broken.jpg: corrupt or truncated" in captured.err
    assert "1 of 3 ground-truth images have no prediction file (first: 1--Portrait/broken)" in captured.err
    assert "AP reported" in captured.out and "0.8730" in captured.out  # the authors' Easy AP, long side 640
    report = json.loads((out / "widerface.json").read_text())
    assert report["resize"] == "long side 640"
    result = report["result"]
    assert result["missing"] == ["1--Portrait/broken"]
    assert result["settings"]["easy"]["faces"] == 5 and result["settings"]["hard"]["faces"] == 8
    assert result["ap"]["easy"] == pytest.approx(1.0)  # the five faces >= 100 px, found before any false positive
    assert 0.8 < result["ap"]["hard"] <= 7 / 8  # the broken image's face is never found
    assert (out / "widerface_pr.png").stat().st_size > 10_000
    cache = Path(report["predictions"])
    assert cache.is_relative_to(tmp_path.parent) and "retinaface-mnet025-edge" in cache.parts
    first = (cache / "0--Group" / "six_people.txt").read_text()

    # resumable: a second run reuses every file; a deleted one is predicted again, identically
    (cache / "0--Group" / "six_people.txt").unlink()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "already predicted: 1 of 3 images" in err
    assert (cache / "0--Group" / "six_people.txt").read_text() == first
    assert json.loads((out / "widerface.json").read_text())["result"]["ap"] == result["ap"]

    # scoring the folder alone, ground truth given explicitly
    json_path = tmp_path / "alone.json"
    argv = ["eval", "widerface", "--predictions", str(cache), "--gt", str(tiny_wider / "ground_truth")]
    assert main([*argv, "--out", str(tmp_path / "alone"), "--json", str(json_path)]) == 0
    assert json.loads(json_path.read_text())["result"]["ap"] == result["ap"]


def test_eval_widerface_needs_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "preds" / "0--Test").mkdir(parents=True)
    assert main(["eval", "widerface", "--predictions", str(tmp_path / "preds")]) == 2
    assert "pass --gt with the folder holding wider_face_val.mat" in capsys.readouterr().err
    assert main(["eval", "widerface", "--predictions", str(tmp_path), "--gt", str(tmp_path)]) == 2
    assert "wider_face_val.mat not found" in capsys.readouterr().err


def test_predict_wider_goes_on_past_a_corrupt_image(tiny_wider: Path, detector_factory) -> None:
    detector = detector_factory("retinaface-mnet025-edge", backend="torch-baseline")
    out = tiny_wider / "predictions"
    run = predict_wider(tiny_wider / "WIDER_val", out, detector, progress=False)
    assert (run.written, run.cached) == (2, 0)
    assert list(run.failed) == ["1--Portrait/broken.jpg"]
    assert "corrupt or truncated" in run.failed["1--Portrait/broken.jpg"]
    faces = read_wider_predictions(out)["1--Portrait"]["grace_hopper"]
    assert len(faces) >= 1 and faces[0, 4] > 0.9  # best first
    assert predict_wider(tiny_wider / "WIDER_val", out, detector, progress=False).cached == 2
