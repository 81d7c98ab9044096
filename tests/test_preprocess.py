"""Our torch pre-processing against the original's (cv2.resize INTER_LINEAR on float32 BGR, minus the mean)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinaserve import ResizePolicy

from .conftest import CROWD, SIX_PEOPLE

cv2 = pytest.importorskip("cv2")


@pytest.mark.parametrize(("path", "long_side"), [(SIX_PEOPLE, 640), (CROWD, 640), (SIX_PEOPLE, 1000), (CROWD, 333)])
def test_resize_and_normalise_match_opencv(detector_factory, path, long_side: int) -> None:
    detector = detector_factory("retinaface-mnet025-edge")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bgr = np.float32(cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert np.array_equal(bgr[:, :, ::-1], rgb)  # same JPEG decoder output
    ours = detector.preprocess(rgb, ResizePolicy(long_side=long_side))
    new_h, new_w = ours.tensor.shape[1:]
    expected = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR) - np.float32((104, 117, 123))
    assert max(new_h, new_w) == long_side
    # cv2 and torch round their interpolation weights differently: at most ~0.01 of a grey level apart
    assert np.abs(ours.tensor.permute(1, 2, 0).numpy() - expected).max() < 0.02
