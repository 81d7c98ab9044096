"""Our torch pre-processing against the originals' (cv2.resize INTER_LINEAR on float32 pixels, minus the mean)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retinaserve import ResizePolicy

from .conftest import CROWD, GRACE_HOPPER, SIX_PEOPLE

cv2 = pytest.importorskip("cv2")

CASES = [(SIX_PEOPLE, 640), (CROWD, 640), (SIX_PEOPLE, 1000), (CROWD, 333), (GRACE_HOPPER, 640), (GRACE_HOPPER, 250)]


@pytest.mark.parametrize(("path", "long_side"), CASES)
def test_scale_rule_matches_cv2_resize_by_factor(detector_factory, path, long_side: int) -> None:
    """Pytorch_Retinaface and Face-Detector-1MB: cv2.resize(img, None, fx=s, fy=s) samples on the grid of s itself,
    which differs from resizing to the rounded size when s * side is not whole (CROWD at 640: 359.2 rows)."""
    detector = detector_factory("retinaface-mnet025-edge")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bgr = np.float32(cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert np.array_equal(bgr[:, :, ::-1], rgb)  # same JPEG decoder output
    ours = detector.preprocess(rgb, ResizePolicy(long_side=long_side))
    scale = long_side / max(rgb.shape[:2])
    expected = cv2.resize(bgr, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    expected -= np.float32((104, 117, 123))
    assert ours.tensor.shape[1:] == expected.shape[:2]
    assert (ours.scale_y, ours.scale_x) == (scale, scale)  # results are divided by s, as the original does
    # cv2 and torch round their interpolation weights differently: at most ~0.01 of a grey level apart
    assert np.abs(ours.tensor.permute(1, 2, 0).numpy() - expected).max() < 0.02


@pytest.mark.parametrize(("path", "long_side"), CASES)
def test_size_rule_matches_the_tf_wrapper_resize(detector_factory, path, long_side: int) -> None:
    """PyPI retinaface's wrapper: cv2.resize to (W, H) with the long side L and the short side int(L / long * short),
    then zero padding to multiples of 32; results mapped back per axis."""
    detector = detector_factory("retinaface-mnv2")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    height, width = rgb.shape[:2]
    if height > width:
        size = (int(long_side / height * width), long_side)
    else:
        size = (long_side, int(long_side / width * height))
    expected = cv2.resize(np.float32(rgb), size, interpolation=cv2.INTER_LINEAR) / 127.5 - 1
    ours = detector.preprocess(rgb, ResizePolicy(long_side=long_side))
    tensor = ours.tensor.permute(1, 2, 0).numpy()
    assert tensor.shape[0] % 32 == tensor.shape[1] % 32 == 0
    assert np.abs(tensor[: size[1], : size[0]] - expected).max() < 2e-4
    # the wrapper pads raw pixels with zeros and the graph normalises them: -1
    assert (tensor[size[1] :] == -1).all() and (tensor[:, size[0] :] == -1).all()
    assert (ours.scale_y, ours.scale_x) == (size[1] / height, size[0] / width)
