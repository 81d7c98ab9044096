"""Every registered architecture loads its checkpoint layout strictly, and its anchors fit its network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinaserve import UnknownModelError, WeightsIntegrityError
from retinaserve.detection.priors import make_priors
from retinaserve.registry import get_model_spec, list_models, register
from retinaserve.weights import load_network

from .conftest import SHARED_MODELS, WEIGHTS


def _random_checkpoint(model: str, path: Path, *, prefix: str = "module.") -> Path:
    """A randomly initialised state_dict saved in the original key layout (stands in for unavailable weights)."""
    network = get_model_spec(model).build()
    torch.save({prefix + k: v for k, v in network.state_dict().items() if "num_batches_tracked" not in k}, path)
    return path


@pytest.mark.parametrize("model", SHARED_MODELS)
def test_real_checkpoints_load_strictly(model: str) -> None:
    spec = get_model_spec(model)
    network = load_network(spec, WEIGHTS / spec.weights.filename)
    assert not network.training
    assert sum(p.numel() for p in network.parameters()) / 1e6 == pytest.approx(spec.params_millions, abs=0.01)


@pytest.mark.parametrize("model", ["retinaface-mnet025", "retinaface-r50"])
def test_unavailable_checkpoints_load_from_original_layout(model: str, tmp_path: Path) -> None:
    spec = get_model_spec(model)
    path = _random_checkpoint(model, tmp_path / spec.weights.filename)
    network = load_network(spec, path)
    assert sum(p.numel() for p in network.parameters()) / 1e6 == pytest.approx(spec.params_millions, abs=0.01)


def test_r50_layout_is_torchvision_resnet(tmp_path: Path) -> None:
    keys = set(get_model_spec("retinaface-r50").build().state_dict())
    assert {"body.conv1.weight", "body.layer4.2.bn3.running_var", "body.layer2.0.downsample.0.weight"} <= keys
    assert {"fpn.output3.0.weight", "ssh3.conv7x7_3.1.bias", "LandmarkHead.2.conv1x1.weight"} <= keys
    assert not any(k.startswith("body.fc") for k in keys)


def test_missing_or_extra_keys_are_refused(tmp_path: Path) -> None:
    spec = get_model_spec("retinaface-mnet025")
    state = {k: v for k, v in spec.build().state_dict().items() if k != "fpn.merge1.0.weight"}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsIntegrityError, match=r"does not match the retinaface-mnet025 architecture.*merge1"):
        load_network(spec, tmp_path / "partial.pth")
    state = get_model_spec("retinaface-mnet025").build().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightsIntegrityError, match="extra.weight"):
        load_network(spec, tmp_path / "extra.pth")


@pytest.mark.parametrize("model", list_models("detection"))
@pytest.mark.parametrize(("height", "width"), [(64, 64), (97, 130), (480, 640)])
def test_anchor_layout_matches_network_output(model: str, height: int, width: int) -> None:
    spec = get_model_spec(model)
    multiple = spec.input.pad_multiple
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    with torch.inference_mode():
        loc, cls, ldm = spec.build().eval()(torch.zeros(1, 3, height, width))
    priors = make_priors(height, width, spec.anchors.min_sizes, spec.anchors.steps)
    assert loc.shape == (1, priors.shape[0], 4)
    assert cls.shape == (1, priors.shape[0], 2)
    assert ldm.shape == (1, priors.shape[0], 10)


def test_registry_refuses_unknown_and_duplicate_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*retinaface-mnet025-edge"):
        get_model_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register(get_model_spec("ultralight-slim"))


@pytest.mark.parametrize("model", list_models("detection"))
def test_registry_entries_are_complete(model: str) -> None:
    spec = get_model_spec(model)
    assert spec.weights.licence and spec.weights.source and spec.threshold_evidence
    assert spec.accuracy is not None and 0 < spec.accuracy.hard < spec.accuracy.medium < spec.accuracy.easy < 1
    assert 0 < spec.default_threshold < 1
    if spec.weights.sha256 is not None:
        assert len(spec.weights.sha256) == 64
