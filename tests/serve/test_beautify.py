"""Beautify on a real photo: skin inside each face changes, eyes and mouth and everything outside the faces do not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retinaserve.detection import Detector, Face
from retinaserve.images import load_image
from retinaserve.serve.beautify import beautify, face_region

from ..conftest import SIX_PEOPLE, WEIGHTS
from .conftest import MODEL, make_app


@pytest.fixture(scope="module")
def photo_and_faces(shared: object) -> tuple[np.ndarray, list[Face]]:
    image = load_image(SIX_PEOPLE)
    faces = Detector(MODEL, weights=WEIGHTS / "slim_Final.pth").run([image])[0].faces
    assert len(faces) == 6
    return image, faces


def patch_change(diff: np.ndarray, point: tuple[float, float], radius: float) -> float:
    """Mean absolute change (summed over RGB) in a square of ``radius`` around ``point``."""
    x, y, r = round(point[0]), round(point[1]), max(1, round(radius))
    return float(diff[y - r : y + r + 1, x - r : x + r + 1].mean())


def regions(face: Face) -> tuple[list[tuple[float, float]], list[tuple[float, float]], float]:
    lm = face.landmarks
    eye_distance = float(np.hypot(lm.right_eye[0] - lm.left_eye[0], lm.right_eye[1] - lm.left_eye[1]))
    cheeks = [
        ((lm.left_eye[0] + lm.mouth_left[0]) / 2, (lm.left_eye[1] + lm.mouth_left[1]) / 2),
        ((lm.right_eye[0] + lm.mouth_right[0]) / 2, (lm.right_eye[1] + lm.mouth_right[1]) / 2),
    ]
    mouth = ((lm.mouth_left[0] + lm.mouth_right[0]) / 2, (lm.mouth_left[1] + lm.mouth_right[1]) / 2)
    return cheeks, [lm.left_eye, lm.right_eye, mouth], eye_distance


def check_effect(original: np.ndarray, result: np.ndarray, faces: list[Face]) -> None:
    diff = np.abs(result.astype(np.int16) - original.astype(np.int16)).sum(axis=2)
    outside = np.ones(diff.shape, dtype=bool)
    for face in faces:
        x0, y0, x1, y1 = face_region(face, *original.shape[:2]).roi
        outside[y0:y1, x0:x1] = False
        cheeks, features, eye_distance = regions(face)
        cheek_change = [patch_change(diff, c, 0.12 * eye_distance) for c in cheeks]
        feature_change = [patch_change(diff, f, 0.1 * eye_distance) for f in features]
        assert max(cheek_change) > 5.0 and min(cheek_change) > 2.0, cheek_change  # skin is smoothed
        assert max(feature_change) < 0.5, feature_change  # eyes and mouth stay sharp
    assert outside.sum() > 0.5 * outside.size
    assert not diff[outside].any()  # nothing outside the faces is touched


def test_beautify_smooths_skin_only(photo_and_faces: tuple[np.ndarray, list[Face]]) -> None:
    image, faces = photo_and_faces
    result = beautify(image, faces, strength=0.7)
    assert result.shape == image.shape and result.dtype == np.uint8
    check_effect(image, result, faces)
    weak = np.abs(beautify(image, faces, strength=0.3).astype(int) - image).sum()
    strong = np.abs(beautify(image, faces, strength=0.9).astype(int) - image).sum()
    assert 0 < weak < strong
    assert np.array_equal(beautify(image, faces, strength=0.0), image)
    assert np.array_equal(beautify(image, [], strength=1.0), image)
    with pytest.raises(ValueError, match="strength"):
        beautify(image, faces, strength=1.5)


def test_beautify_endpoint_end_to_end(photo_and_faces: tuple[np.ndarray, list[Face]]) -> None:
    image, faces = photo_and_faces
    with TestClient(make_app()) as client:
        response = client.post("/v1/beautify?strength=0.7&format=png", content=SIX_PEOPLE.read_bytes())
    assert response.status_code == 200 and response.headers["X-Faces"] == "6"
    result = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    check_effect(image, result, faces)
