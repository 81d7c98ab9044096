"""MediaPipe Face Mesh ported from ``face_landmark.tflite`` to PyTorch, against LiteRT's own outputs.

The golden file holds three 192x192 RGB crops and what LiteRT (XNNPACK) returns for them: 1404 landmark values
(``conv2d_21``) and the presence logit (``conv2d_31``). Damaged copies of the tflite file are made in memory by
locating fields with the ``tflite`` flatbuffer accessors.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retinaserve.errors import WeightsIntegrityError, WeightsNotFoundError
from retinaserve.models.facemesh import FaceMeshNet
from retinaserve.weights import sha256_file
from retinaserve.weights.tflite_facemesh import (
    FACE_LANDMARK_SHA256,
    META_FILENAME,
    MODEL_FILENAME,
    OUTPUT_NAMES,
    convert_facemesh_tflite,
    load_facemesh,
    save_facemesh,
)

from .conftest import REFERENCE, WEIGHTS

TFLITE = WEIGHTS / "3d" / "face_landmark.tflite"
GOLDEN = REFERENCE / "facemesh_litert.npz"
LANDMARK_TOLERANCE = 1e-3
"""Crop pixels; the port measures about 1.5e-4 against LiteRT."""
PRESENCE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tflite_bytes() -> bytes:
    if not TFLITE.is_file():
        pytest.skip(f"face_landmark.tflite not found at {TFLITE} (shared test data)")
    assert sha256_file(TFLITE) == FACE_LANDMARK_SHA256
    return TFLITE.read_bytes()


@pytest.fixture(scope="module")
def converted(tflite_bytes: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    pytest.importorskip("tflite", reason="conversion needs PyPI tflite (flatbuffer accessors)")
    return convert_facemesh_tflite(tflite_bytes)


@pytest.fixture(scope="module")
def network(converted: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> FaceMeshNet:
    model = FaceMeshNet().eval()
    model.load_state_dict(converted[0], strict=True)
    return model


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.skip(f"LiteRT golden outputs not found at {GOLDEN} (shared test data)")
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def _crops(golden: dict[str, np.ndarray]) -> torch.Tensor:
    """(3, 192, 192, 3) RGB [0, 1] -> (3, 3, 192, 192)."""
    return torch.from_numpy(golden["input_rgb01"]).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------------------------
# The module on its own


def test_architecture_without_weights() -> None:
    model = FaceMeshNet().eval()
    assert sum(p.numel() for p in model.parameters()) == 604_685
    keys = model.state_dict().keys()
    for key in ("stem.conv.weight", "stem.act.weight", "blocks.3.depthwise.weight", "blocks.2.pointwise.bias"):
        assert key in keys
    assert "landmarks_head.weight" in keys and "presence_head.bias" in keys
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        landmarks, presence = model(torch.rand(2, 3, 192, 192))
    assert landmarks.shape == (2, 1404) and presence.shape == (2, 1)
    with pytest.raises(ValueError, match="192"):
        model(torch.rand(1, 3, 256, 256))


# ------------------------------------------------------------------------------------------------------------
# Conversion and parity


def test_conversion_metadata(converted: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
    state, meta = converted
    assert all(t.dtype == torch.float32 for t in state.values())
    assert meta["parameters"] == 604_685
    assert meta["input"]["shape"] == [1, 192, 192, 3] and meta["input_size"] == 192
    assert meta["output_names"] == list(OUTPUT_NAMES) == ["conv2d_21", "conv2d_31"]
    assert meta["operators"] == 210 and meta["op_counts"]["DEQUANTIZE"] == len(state) == 113
    assert meta["op_counts"]["PAD"] == 3 and meta["op_counts"]["MAX_POOL_2D"] == 6
    assert meta["tflite_sha256"] == FACE_LANDMARK_SHA256
    # layouts: OHWI -> OIHW, 1HWC -> C1HW, (1, 1, C) -> (C,)
    assert state["stem.conv.weight"].shape == (16, 3, 3, 3)
    assert state["blocks.0.depthwise.weight"].shape == (16, 1, 3, 3)
    assert state["blocks.0.act.weight"].shape == (16,)
    assert state["landmarks_head.weight"].shape == (1404, 32, 3, 3)


def test_matches_litert(network: FaceMeshNet, golden: dict[str, np.ndarray]) -> None:
    crops = _crops(golden)
    with torch.no_grad():
        landmarks, presence = network(crops)
    for index, name in enumerate(golden["names"]):
        lm_diff = np.abs(landmarks[index].numpy() - golden["out0_conv2d_21"][index]).max()
        pr_diff = np.abs(presence[index].numpy() - golden["out1_conv2d_31"][index]).max()
        assert lm_diff < LANDMARK_TOLERANCE, f"{name}: landmarks differ by {lm_diff:.2e} crop px"
        assert pr_diff < PRESENCE_TOLERANCE, f"{name}: presence logit differs by {pr_diff:.2e}"
    assert torch.sigmoid(presence).min() > 0.99  # all three crops are faces


def test_batch_equals_one_by_one(network: FaceMeshNet, golden: dict[str, np.ndarray]) -> None:
    crops = _crops(golden)
    with torch.no_grad():
        batch = network(crops)
        single = [network(crops[i : i + 1]) for i in range(len(crops))]
    for output, one_by_one in zip(batch, zip(*single, strict=True), strict=True):
        torch.testing.assert_close(output, torch.cat(one_by_one), rtol=0, atol=5e-4)


# ------------------------------------------------------------------------------------------------------------
# Damaged files


def _model(data: bytes | bytearray) -> Any:
    import tflite

    return tflite.Model.GetRootAsModel(data, 0)


def _tensor_index(data: bytearray, name: str) -> int:
    graph = _model(data).Subgraphs(0)
    return next(i for i in range(graph.TensorsLength()) if graph.Tensors(i).Name().decode() == name)


def _operator_writing(data: bytearray, name: str) -> Any:
    graph = _model(data).Subgraphs(0)
    index = _tensor_index(data, name)
    return next(
        graph.Operators(i) for i in range(graph.OperatorsLength()) if index in graph.Operators(i).OutputsAsNumpy()
    )


def _set_int32(data: bytearray, position: int, value: int) -> None:
    data[position : position + 4] = int(value).to_bytes(4, "little", signed=True)


def _damage_kernel_shape(data: bytearray) -> None:
    """conv2d_21/Kernel (1404, 3, 3, 32) -> (1403, 3, 3, 32)."""
    tensor = _model(data).Subgraphs(0).Tensors(_tensor_index(data, "conv2d_21/Kernel"))
    _set_int32(data, tensor._tab.Vector(tensor._tab.Offset(4)), 1403)


def _damage_channel_padding(data: bytearray) -> None:
    """channel_padding_2 appends 16 instead of 32 zero channels to the skip path."""
    model = _model(data)
    tensor = model.Subgraphs(0).Tensors(_tensor_index(data, "channel_padding_2/Paddings"))
    buffer = model.Buffers(tensor.Buffer())
    _set_int32(data, buffer._tab.Vector(buffer._tab.Offset(4)) + 7 * 4, 16)


def _damage_stride(data: bytearray) -> None:
    """The stem convolution's horizontal stride 2 -> 1."""
    import tflite

    table = _operator_writing(data, "conv2d_1").BuiltinOptions()
    options = tflite.Conv2DOptions()
    options.Init(table.Bytes, table.Pos)
    assert options.StrideW() == 2
    _set_int32(data, options._tab.Pos + options._tab.Offset(6), 1)  # field 1 of Conv2DOptions: stride_w


