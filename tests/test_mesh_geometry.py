"""Mesh geometry after the network: the Face Mesh topology, UV rasterising, visibility, baking, previews, exports.

Everything runs on MediaPipe's real canonical face model (../shared/weights/3d), placed into a synthetic photo whose
colour is a known function of the pixel position, so that every texel's colour can be checked exactly.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from retinaserve.reconstruction.export import export_glb, export_obj, glb_bytes, obj_zip_bytes, to_trimesh
from retinaserve.reconstruction.facemesh_topology import (
    FaceMeshTopologyError,
    load_facemesh_topology,
    parse_canonical_mesh,
)
from retinaserve.reconstruction.render import draw_mesh_overlay, preview_sheet, render_shaded, signed_areas
from retinaserve.reconstruction.texture import UVRaster, bake_texture, build_uv_raster, visible_triangles
from retinaserve.reconstruction.topology import MeshTopology

from .conftest import WEIGHTS_3D

PBTXT = WEIGHTS_3D / "geometry_pipeline_metadata_landmarks.pbtxt"
IMAGE_H, IMAGE_W = 480, 640
ANY_68 = np.arange(0, 68 * 6, 6)
"""Any 68 distinct vertex ids, only to construct the topology (the real 468 -> 68 table comes from the caller)."""

pytestmark = pytest.mark.skipif(not PBTXT.is_file(), reason=f"MediaPipe canonical face model not found at {PBTXT}")


@pytest.fixture(scope="module")
def facemesh() -> tuple[MeshTopology, np.ndarray]:
    return load_facemesh_topology(PBTXT, ANY_68)


@pytest.fixture(scope="module")
def raster(facemesh: tuple[MeshTopology, np.ndarray]) -> UVRaster:
    return build_uv_raster(facemesh[0], 256)


def place(canonical: np.ndarray, yaw: float = 0.0, height_px: float = 200.0) -> np.ndarray:
    """The canonical model (cm, y up) turned ``yaw`` degrees about its vertical axis, in image px (y down)."""
    angle = math.radians(yaw)
    rotation = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    turned = canonical.astype(np.float64) @ rotation.T
    scale = height_px / np.ptp(canonical[:, 1])
    return np.stack([turned[:, 0] * scale + IMAGE_W / 2, -turned[:, 1] * scale + IMAGE_H / 2, turned[:, 2] * scale], 1)


def colour_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The synthetic photo's colour at image position (x, y): linear, so bilinear sampling reproduces it exactly."""
    return np.stack([40 + 0.3 * x, 20 + 0.45 * y, 250 - 0.2 * x - 0.1 * y], axis=-1)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    y, x = np.mgrid[0:IMAGE_H, 0:IMAGE_W].astype(np.float64)
    return np.clip(np.rint(colour_of(x, y)), 0, 255).astype(np.uint8)


def texel_positions(vertices: np.ndarray, topology: MeshTopology, raster: UVRaster) -> np.ndarray:
    """(S, S, 2) image position of every layout texel, from its triangle id and barycentric weights."""
    corners = vertices[:, :2][topology.triangles[np.maximum(raster.triangle_id, 0)]]  # (S, S, 3, 2)
    return np.einsum("ijk,ijkd->ijd", raster.barycentric.astype(np.float64), corners)


def test_canonical_model_counts_orientation_and_mirror(facemesh: tuple[MeshTopology, np.ndarray]) -> None:
    topology, canonical = facemesh
    assert topology.num_vertices == 468 and topology.num_triangles == 898 and canonical.shape == (468, 3)
    assert topology.uv.min() >= 0 and topology.uv.max() <= 1
    # The canonical frame: y up (forehead 10 above chin 152), +z toward the viewer (nose tip 4 the nearest point).
    assert canonical[10, 1] > canonical[152, 1] and int(np.argmax(canonical[:, 2])) == 4
    # v up after 1 - v: the forehead is high in the texture, the chin low.
    assert topology.uv[10, 1] > 0.85 and topology.uv[152, 1] < 0.1
    # Frontal in the image frame (x, -y): front faces have negative signed area (all but a few silhouette slivers).
    area = signed_areas(canonical[:, :2] * [1, -1], topology.triangles)
    assert np.abs(area[area < 0]).sum() / np.abs(area).sum() > 0.999
    # The mirror is an involution pairing x with -x; vertices on the symmetry plane are their own twins.
    mirror = topology.mirror
    assert np.array_equal(mirror[mirror], np.arange(468))
    np.testing.assert_allclose(canonical[mirror], canonical * [-1, 1, 1], atol=1e-5)
    assert np.array_equal(np.flatnonzero(mirror == np.arange(468)), np.flatnonzero(canonical[:, 0] == 0))
    assert topology.landmarks_68.shape == (68, 2)


