"""Reconstruction fixtures: one Reconstructor per model for the session, on the shared weights and mesh data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import RECONSTRUCTION_MODELS, WEIGHT_DIRS

_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def reconstruction_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's weights folders and test cache, set for session-scoped fixtures too."""
    patch = pytest.MonkeyPatch()
    root = tmp_path_factory.getbasetemp() / "xdg-cache"
    patch.setenv("XDG_CACHE_HOME", str(root))
    patch.setenv("RETINASERVE_WEIGHTS_DIR", WEIGHT_DIRS)
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def reconstructor_factory(shared: Path, reconstruction_cache: Path) -> Callable[..., object]:
    """Reconstructors (with the default detector) shared by the session's tests."""
    from retinaserve import Reconstructor

    def make(model: str) -> Reconstructor:
        if model not in RECONSTRUCTION_MODELS:
            pytest.skip(f"{model}'s mesh data is not provisioned: run `make weights` (retinaserve weights fetch)")
        if model not in _CACHE:
            _CACHE[model] = Reconstructor(model, download=False)
        return _CACHE[model]  # type: ignore[return-value]

    return make