def _damage_wiring(data: bytearray) -> None:
    """add_3 reads the max-pool output instead of the channel-padded skip (same tensor list length)."""
    op = _operator_writing(data, "add_3")
    inputs = op._tab.Vector(op._tab.Offset(6))
    padded, pooled = _tensor_index(data, "channel_padding_1"), _tensor_index(data, "max_pooling2d_1")
    for slot in range(op.InputsLength()):
        if op.Inputs(slot) == padded:
            _set_int32(data, inputs + 4 * slot, pooled)


def _damage_output_name(data: bytearray) -> None:
    """Rename the presence output tensor conv2d_31 -> conv2d_99 (a flatbuffer string: length, bytes, NUL)."""
    tensor = _model(data).Subgraphs(0).Tensors(_tensor_index(data, "conv2d_31"))
    start = tensor._tab.Indirect(tensor._tab.Pos + tensor._tab.Offset(10)) + 4  # field 3 of Tensor: name
    assert data[start : start + 10] == b"conv2d_31\x00"
    data[start : start + 9] = b"conv2d_99"


def _truncate(data: bytearray) -> None:
    del data[len(data) // 2 :]


def _not_tflite(data: bytearray) -> None:
    data[:] = b"PK\x03\x04 not a flatbuffer" * 10


DAMAGES: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "kernel_shape": (_damage_kernel_shape, "conv2d_21/Kernel"),
    "channel_padding": (_damage_channel_padding, "channel_padding_2"),
    "stride": (_damage_stride, "stride"),
    "wiring": (_damage_wiring, "wiring mismatch"),
    "output_name": (_damage_output_name, "outputs"),
    "truncated": (_truncate, "cannot be decoded"),
    "not_tflite": (_not_tflite, "not a TFLite"),
}
"""Damage -> a phrase the converter's refusal must contain."""


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_converter_refuses_damaged_file(tflite_bytes: bytes, damage: str) -> None:
    pytest.importorskip("tflite", reason="conversion needs PyPI tflite (flatbuffer accessors)")
    damage_file, message = DAMAGES[damage]
    data = bytearray(tflite_bytes)
    damage_file(data)
    assert bytes(data) != tflite_bytes
    with pytest.raises(WeightsIntegrityError, match=message):
        convert_facemesh_tflite(bytes(data))