def test_landmark_table_is_required_and_counts_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="landmarks_68 is required"):
        load_facemesh_topology(PBTXT)
    truncated = tmp_path / "short.pbtxt"
    truncated.write_text("\n".join(PBTXT.read_text().splitlines()[:-30]))
    with pytest.raises(FaceMeshTopologyError, match="898 x 3"):
        parse_canonical_mesh(truncated)


def test_uv_raster_covers_the_layout_without_holes(facemesh: tuple[MeshTopology, np.ndarray], raster: UVRaster) -> None:
    topology = facemesh[0]
    size = raster.size
    uv_area = np.abs(signed_areas(topology.uv.astype(np.float64), topology.triangles)).sum()
    assert raster.mask.mean() == pytest.approx(uv_area, rel=0.01)
    # No holes inside the layout: every texel outside it is connected to the border.
    outside = (~raster.mask).astype(np.uint8)
    cv2.floodFill(outside, np.zeros((size + 2, size + 2), np.uint8), (0, 0), 2)
    assert not np.any(outside == 1)
    weights = raster.barycentric[raster.mask].astype(np.float64)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert weights.min() > -1e-4
    assert np.all(raster.barycentric[~raster.mask] == 0) and np.all(raster.triangle_id[~raster.mask] == -1)
    # The weights rebuild each texel centre's (u, v) from its triangle's UVs.
    rows, cols = np.nonzero(raster.mask)
    corners = topology.uv[topology.triangles[raster.triangle_id[rows, cols]]].astype(np.float64)
    uv = np.einsum("nk,nkd->nd", weights, corners)
    np.testing.assert_allclose(uv[:, 0], (cols + 0.5) / size, atol=1e-5)
    np.testing.assert_allclose(uv[:, 1], 1 - (rows + 0.5) / size, atol=1e-5)


