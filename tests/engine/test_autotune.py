"""``auto`` by measurement: the fastest exact backend wins, batching only where it pays, the answer is cached per
machine and read back without measuring, and the default Detector runs it with the reference's results."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch

from retinaserve.detection import Detector
from retinaserve.detection.backend import HeadOutputs
from retinaserve.engine import autotune
from retinaserve.engine.autotune import EngineProfile, installed_candidates, measure_profile
from retinaserve.engine.factory import ENGINE_ENV, EngineConfig, create_detector_backend
from retinaserve.registry import get_model_spec

from ..conftest import SIX_PEOPLE

SLIM = "ultralight-slim"


class _TimedBackend:
    """A stand-in whose forward takes ``fixed_ms + per_image_ms * N ** exponent``: what batching pays is known."""

    def __init__(self, name: str, fixed_ms: float, per_image_ms: float, exponent: float = 1.0) -> None:
        self._name, self.fixed_ms, self.per_image_ms, self.exponent = name, fixed_ms, per_image_ms, exponent
        self.calls: list[int] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        self.calls.append(batch.shape[0])
        time.sleep((self.fixed_ms + self.per_image_ms * batch.shape[0] ** self.exponent) / 1e3)
        empty = torch.empty(batch.shape[0], 0)
        return empty, empty, empty

    def release(self, outputs: HeadOutputs) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _profile(backends: dict[str, _TimedBackend]) -> EngineProfile:
    return measure_profile(
        get_model_spec(SLIM),
        backends,  # type: ignore[arg-type]
        device=torch.device("cpu"),
        size=(64, 64),
        machine="test",
        rounds=3,
        batch_repeats=2,
    )


def test_the_fastest_backend_wins_and_every_one_is_timed() -> None:
    close, fast, slow = _TimedBackend("close", 8, 8), _TimedBackend("fast", 4, 6), _TimedBackend("slow", 60, 20)
    profile = _profile({"onnx/fp32": close, "openvino/fp32": fast, "torch/fp32": slow})
    assert profile.variant == "openvino/fp32"
    assert profile.forward_ms["onnx/fp32"] > 1.2 * profile.forward_ms["openvino/fp32"]
    assert close.calls.count(1) == 2 + 3  # warm-up and every round, interleaved with the others
    assert slow.calls == [1, 1]  # far behind after warm-up: timed once, sits the rounds out, still reported
    assert profile.forward_ms["torch/fp32"] > 5 * profile.forward_ms["openvino/fp32"]
    assert all(name in profile.reason for name in profile.forward_ms)


def test_batching_is_chosen_only_where_it_pays() -> None:
    # a large fixed cost per call: batch 4 costs (20 + 4) / 4 = 6 ms per image against 21 ms alone
    pays = _profile({"onnx/fp32": _TimedBackend("pays", 20, 1)})
    assert pays.max_batch == 4
    assert pays.batch_ms[4] < 0.5 * pays.batch_ms[1]
    assert "images/s over batch 1" in pays.reason
    # cost growing faster than the batch (as eager torch's on a small CPU): one image per call
    flat = _profile({"onnx/fp32": _TimedBackend("grows", 0, 8, exponent=1.5)})
    assert flat.max_batch == 1
    assert "larger batches do not pay" in flat.reason


def test_profile_round_trips_through_json() -> None:
    profile = _profile({"onnx/fp32": _TimedBackend("a", 1, 1)})
    again = EngineProfile.from_json(json.loads(json.dumps(profile.to_json())), source="file")
    assert (again.variant, again.max_batch, again.batch_ms, again.input_size) == (
        profile.variant,
        profile.max_batch,
        profile.batch_ms,
        profile.input_size,
    )
    with pytest.raises(ValueError, match="version"):
        EngineProfile.from_json({**profile.to_json(), "version": 0}, source="file")


def test_only_installed_runtimes_are_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    real = autotune.importlib.util.find_spec
    monkeypatch.setattr(autotune.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    assert "openvino/fp32" not in installed_candidates(torch.device("cpu"))
    assert "torch/fp32" in installed_candidates(torch.device("cpu"))
    assert "openvino/fp32" not in installed_candidates(torch.device("cuda"))


@pytest.mark.usefixtures("shared")
def test_measured_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = EngineConfig(device="cpu", precision="fp32")
    with caplog.at_level(logging.INFO, logger="retinaserve.engine.factory"):
        backend, profile = create_detector_backend(SLIM, config)
    assert profile is not None and profile.source == "measured"
    assert set(profile.forward_ms) == set(installed_candidates(torch.device("cpu"))) >= {"onnx/fp32", "torch/fp32"}
    assert "measuring ultralight-slim" in caplog.text and profile.variant in caplog.text
    files = list((tmp_path / "retinaserve" / "profiles").glob("ultralight-slim-cpu-*.json"))
    assert len(files) == 1

    def no_measuring(*args: object, **kwargs: object) -> EngineProfile:
        raise AssertionError("a cached profile must not be measured again")

    monkeypatch.setattr("retinaserve.engine.factory.measure_profile", no_measuring)
    again_backend, again = create_detector_backend(SLIM, config)
    assert again is not None and again.source == str(files[0]) and again.variant == profile.variant
    assert again_backend.name.split()[0] == backend.name.split()[0]

    files[0].write_text("{not json")  # a corrupt profile is measured again (and rewritten), with a warning
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        _, remeasured = create_detector_backend(SLIM, config)
    assert remeasured is not None and remeasured.source == "measured"
    assert "ignoring the engine profile" in caplog.text
    data = json.loads(files[0].read_text())

    # a profile made before a runtime was installed did not time it: measured again, not trusted
    loser = next(name for name in data["forward_ms"] if name != data["backend"] + "/" + data["precision"])
    del data["forward_ms"][loser]
    files[0].write_text(json.dumps(data))
    _, after_install = create_detector_backend(SLIM, config)
    assert after_install is not None and after_install.source == "measured" and loser in after_install.forward_ms
    _, cached_again = create_detector_backend(SLIM, config)
    assert cached_again is not None and cached_again.source == str(files[0])


def test_the_environment_names_the_backend_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_ENV, "torch/fp32")
    monkeypatch.setattr("retinaserve.engine.factory.measure_profile", None)  # would fail if called
    backend, profile = create_detector_backend(SLIM, EngineConfig(device="cpu", precision="fp32"))
    assert profile is not None and profile.variant == "torch/fp32" and profile.source == f"${ENGINE_ENV}"
    assert backend.name.startswith("torch-fp32")


@pytest.mark.usefixtures("shared")
def test_the_default_detector_is_the_measured_fastest_and_exact() -> None:
    """What users get from ``Detector()`` is never eager torch when a faster exact backend is installed, and finds
    what the eager reference finds."""
    fast = Detector(SLIM)
    reference = Detector(SLIM, backend="torch-baseline")
    assert fast.engine_profile is not None
    assert fast.engine_profile.variant in fast.engine_profile.forward_ms
    fastest = min(fast.engine_profile.forward_ms, key=fast.engine_profile.forward_ms.__getitem__)
    assert fast.engine_profile.variant == fastest
    assert not fast.backend.name.startswith("torch-fp32 cpu") or fastest == "torch/fp32"
    assert fast.batch_size == fast.engine_profile.max_batch
    got, want = fast.detect(SIX_PEOPLE), reference.detect(SIX_PEOPLE)
    assert len(got) == len(want) >= 6
    for a, b in zip(got, want):
        assert abs(a.score - b.score) < 1e-3
        assert max(abs(x - y) for x, y in zip(a.box, b.box)) < 0.05
