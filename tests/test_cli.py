"""The command line on real photos: JSON, drawn and WIDER FACE output, folders, the shipped sample photo, the
threshold rules, errors as one line with a status code."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaserve import __version__
from retinaserve.cli import build_parser, iou_threshold, main, score_threshold
from retinaserve.data import SAMPLE_PHOTO
from retinaserve.detection.detector import _check_options

from .conftest import GRACE_HOPPER, IMAGES, SIX_PEOPLE


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


def test_python_m_retinaserve_is_the_command() -> None:
    command = [sys.executable, "-m", "retinaserve", "--version"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"retinaserve {__version__}"


@pytest.mark.parametrize("value", [-0.1, 0.0, 0.02, 0.5, 0.999, 1.0, 1.5])
def test_threshold_rules_are_the_detectors(value: float) -> None:
    def accepted(check: Callable[[], object]) -> bool:
        try:
            check()
        except (ValueError, argparse.ArgumentTypeError):
            return False
        return True

    cli_score, cli_iou = accepted(lambda: score_threshold(str(value))), accepted(lambda: iou_threshold(str(value)))
    assert cli_score == accepted(lambda: _check_options(value, 0.4, 750, None))
    assert cli_iou == accepted(lambda: _check_options(0.5, value, 750, None))


def test_threshold_1_is_refused_with_the_detectors_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(SIX_PEOPLE), "--threshold", "1"])
    assert exit_info.value.code == 2
    assert "argument --threshold: the score threshold must be in [0, 1), got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect", str(SIX_PEOPLE), "--nms", "0"])
    assert "argument --nms: the IoU threshold must be in (0, 1], got 0" in capsys.readouterr().err


def test_detect_sample_runs_on_the_shipped_photo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["detect", "--sample", "--model", "ultralight-rfb", "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert SAMPLE_PHOTO.is_file() and SAMPLE_PHOTO.read_bytes() == GRACE_HOPPER.read_bytes()
    faces = json.loads((tmp_path / "r.json").read_text())[str(SAMPLE_PHOTO)]
    assert len(faces) == 1
    assert faces[0]["landmarks"]["left_eye"][0] < faces[0]["landmarks"]["right_eye"][0]  # the image's left
    assert "grace_hopper.jpg: 1 face (" in capsys.readouterr().out  # singular


def test_detect_without_paths_or_sample_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--model", "ultralight-rfb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: give image files or folders, or --sample") and "Traceback" not in err


def test_format_wider_writes_the_official_prediction_files(tmp_path: Path) -> None:
    out = tmp_path / "wider"
    code = main(
        ["detect", str(SIX_PEOPLE), "--model", "ultralight-rfb", "--format", "wider", "--out", str(out),
         "--json", str(tmp_path / "r.json"), "--draw", str(tmp_path / "drawn"), "-q"]
    )  # fmt: skip
    assert code == 0
    faces = json.loads((tmp_path / "r.json").read_text())[str(SIX_PEOPLE)]
    assert (tmp_path / "drawn" / "six_people.jpg").is_file()
    lines = (out / SIX_PEOPLE.parent.name / "six_people.txt").read_text().splitlines()
    assert lines[0] == "six_people" and int(lines[1]) == len(faces) == 6
    rows = np.array([[float(v) for v in line.split()] for line in lines[2:]])
    boxes = np.array([face["box"] for face in faces])
    expected = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], [face["score"] for face in faces]])
    np.testing.assert_allclose(rows, expected, atol=0.01)  # x y w h score, in pixels


def test_format_wider_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", str(SIX_PEOPLE), "--format", "wider"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["detect", str(SIX_PEOPLE), "--out", "somewhere"]) == 2
    assert "--format wider" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [(["detect", "a.jpg", "-v"], True), (["-v", "detect", "a.jpg"], True), (["detect", "a.jpg"], False)],
)
def test_verbose_before_or_after_the_subcommand(argv: list[str], verbose: bool) -> None:
    assert build_parser().parse_args(argv).verbose is verbose


def test_models_prints_the_reported_accuracy_unrounded(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = {r["name"].split(" ")[0]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["retinaface-mnv2"]["quality"] == "WIDER AP 0.9335/0.9178/0.7951"  # 93.35 %, not 0.933 nor 0.934
