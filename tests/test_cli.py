"""The command line on real photos: JSON and drawn output, folders, errors as one line with a status code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaserve.cli import main

from .conftest import IMAGES, SIX_PEOPLE


def test_detect_writes_json_and_drawings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        ["detect", str(SIX_PEOPLE), "--model", "ultralight-rfb", "--json", str(out / "r.json"), "--draw", str(out)]
    )
    assert code == 0
    data = json.loads((out / "r.json").read_text())
    faces = data[str(SIX_PEOPLE)]
    assert len(faces) == 6
    assert set(faces[0]) == {"box", "score", "landmarks"}
    assert set(faces[0]["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    drawn = np.asarray(Image.open(out / "six_people.jpg").convert("RGB")).astype(int)
    original = np.asarray(Image.open(SIX_PEOPLE).convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    x1, y1, _, y2 = (round(v) for v in faces[0]["box"])
    # the box outline is drawn in green where the photo was not
    assert drawn[y1 + 1 : y2 - 1, x1 - 1 : x1 + 2, 1].mean() > original[y1 + 1 : y2 - 1, x1 - 1 : x1 + 2, 1].mean() + 40
    assert "six_people.jpg: 6 faces" in capsys.readouterr().out


def test_directory_expands_and_bad_files_do_not_stop_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in IMAGES.glob("*.jpg"):
        shutil.copy(image, folder)
    (folder / "broken.jpg").write_bytes(SIX_PEOPLE.read_bytes()[:5000])
    (folder / "readme.txt").write_text("not an image, and not an image suffix either")
    code = main(
        [
            "detect",
            str(folder),
            "--model",
            "ultralight-slim",
            "--det-size",
            "640x640",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert sorted(Path(p).name for p in data) == sorted(p.name for p in IMAGES.glob("*.jpg"))
    assert "broken.jpg: corrupt or truncated image" in capsys.readouterr().err


def test_unknown_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", str(SIX_PEOPLE), "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and "Traceback" not in err


def test_models_lists_every_registered_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    from retinaserve import list_models

    assert [r["name"].split(" ")[0] for r in rows] == list_models()
    assert all(r["licence"] for r in rows)