# ------------------------------------------------------------------------------------------------------------
# Cache round trip


def test_save_load_round_trip_and_tamper(
    converted: tuple[dict[str, torch.Tensor], dict[str, Any]], tmp_path: Path
) -> None:
    state, meta = converted
    source = {"wheel": "mediapipe-0.10.21", "member": "mediapipe/modules/face_landmark/face_landmark.tflite"}
    path = save_facemesh(tmp_path, state, meta, source)
    assert path == tmp_path / MODEL_FILENAME
    written = json.loads((tmp_path / META_FILENAME).read_text())
    assert written["source"] == source and written["model_sha256"] == sha256_file(path)
    assert written["graph"]["output_names"] == list(OUTPUT_NAMES)

    loaded = load_facemesh(tmp_path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    FaceMeshNet().load_state_dict(loaded, strict=True)

    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # one bit of the last weight
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_facemesh(tmp_path)
    with pytest.raises(WeightsNotFoundError):
        load_facemesh(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------------------
# ONNX


def test_onnx_export_matches_torch(network: FaceMeshNet, golden: dict[str, np.ndarray], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "facemesh.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notices
        torch.onnx.export(
            network,
            (torch.zeros(1, 3, 192, 192),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["landmarks", "presence"],
            dynamic_axes={"image": {0: "batch"}, "landmarks": {0: "batch"}, "presence": {0: "batch"}},
        )
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crops = _crops(golden)
    with torch.no_grad():
        expected = network(crops)
    landmarks, presence = session.run(None, {"image": crops.numpy()})
    # landmarks reach ~170 px, where one float32 step is 1.5e-5: allow a few steps on top of 1e-4
    np.testing.assert_allclose(landmarks, expected[0].numpy(), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(presence, expected[1].numpy(), rtol=0, atol=1e-4)
