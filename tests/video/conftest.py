"""Clips made once per session from the shared photos (see clips.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import ASTRONAUT, CROWD, GRACE_HOPPER, SIX_PEOPLE
from .clips import Clip, pan_clip, slideshow_clip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def crowd_pan(clip_dir: Path) -> Clip:
    """640x360 at 25 fps: a pan over crowd_selfie.jpg (about 80 small faces)."""
    return pan_clip(CROWD, clip_dir / "crowd_pan.mp4", size=(640, 360), frames=30, fps=25)


@pytest.fixture(scope="session")
def six_zoom(clip_dir: Path) -> Clip:
    """960x540 at 30 fps: a pan and zoom over six_people.jpg (faces leave the view on the left and at the top)."""
    return pan_clip(SIX_PEOPLE, clip_dir / "six_zoom.mp4", size=(960, 540), frames=30, fps=30, crop=0.85, zoom=1.15)


@pytest.fixture(scope="session")
def portraits(clip_dir: Path) -> Clip:
    """480x640 portrait at 15 fps: grace_hopper, astronaut and six_people, 5 frames each."""
    photos = [GRACE_HOPPER, ASTRONAUT, SIX_PEOPLE]
    return slideshow_clip(photos, clip_dir / "portraits.mp4", size=(480, 640), per_photo=5, fps=15)


@pytest.fixture(scope="session")
def detector(detector_factory):  # type: ignore[no-untyped-def]
    """The fastest model, on ONNX Runtime (FP32, exact; no backend measurement at start)."""
    return detector_factory("ultralight-slim", backend="onnx")
