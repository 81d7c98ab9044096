"""Inputs as users pass them: paths, bytes, arrays in either channel order, PIL, EXIF rotation, gray, RGBA, bad data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaserve import Detector, InvalidImageError, ResizePolicy, UnknownModelError, load_image

from .conftest import SIX_PEOPLE

MODEL = "ultralight-rfb"
EXACT = {"decode": "exact"}
"""Every input kind decodes to the same pixels only at full size (decode="fast" is tested in test_scaled_decode)."""


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(Image.open(SIX_PEOPLE).convert("RGB"))


@pytest.fixture(scope="module")
def reference_faces(detector_factory) -> list:
    return detector_factory(MODEL, **EXACT)(SIX_PEOPLE)


def _same(a: list, b: list, tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(
        np.allclose(x.box, y.box, atol=tol) and abs(x.score - y.score) < 1e-5 for x, y in zip(a, b)
    )


def test_path_bytes_array_and_pil_agree(detector_factory, rgb, reference_faces) -> None:
    detector = detector_factory(MODEL, **EXACT)
    assert len(reference_faces) == 6
    assert _same(detector(SIX_PEOPLE.read_bytes()), reference_faces)
    assert _same(detector(str(SIX_PEOPLE)), reference_faces)
    assert _same(detector(rgb), reference_faces)
    assert _same(detector(Image.open(SIX_PEOPLE)), reference_faces)


def test_bgr_arrays_need_the_channel_order(detector_factory, rgb, reference_faces) -> None:
    detector = detector_factory(MODEL, **EXACT)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert _same(detector.run([bgr], channels="bgr")[0].faces, reference_faces)
    swapped = detector.run([bgr], channels="rgb")[0].faces
    assert not _same(swapped, reference_faces)


def test_exif_orientation_is_honoured(detector_factory, tmp_path: Path, reference_faces) -> None:
    """Pixels stored rotated with an EXIF 'rotate 90 CW' tag are read upright: same faces, same coordinates."""
    stored = Image.open(SIX_PEOPLE).transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    upright = load_image(path)
    assert upright.shape == (886, 1280, 3)
    faces = detector_factory(MODEL)(path)
    assert len(faces) == 6
    for face, ref in zip(sorted(faces, key=lambda f: f.box[0]), sorted(reference_faces, key=lambda f: f.box[0])):
        assert np.allclose(face.box, ref.box, atol=2.0)


def test_grayscale_and_rgba(detector_factory, rgb) -> None:
    detector = detector_factory(MODEL)
    gray = Image.fromarray(rgb).convert("L")
    assert len(detector(gray)) == 6
    assert len(detector(np.asarray(gray))) == 6
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    assert len(detector(buffer.getvalue())) == 6
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert len(detector(rgba)) == 6
    half_transparent = Image.fromarray(rgba, "RGBA")
    assert load_image(half_transparent).shape == rgb.shape


def test_alpha_is_composited_over_white() -> None:
    clear = np.zeros((4, 4, 4), np.uint8)
    assert (load_image(clear) == 255).all()


def test_truncated_jpeg_is_a_clear_error(tmp_path: Path) -> None:
    data = SIX_PEOPLE.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidImageError, match="truncated.jpg: corrupt or truncated image"):
        load_image(path)


def test_non_image_and_empty_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty image data"):
        load_image(empty)
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")


def test_bad_arrays_and_types() -> None:
    with pytest.raises(InvalidImageError, match="uint8"):
        load_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InvalidImageError, match=r"\(H, W\)"):
        load_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(InvalidImageError, match="unsupported image input"):
        load_image(12345)  # type: ignore[arg-type]


def test_pixel_limit_refuses_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    with pytest.raises(InvalidImageError, match="exceeds the limit"):
        load_image(buffer.getvalue(), max_pixels=1_000_000)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'retinaface-r101'"):
        Detector("retinaface-r101")


def test_invalid_options_are_refused(detector_factory) -> None:
    detector = detector_factory(MODEL)
    with pytest.raises(ValueError, match="threshold"):
        detector(SIX_PEOPLE, threshold=1.5)
    with pytest.raises(ValueError, match="either long_side or det_size"):
        ResizePolicy(long_side=640, det_size=(640, 640))