def test_frontal_bake_samples_the_photo_at_each_texels_projection(
    facemesh: tuple[MeshTopology, np.ndarray], raster: UVRaster, photo: np.ndarray
) -> None:
    topology, canonical = facemesh
    vertices = place(canonical)
    texture, seen = bake_texture(photo, vertices, topology, raster, fill=False)
    assert texture.shape == (raster.size, raster.size, 3) and texture.dtype == np.uint8
    assert not np.any(seen & ~raster.mask)
    # frontal: the steep sides of the face (temples, jaw) are seen at a grazing angle and left to the fill
    assert seen.sum() > 0.8 * raster.mask.sum()
    position = texel_positions(vertices, topology, raster)[seen]
    expected = colour_of(position[:, 0], position[:, 1])
    error = np.abs(texture[seen].astype(np.float64) - expected)
    assert error.max() <= 1.5  # rounding of the photo (0.5) and cv2.remap's 1/32 px fixed-point weights
    assert np.all(texture[~seen] == 0)
    # Baking a larger texture of the same face gives the same colours, at four times the texels.
    texture_512, seen_512 = bake_texture(photo, vertices, topology, build_uv_raster(topology, 512), fill=False)
    assert seen_512.sum() == pytest.approx(4 * seen.sum(), rel=0.01)
    assert (
        np.abs(cv2.resize(texture_512, (256, 256), interpolation=cv2.INTER_AREA).astype(int) - texture)[
            cv2.erode(seen.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        ].max()
        <= 2
    )


def test_visibility_culls_back_faces_and_occluded_triangles(facemesh: tuple[MeshTopology, np.ndarray]) -> None:
    topology, canonical = facemesh
    triangles = topology.triangles
    side = canonical[triangles].mean(axis=1)[:, 0]  # canonical x of each triangle: > 0 turns away below
    frontal = visible_triangles(place(canonical), triangles, (IMAGE_H, IMAGE_W))
    assert frontal.mean() > 0.8
    assert visible_triangles(place(canonical), triangles, (IMAGE_H, IMAGE_W), min_facing=0.0).mean() > 0.98
    for yaw in (45.0, 60.0):
        vertices = place(canonical, yaw)
        visible = visible_triangles(vertices, triangles, (IMAGE_H, IMAGE_W))
        front = signed_areas(vertices[:, :2], triangles) < 0
        assert not np.any(visible & ~front)
        assert visible[side < -1.5].mean() > 0.95
        assert visible[side > 1.5].mean() < (0.7 if yaw == 45 else 0.3)
        # Facing the camera but hidden behind the nose: on the far side, close to the midline.
        hidden = front & ~visible
        assert hidden.sum() >= 20 and 0.5 < np.median(side[hidden]) < 4.5
    # A mesh entirely outside the photo has nothing visible.
    outside = place(canonical) + np.array([2000.0, 0.0, 0.0])
    assert not visible_triangles(outside, triangles, (IMAGE_H, IMAGE_W)).any()


def test_turned_face_is_filled_from_the_mirror_side(
    facemesh: tuple[MeshTopology, np.ndarray], raster: UVRaster, photo: np.ndarray
) -> None:
    topology, canonical = facemesh
    vertices = place(canonical, 60.0)
    raw, seen = bake_texture(photo, vertices, topology, raster, fill=False)
    filled, seen_filled = bake_texture(photo, vertices, topology, raster, fill=True)
    assert np.array_equal(seen, seen_filled)
    assert seen.sum() < 0.75 * raster.mask.sum()
    # Seen texels keep their sampled colour.
    assert np.array_equal(filled[seen], raw[seen])
    # Unseen texels whose mirror texel was seen carry (a bilinear sample of) that texel's colour.
    unseen = raster.mask & ~seen
    twin = raster.mirror_texel[unseen]
    twin_seen = cv2.remap(seen.astype(np.float32), twin[None, :, 0], twin[None, :, 1], cv2.INTER_LINEAR)[0] > 0.999
    assert twin_seen.mean() > 0.8
    twin_colour = cv2.remap(raw, twin[None, :, 0], twin[None, :, 1], cv2.INTER_LINEAR)[0]
    difference = np.abs(filled[unseen][twin_seen].astype(int) - twin_colour[twin_seen]).max(axis=1)
    assert np.percentile(difference, 99) <= 1
    # No black holes inside the layout, and a border of a few texels outside it continues the colours.
    assert filled[raster.mask].sum(axis=1).min() > 100
    ring = cv2.dilate(raster.mask.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool) & ~raster.mask
    assert filled[ring].sum(axis=1).min() > 100
    far = ~cv2.dilate(raster.mask.view(np.uint8), np.ones((41, 41), np.uint8)).view(bool)
    assert np.all(filled[far] == 0)


def test_shaded_renders_show_the_face_in_the_middle_and_a_profile(facemesh: tuple[MeshTopology, np.ndarray]) -> None:
    topology, canonical = facemesh
    vertices = place(canonical)
    front = render_shaded(vertices, topology.triangles, (256, 256), view="front")
    side = render_shaded(vertices, topology.triangles, (256, 256), view="side")
    assert front.shape == side.shape == (256, 256, 3) and front.dtype == np.uint8
    background = front[0, 0]
    masks = [np.any(image != background, axis=2) for image in (front, side)]
    for mask in masks:
        assert 0.2 < mask.mean() < 0.8
        rows, cols = np.nonzero(mask)
        assert abs(rows.mean() - 127.5) < 20 and abs(cols.mean() - 127.5) < 30
    # The frontal silhouette is left-right symmetric; the profile is not, and differs from it.
    assert (masks[0] == masks[0][:, ::-1]).mean() > 0.97
    assert (masks[1] == masks[1][:, ::-1]).mean() < 0.9
    assert (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum() < 0.8
    # Lambert shading: the face is not flat gray.
    assert front[masks[0]].std() > 10
    # A face already turned in the photo still gets a profile of the same side.
    turned = render_shaded(place(canonical, 40.0), topology.triangles, (256, 256), view="side")
    turned_mask = np.any(turned != background, axis=2)
    assert (turned_mask & masks[1]).sum() / (turned_mask | masks[1]).sum() > 0.85


def test_overlay_and_preview_sheet(
    facemesh: tuple[MeshTopology, np.ndarray], raster: UVRaster, photo: np.ndarray
) -> None:
    topology, canonical = facemesh
    vertices = place(canonical)
    overlay = draw_mesh_overlay(photo, vertices, topology.triangles)
    assert overlay.shape == photo.shape and overlay.dtype == np.uint8
    changed = np.any(overlay != photo, axis=2)
    x0, y0 = vertices[:, :2].min(axis=0) - 2
    x1, y1 = vertices[:, :2].max(axis=0) + 2
    rows, cols = np.nonzero(changed)
    assert changed.mean() > 0.02
    assert cols.min() >= x0 and cols.max() <= x1 and rows.min() >= y0 and rows.max() <= y1
    texture, _ = bake_texture(photo, vertices, topology, raster)
    sheet = preview_sheet(
        photo, [(vertices, topology.triangles, texture), (place(canonical, 30), topology.triangles, None)]
    )
    one = preview_sheet(photo, [(vertices, topology.triangles, texture)])
    assert sheet.mode == "RGB" and sheet.width == one.width and sheet.height > one.height


@pytest.fixture(scope="module")
def textured_mesh(facemesh: tuple[MeshTopology, np.ndarray], raster: UVRaster, photo: np.ndarray) -> trimesh.Trimesh:
    topology, canonical = facemesh
    vertices = place(canonical)
    texture, _ = bake_texture(photo, vertices, topology, raster)
    return to_trimesh(vertices, topology.triangles, topology.uv, texture)


def test_export_frame_and_winding(facemesh: tuple[MeshTopology, np.ndarray], textured_mesh: trimesh.Trimesh) -> None:
    topology, canonical = facemesh
    vertices = place(canonical)
    np.testing.assert_allclose(textured_mesh.vertices.mean(axis=0), 0, atol=1e-9)
    expected = vertices * [1, -1, 1]
    np.testing.assert_allclose(textured_mesh.vertices, expected - expected.mean(axis=0), atol=1e-9)
    assert np.array_equal(textured_mesh.faces, topology.triangles)
    # glTF frame: a frontal face's normals point toward +z (the viewer), and its forehead is up (+y).
    normals, areas = textured_mesh.face_normals, textured_mesh.area_faces
    assert areas[normals[:, 2] > 0].sum() / areas.sum() > 0.99
    assert textured_mesh.vertices[10, 1] > textured_mesh.vertices[152, 1]


def test_glb_round_trip(tmp_path: Path, textured_mesh: trimesh.Trimesh) -> None:
    data = glb_bytes(textured_mesh)
    assert data[:4] == b"glTF"
    path = export_glb(textured_mesh, tmp_path / "face.glb")
    assert path.read_bytes() == data
    loaded = trimesh.load(path, process=False, force="mesh")
    assert loaded.vertices.shape == (468, 3) and np.array_equal(loaded.faces, textured_mesh.faces)
    np.testing.assert_allclose(loaded.vertices, textured_mesh.vertices, atol=1e-4)
    np.testing.assert_allclose(loaded.visual.uv, textured_mesh.visual.uv, atol=1e-6)
    image = loaded.visual.material.baseColorTexture
    assert image.size == (256, 256)
    assert list(loaded.visual.material.baseColorFactor) == [255, 255, 255, 255]


def test_obj_round_trip(tmp_path: Path, textured_mesh: trimesh.Trimesh) -> None:
    written = export_obj(textured_mesh, tmp_path / "face_1.obj")
    assert sorted(p.name for p in written) == ["face_1.mtl", "face_1.obj", "face_1.png"]
    assert "mtllib face_1.mtl" in (tmp_path / "face_1.obj").read_text()
    assert "map_Kd face_1.png" in (tmp_path / "face_1.mtl").read_text()
    loaded = trimesh.load(tmp_path / "face_1.obj", process=False, force="mesh")
    assert loaded.vertices.shape == (468, 3) and np.array_equal(loaded.faces, textured_mesh.faces)
    np.testing.assert_allclose(loaded.vertices, textured_mesh.vertices, atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv, textured_mesh.visual.uv, atol=1e-6)
    assert loaded.visual.material.image.size == (256, 256)
    archive = zipfile.ZipFile(io.BytesIO(obj_zip_bytes(textured_mesh, "face_1")))
    assert sorted(archive.namelist()) == ["face_1.mtl", "face_1.obj", "face_1.png"]
    assert archive.read("face_1.png") == (tmp_path / "face_1.png").read_bytes()


def test_export_without_texture(tmp_path: Path, facemesh: tuple[MeshTopology, np.ndarray]) -> None:
    topology, canonical = facemesh
    mesh = to_trimesh(place(canonical), topology.triangles, topology.uv, None)
    assert sorted(p.name for p in export_obj(mesh, tmp_path / "plain.obj")) == ["plain.mtl", "plain.obj"]
    loaded = trimesh.load(export_glb(mesh, tmp_path / "plain.glb"), process=False, force="mesh")
    assert loaded.vertices.shape == (468, 3) and loaded.faces.shape == (898, 3)
