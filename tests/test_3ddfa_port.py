"""3DDFA_V2 MobileNet x0.5 port: golden parity, ONNX parity, and the morphable model's geometry and conventions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from retinaserve.models.mobilenetv1 import MobileNetV1, build_3ddfa_mb05
from retinaserve.reconstruction.bfm import (
    CROP_SIZE,
    MorphableModel,
    MorphableModelDataError,
    basis_tensors,
    crop_roi,
    crop_to_image,
    denormalise_params,
    load_cached_morphable_model,
    load_morphable_model,
    mirror_vertex_map,
    normalise_crop,
    params_to_vertices,
    pose_from_params,
    roi_box_from_bbox,
    save_morphable_model,
)

from .conftest import BFM_BASES, HAVE_BFM_BASES, REFERENCE, WEIGHTS_3D

logger = logging.getLogger(__name__)

DATA_3D = WEIGHTS_3D
GOLDEN = REFERENCE / "3ddfa_v2_mb05.npz"
# iBUG-68 ids: eye corners and contours, nose tip, mouth.
LEFT_EYE, RIGHT_EYE, NOSE_TIP, MOUTH = slice(36, 42), slice(42, 48), 30, slice(48, 68)


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"3DDFA_V2 test data not found: {path}")
    return path


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(_need(GOLDEN)) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def network() -> MobileNetV1:
    checkpoint = torch.load(_need(DATA_3D / "mb05_120x120.pth"), map_location="cpu", weights_only=False)
    state = {key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()}
    model = build_3ddfa_mb05()
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def morphable() -> MorphableModel:
    if not HAVE_BFM_BASES:
        pytest.skip(f"the Basel bases are not provisioned in {BFM_BASES}: run `make weights`")
    return load_morphable_model(
        bases_wheel_or_dir=BFM_BASES,
        indices=_need(DATA_3D / "indices.npy"),
        tri=_need(DATA_3D / "tri.pkl"),
        uv_mat=_need(DATA_3D / "BFM_UV.mat"),
        mean_std=_need(DATA_3D / "param_mean_std_62d_120x120.pkl"),
    )


def _inputs(golden: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(normalise_crop(golden["input_bgr_uint8"]))


# ---------------------------------------------------------------------------------------------------------------
# Network


def test_checkpoint_layout_and_size(network: MobileNetV1) -> None:
    assert {"dw5_6.conv_sep.weight", "dw6.bn_sep.running_var", "fc_param.bias", "fc_lm.weight"} <= set(
        network.state_dict()
    )
    total = sum(p.numel() for p in network.parameters())
    head = sum(p.numel() for name, p in network.named_parameters() if name.startswith("fc_lm"))
    assert (total, head) == (920_166, 136 * 513)
    assert sum(p.numel() for p in MobileNetV1(0.5, landmark_outputs=None).parameters()) == total - head


def test_normalise_crop_is_the_networks_transform() -> None:
    crop = np.arange(120 * 120 * 3, dtype=np.int64).reshape(120, 120, 3).astype(np.uint8)
    out = normalise_crop(crop)
    assert out.shape == (3, 120, 120) and out.dtype == np.float32
    np.testing.assert_array_equal(out[2], (crop[..., 2].astype(np.float32) - 127.5) / 128)


def test_golden_parity(network: MobileNetV1, golden: dict[str, np.ndarray], morphable: MorphableModel) -> None:
    with torch.no_grad():
        raw = network(_inputs(golden))
    np.testing.assert_allclose(raw.numpy(), golden["raw"], rtol=0, atol=1e-4)
    params = denormalise_params(morphable, raw).numpy()
    tolerance = 1e-4 * morphable.param_std + 1e-6 * np.abs(golden["param"])
    assert np.all(np.abs(params - golden["param"]) <= tolerance)


def test_batch_equals_one_by_one(network: MobileNetV1, golden: dict[str, np.ndarray]) -> None:
    inputs = _inputs(golden)
    with torch.no_grad():
        batched = network(inputs)
        single = torch.cat([network(inputs[i : i + 1]) for i in range(len(inputs))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: no onnxscript needed
def test_onnx_export_parity(network: MobileNetV1, golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "mb05.onnx"
    inputs = _inputs(golden)
    torch.onnx.export(
        network,
        (inputs[:1],),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["params"],
        dynamic_axes={"input": {0: "batch"}, "params": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (inputs, inputs[1:2]):
        (out,) = session.run(None, {"input": batch.numpy()})
        with torch.no_grad():
            expected = network(batch).numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Morphable model


def test_mesh_sizes_and_uv(morphable: MorphableModel) -> None:
    topology = morphable.topology
    assert (topology.num_vertices, topology.num_triangles) == (38_365, 76_073)
    assert morphable.w_shp.shape == (3 * 38_365, 40) and morphable.w_exp.shape == (3 * 38_365, 10)
    assert topology.uv.min() >= 0.0 and topology.uv.max() <= 1.0
    # v up: the forehead (high BFM y) is high in v.
    assert np.corrcoef(topology.uv[:, 1], morphable.mean_shape[:, 1])[0, 1] > 0.95


def test_params_to_vertices_follows_the_formula(morphable: MorphableModel, golden: dict[str, np.ndarray]) -> None:
    params = golden["param"].astype(np.float64)
    vertices = params_to_vertices(morphable, torch.from_numpy(golden["param"])).numpy()
    for k, p in enumerate(params):
        pose = p[:12].reshape(3, 4)
        shape = morphable.u + morphable.w_shp @ p[12:52] + morphable.w_exp @ p[52:]
        expected = shape.reshape(-1, 3) @ pose[:, :3].T + pose[:, 3]
        expected = np.stack((expected[:, 0] - 1, CROP_SIZE - expected[:, 1], expected[:, 2] - 1), axis=-1)
        np.testing.assert_allclose(vertices[k], expected, rtol=0, atol=1e-3)
    on_tensors = params_to_vertices(basis_tensors(morphable), torch.from_numpy(golden["param"]))
    np.testing.assert_allclose(on_tensors.numpy(), vertices, rtol=0, atol=1e-3)


def test_landmarks_triangles_and_depth_on_a_frontal_face(
    morphable: MorphableModel, golden: dict[str, np.ndarray]
) -> None:
    params = torch.from_numpy(golden["param"][:1]).clone()
    params[:, 12:] = 0.0  # the mean shape under crop 0's pose
    vertices = crop_to_image(params_to_vertices(morphable, params), np.array([0.0, 0.0, 120.0, 120.0]))[0].numpy()
    points = morphable.topology.landmark_points(vertices)
    assert np.all((points[:, :2] > 0) & (points[:, :2] < 120))
    eyes_y = points[36:48, 1].mean()
    assert eyes_y < points[NOSE_TIP, 1] < points[MOUTH, 1].mean()
    assert points[LEFT_EYE, 0].mean() < points[RIGHT_EYE, 0].mean()
    # larger z is closer: the nose tip is in front of the jaw line near the ears and of the cheeks
    assert points[NOSE_TIP, 2] > points[[0, 1, 2, 14, 15, 16], 2].max() + 20
    assert vertices[:, 2].min() == 0.0
    # camera-facing triangles have negative signed area in (x right, y down)
    a, b, c = morphable.topology.triangles.T
    x, y = vertices[:, 0], vertices[:, 1]
    area = (x[b] - x[a]) * (y[c] - y[a]) - (x[c] - x[a]) * (y[b] - y[a])
    assert (area < 0).mean() > 0.8


def test_crop_to_image_scales_and_offsets() -> None:
    crop = torch.tensor([[[0.0, 0.0, -5.0], [120.0, 60.0, 7.0]]])
    image = crop_to_image(crop, torch.tensor([10.0, 20.0, 250.0, 380.0]), zero_min_depth=False)
    expected = torch.tensor([[[10.0, 20.0, -12.5], [250.0, 200.0, 17.5]]])  # scales 2 and 3, depth 2.5
    torch.testing.assert_close(image, expected)
    shifted = crop_to_image(crop, np.array([[10.0, 20.0, 250.0, 380.0]]))
    torch.testing.assert_close(shifted[..., 2], torch.tensor([[0.0, 30.0]]))


def test_pose_of_the_golden_crops(golden: dict[str, np.ndarray]) -> None:
    pose = pose_from_params(torch.from_numpy(golden["param"])).numpy()
    for name, (yaw, pitch, roll) in zip(golden["names"], pose):
        logger.info("%s: yaw %.1f, pitch %.1f, roll %.1f", name, yaw, pitch, roll)
        print(f"{name}: yaw {yaw:.1f} pitch {pitch:.1f} roll {roll:.1f}")
    assert np.all(np.abs(pose) < 45)
    assert np.all(np.abs(pose[0]) < 10)  # the astronaut looks at the camera
    frontal = torch.zeros(1, 62)
    frontal[0, :12] = torch.tensor([5e-4, 0, 0, 60, 0, 5e-4, 0, 60, 0, 0, 5e-4, -60])
    torch.testing.assert_close(pose_from_params(frontal), torch.zeros(1, 3))
    turned = frontal.clone()
    angle = np.deg2rad(20.0)  # rotate about the vertical axis: x' = cos x + sin z, z' = -sin x + cos z
    rotation = [np.cos(angle), np.sin(angle), -np.sin(angle), np.cos(angle)]
    turned[0, [0, 2, 8, 10]] = 5e-4 * torch.tensor(rotation, dtype=torch.float32)
    torch.testing.assert_close(pose_from_params(turned), torch.tensor([[-20.0, 0.0, 0.0]]))


def test_mirror_map(morphable: MorphableModel) -> None:
    mirror = morphable.topology.mirror
    ids = np.arange(len(mirror))
    assert np.mean(mirror[mirror] == ids) > 0.97
    landmarks = morphable.topology.landmarks_68[:, 0]
    shape = morphable.mean_shape
    for left, right in [(36, 45), (39, 42), (0, 16), (48, 54), (31, 35), (17, 26)]:
        assert np.linalg.norm(shape[mirror[landmarks[left]]] - shape[landmarks[right]]) < 1500  # BFM units (um)
    for centre in (8, 27, 30, 33, 51, 57):
        assert mirror[landmarks[centre]] == landmarks[centre]
    square = np.array([[-1.0, 0, 0], [1.0, 0, 0], [-1.0, 1, 0], [1.0, 1, 0], [0.0, 2, 0]])
    twins, mismatch = mirror_vertex_map(square)
    assert twins.tolist() == [1, 0, 3, 2, 4] and mismatch.max() == 0


def test_cache_round_trip(morphable: MorphableModel, tmp_path: Path) -> None:
    path = tmp_path / "bfm_noneck.npz"
    save_morphable_model(morphable, path)
    loaded = load_cached_morphable_model(path)
    for name in ("u", "w_shp", "w_exp", "param_mean", "param_std"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(morphable, name))
        assert getattr(loaded, name).dtype == np.float32
    for name in ("triangles", "uv", "mirror", "landmarks_68"):
        np.testing.assert_array_equal(getattr(loaded.topology, name), getattr(morphable.topology, name))
    (path.parent / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(MorphableModelDataError, match="delete it"):
        load_cached_morphable_model(path.parent / "broken.npz")


def test_missing_bases_are_reported(tmp_path: Path) -> None:
    with pytest.raises(MorphableModelDataError, match=r"u_shp\.npy"):
        load_morphable_model(
            bases_wheel_or_dir=tmp_path,
            indices=tmp_path / "indices.npy",
            tri=tmp_path / "tri.pkl",
            uv_mat=tmp_path / "BFM_UV.mat",
            mean_std=tmp_path / "mean_std.pkl",
        )


# ---------------------------------------------------------------------------------------------------------------
# Crop rule


def test_roi_box_from_bbox_constants() -> None:
    # mean side 110: centre (150, 180 + 0.14 * 110), side int(1.58 * 110) = 173
    np.testing.assert_allclose(roi_box_from_bbox(np.array([100.0, 120.0, 200.0, 240.0])), [63.5, 108.9, 236.5, 281.9])
    boxes = np.array([[100.0, 120.0, 200.0, 240.0], [0.0, 0.0, 50.0, 50.0]])
    assert roi_box_from_bbox(boxes).shape == (2, 4)


def test_crop_roi_fills_outside_with_zeros() -> None:
    image = np.random.default_rng(0).integers(1, 256, size=(50, 80, 3), dtype=np.uint8)
    crop = crop_roi(image, np.array([-20.0, -10.0, 100.0, 110.0]))  # 120x120: no resize, a pure copy
    assert crop.shape == (120, 120, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop[10:60, 20:100], image)
    assert not crop[:10].any() and not crop[60:].any() and not crop[:, :20].any() and not crop[:, 100:].any()
    cv2 = pytest.importorskip("cv2")
    resized = crop_roi(image, np.array([4.6, 0.2, 64.5, 49.5]))  # rounds (half to even) to 5, 0, 64, 50
    np.testing.assert_array_equal(resized, cv2.resize(image[0:50, 5:64], (120, 120), interpolation=cv2.INTER_LINEAR))
