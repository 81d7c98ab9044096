"""``retinaserve reconstruct --sample``: the photo shipped with the package, without any path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinaserve.cli import main
from retinaserve.data import SAMPLE_PHOTO


def test_reconstruct_sample_needs_no_path(tmp_path: Path, reconstruction_cache: Path) -> None:
    code = main(["reconstruct", "--sample", "--out", str(tmp_path), "--texture-size", "256",
                 "--json", str(tmp_path / "faces.json"), "-q"])  # fmt: skip
    assert code == 0
    (face,) = json.loads((tmp_path / "faces.json").read_text())[str(SAMPLE_PHOTO)]
    assert Path(face["files"]["glb"]) == tmp_path / "grace_hopper_face0.glb"
    assert (tmp_path / "grace_hopper_face0.glb").stat().st_size > 10_000


def test_reconstruct_without_paths_or_sample_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconstruct"]) == 2
    assert capsys.readouterr().err.startswith("error: give image files or folders, or --sample")
