"""Engine fixtures: ONNX models exported once per session into the test cache (never the user's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ..conftest import CROWD, SIX_PEOPLE, WEIGHT_DIRS

EDGE = "retinaface-mnet025-edge"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same cache folder and weight folders the suite's autouse fixture sets, set for session-scoped fixtures
    too (and so for every module fixture set up after it, in any package)."""
    patch = pytest.MonkeyPatch()
    root = tmp_path_factory.getbasetemp() / "xdg-cache"
    patch.setenv("XDG_CACHE_HOME", str(root))
    patch.setenv("RETINASERVE_WEIGHTS_DIR", WEIGHT_DIRS)
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def photos(shared: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB")) for path in (SIX_PEOPLE, CROWD)]


@pytest.fixture(scope="session")
def photo_paths(shared: Path) -> tuple[Path, ...]:
    return (SIX_PEOPLE, CROWD)
