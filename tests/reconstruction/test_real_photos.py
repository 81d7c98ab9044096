"""Both reconstruction models on the shared photos: one mesh per face, landmarks where the detector put them,
frontal poses, textures that match the photo, and exports that reload with the same counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trimesh

from retinaserve import load_image
from retinaserve.reconstruction import FaceMesh, Reconstructor

from ..conftest import ASTRONAUT, GRACE_HOPPER, SIX_PEOPLE

MODELS = ("facemesh-468", "3ddfa-v2-mb05")
PHOTOS = {"astronaut": ASTRONAUT, "grace_hopper": GRACE_HOPPER, "six_people": SIX_PEOPLE}
SIZES = {"facemesh-468": (468, 898), "3ddfa-v2-mb05": (38_365, 76_073)}

_RUNS: dict[tuple[str, str], tuple[np.ndarray, list[FaceMesh], int]] = {}


def _run(factory: Callable[[str], Reconstructor], model: str, photo: str) -> tuple[np.ndarray, list[FaceMesh], int]:
    """(image, meshes, faces the detector found) for one model and photo, computed once per session."""
    if (model, photo) not in _RUNS:
        reconstructor = factory(model)
        image = load_image(PHOTOS[photo])
        detected = reconstructor.detector.run([image])[0].faces
        result = reconstructor.run([image])[0]
        assert not result.skipped
        _RUNS[model, photo] = (image, result.meshes, len(detected))
    return _RUNS[model, photo]


def _mesh_five_points(mesh: FaceMesh) -> np.ndarray:
    """The detector's five points read off the mesh's 68: eye centres, nose tip, mouth corners (image x, y)."""
    lm = mesh.landmarks_68[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


@pytest.mark.parametrize("photo", list(PHOTOS))
@pytest.mark.parametrize("model", MODELS)
def test_one_mesh_per_face_with_landmarks_where_the_detector_put_them(
    reconstructor_factory: Callable[[str], Reconstructor], model: str, photo: str
) -> None:
    _, meshes, detected = _run(reconstructor_factory, model, photo)
    assert len(meshes) == detected == (6 if photo == "six_people" else 1)
    vertices, triangles = SIZES[model]
    errors = []
    for mesh in meshes:
        assert mesh.vertices.shape == (vertices, 3) and mesh.triangles.shape == (triangles, 3)
        assert mesh.landmarks_68.shape == (68, 3)
        detector_points = np.asarray(mesh.face.landmarks.points())
        inter_ocular = np.linalg.norm(detector_points[1] - detector_points[0])
        errors.append(np.linalg.norm(_mesh_five_points(mesh) - detector_points, axis=1) / inter_ocular)
        # the nose tip is nearer the camera than the face's outline (larger z is nearer)
        assert mesh.landmarks_68[30, 2] > mesh.landmarks_68[[0, 16], 2].max()
    table = np.round(errors, 3)
    if photo != "six_people":  # frontal portraits: every point within 10 % of the inter-ocular distance
        assert table.max() < 0.10, f"{model} on {photo}: five-point errors {table} x IOD"
    else:
        # Turned, tilted faces of 31-53 px IOD (10 % is 3-5 px): most points within 10 %, none beyond 25 %.
        # Measured: both models reach 0.15-0.20 IOD on some points of the turned faces, mostly the same points, where
        # the two often agree with each other far better (0.005 where both are 0.17 from the detector; at most 0.14,
        # test_both_models_agree...): much of the difference is the detector's points, not the meshes.
        assert (table < 0.10).mean() >= 0.7 and table.max() < 0.25, f"{model}: {table} x IOD"
        assert table.mean() < 0.08


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("model", MODELS)
def test_frontal_portraits_have_a_frontal_pose(
    reconstructor_factory: Callable[[str], Reconstructor], model: str, photo: str
) -> None:
    _, meshes, _ = _run(reconstructor_factory, model, photo)
    pose = meshes[0].pose
    assert max(abs(pose.yaw), abs(pose.pitch), abs(pose.roll)) < 15, f"{model} on {photo}: {pose}"


@pytest.mark.parametrize("model", MODELS)
def test_both_models_agree_on_the_pose_of_turned_faces(
    reconstructor_factory: Callable[[str], Reconstructor], model: str
) -> None:
    other = MODELS[1 - MODELS.index(model)]
    _, meshes, _ = _run(reconstructor_factory, model, "six_people")
    _, reference, _ = _run(reconstructor_factory, other, "six_people")
    for mesh, ref in zip(meshes, reference):
        assert mesh.face == ref.face  # the same detections, in the same order
        assert abs(mesh.pose.yaw - ref.pose.yaw) < 15 and abs(mesh.pose.roll - ref.pose.roll) < 10
        assert abs(mesh.pose.pitch - ref.pose.pitch) < 10
        inter_ocular = np.linalg.norm(np.subtract(mesh.face.landmarks.right_eye, mesh.face.landmarks.left_eye))
        agreement = np.linalg.norm(_mesh_five_points(mesh) - _mesh_five_points(ref), axis=1) / inter_ocular
        assert np.median(agreement) < 0.10 and agreement.max() < 0.15, np.round(agreement, 3)


@pytest.mark.parametrize("photo", list(PHOTOS))
@pytest.mark.parametrize("model", MODELS)
def test_texture_around_the_nose_has_the_photos_colour(
    reconstructor_factory: Callable[[str], Reconstructor], model: str, photo: str
) -> None:
    image, meshes, _ = _run(reconstructor_factory, model, photo)
    for mesh in meshes:
        nose = mesh.topology.landmarks_68[30, 0]
        x, y = np.round(mesh.vertices[nose, :2]).astype(int)
        photo_colour = image[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(0)
        size = mesh.texture.shape[0]
        u, v = mesh.uv[nose]
        col, row = int(u * (size - 1)), int((1 - v) * (size - 1))
        assert mesh.texture_mask[row, col], "the nose must be seen in the photo"
        texel_colour = mesh.texture[row - 2 : row + 3, col - 2 : col + 3].reshape(-1, 3).mean(0)
        assert np.abs(texel_colour - photo_colour).max() < 30, (texel_colour, photo_colour)
        assert 0.3 < mesh.texture_mask.mean() < 0.95  # part seen, part filled


@pytest.mark.parametrize("model", MODELS)
def test_glb_and_obj_reload_with_the_same_mesh_and_texture(
    reconstructor_factory: Callable[[str], Reconstructor], model: str, tmp_path: Path
) -> None:
    _, meshes, _ = _run(reconstructor_factory, model, "astronaut")
    mesh = meshes[0]
    (glb,) = mesh.save(tmp_path / "face.glb")
    written = mesh.save(tmp_path / "face.obj")
    assert {p.suffix for p in written} == {".obj", ".mtl", ".png"}
    for path in (glb, tmp_path / "face.obj"):
        loaded = trimesh.load(path, process=False, force="mesh")
        assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.triangles)
        image = loaded.visual.material.baseColorTexture if path.suffix == ".glb" else loaded.visual.material.image
        assert image is not None and image.size == mesh.texture.shape[:2]
    with pytest.raises(ValueError, match=r"\.glb or \.obj"):
        mesh.save(tmp_path / "face.stl")


@pytest.mark.parametrize("model", MODELS)
def test_batched_faces_equal_one_by_one(reconstructor_factory: Callable[[str], Reconstructor], model: str) -> None:
    reconstructor = reconstructor_factory(model)
    _, batched, _ = _run(reconstructor_factory, model, "six_people")
    size = reconstructor.batch_size
    try:
        reconstructor.batch_size = 1
        single = reconstructor.run([SIX_PEOPLE], texture=False)[0].meshes
    finally:
        reconstructor.batch_size = size
    for a, b in zip(batched, single):
        assert np.abs(a.vertices - b.vertices).max() < 1e-2
