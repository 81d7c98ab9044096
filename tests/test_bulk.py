"""``retinaserve batch`` in this process on real photos: the rows equal ``retinaserve detect --json``'s faces, bad
files get their error and sink nothing, JSONL and Parquet, folder / glob / list sources, resume after a partial
run, after a crash (Parquet parts left, a JSONL line cut) and after Ctrl-C, ``--retry-errors``, usage errors;
``--reconstruct``: the meshes equal ``retinaserve reconstruct --json``'s."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retinaserve.bulk.results import JsonlResults, ParquetResults, open_results
from retinaserve.bulk.runner import Decoded, detect_rows
from retinaserve.bulk.sources import list_images
from retinaserve.cli import main
from retinaserve.errors import InvalidImageError
from retinaserve.images import ReducedImage

from .conftest import ASTRONAUT, CROWD, GRACE_HOPPER, SIX_PEOPLE

MODEL = "ultralight-slim"
BACKEND = "onnx"
"""The fastest model with shared weights, on a pinned backend (``auto`` would measure at start)."""
ENGINE = ["--model", MODEL, "--backend", BACKEND]
GOOD = ("astronaut.png", "crowd_selfie.jpg", "grace_hopper.jpg", "nested/six_people.jpg")
BAD = {"bad.jpg": "not an image", "cut.jpg": "corrupt or truncated image"}


def make_photo_folder(folder: Path) -> Path:
    """The shared photos (one in a subfolder), random bytes named bad.jpg and a JPEG cut short, in ``folder``."""
    (folder / "nested").mkdir(parents=True)
    for source, name in zip((ASTRONAUT, CROWD, GRACE_HOPPER, SIX_PEOPLE), GOOD):
        shutil.copy(source, folder / name)
    (folder / "bad.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "cut.jpg").write_bytes(SIX_PEOPLE.read_bytes()[:20000])
    (folder / "notes.txt").write_text("not an image suffix: not listed")
    return folder


def detect_reference(folder: Path, json_path: Path) -> dict[str, list[dict[str, Any]]]:
    """``retinaserve detect --json`` on the good photos: resolved path -> faces."""
    code = main(["detect", *(str(folder / name) for name in GOOD), *ENGINE, "--json", str(json_path), "-q"])
    assert code == 0
    return {str(Path(path).resolve()): faces for path, faces in json.loads(json_path.read_text()).items()}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A results file's rows, as dicts (Parquet read back with pyarrow)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


def assert_rows_match(rows: list[dict[str, Any]], folder: Path, reference: dict[str, list[dict[str, Any]]]) -> None:
    """One row per image of ``folder``; good ones with detect's faces (boxes and points within 1e-3 px, scores
    within 1e-5, same count), bad ones with their error and nothing else."""
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows) == len(GOOD) + len(BAD)
    for name in GOOD:
        row = by_path[str((folder / name).resolve())]
        expected = reference[row["path"]]
        assert row["error"] is None and row["model"] == MODEL
        assert row["num_faces"] == len(row["faces"]) == len(expected) > 0
        assert row["width"] > 0 and row["height"] > 0
        assert set(row["timings_ms"]) == {"decode", "detect"} and row["timings_ms"]["detect"] > 0
        for got, want in zip(row["faces"], expected):
            assert set(got) == set(want) == {"box", "score", "landmarks"}
            assert np.allclose(got["box"], want["box"], atol=1e-3, rtol=0)
            assert abs(got["score"] - want["score"]) <= 1e-5
            assert list(got["landmarks"]) == list(want["landmarks"])
            for point in want["landmarks"]:
                assert np.allclose(got["landmarks"][point], want["landmarks"][point], atol=1e-3, rtol=0)
    for name, message in BAD.items():
        row = by_path[str((folder / name).resolve())]
        assert message in row["error"] and "\n" not in row["error"]
        assert row["width"] is None and row["height"] is None and row["faces"] is None
        assert row["timings_ms"]["decode"] >= 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    return make_photo_folder(tmp_path_factory.mktemp("bulk") / "photos")


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return detect_reference(photos, tmp_path_factory.mktemp("detect") / "detect.json")


def batch(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """``retinaserve batch ARGV`` in this process: (exit status, the JSON summary, stderr)."""
    capsys.readouterr()
    code = main(["batch", *argv, *ENGINE])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_equal_detect_and_a_rerun_changes_nothing(
    photos: Path, reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    out = tmp_path / f"results{suffix}"
    code, summary, err = batch(capsys, str(photos), "--out", str(out), "--batch-size", "3")
    assert code == 1  # two images failed; the others are all there
    assert_rows_match(read_rows(out), photos, reference)
    assert summary["done"] == 6 and summary["errors"] == 2 and summary["skipped"] == 0 and not summary["interrupted"]
    assert summary["faces"] == sum(len(faces) for faces in reference.values())
    assert "bad.jpg: not an image" in err and "6 images done, 0 skipped as already done, 2 errors" in err
    assert not (tmp_path / f"results{suffix}.parts").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        out.name
    ]
    before = out.read_bytes()
    code, summary, err = batch(capsys, str(photos), "--out", str(out))
    assert code == 0 and summary["done"] == 0 and summary["skipped"] == 6 and summary["skipped_errors"] == 2
    assert "--retry-errors redoes them" in err
    assert out.read_bytes() == before


def test_sources_folder_glob_and_list_files(photos: Path, tmp_path: Path) -> None:
    everything = [(photos / name).resolve() for name in sorted(["bad.jpg", "cut.jpg", *GOOD])]
    assert list_images(str(photos)) == everything  # recursive, sorted, image suffixes only
    jpgs = ("bad.jpg", "crowd_selfie.jpg", "cut.jpg", "grace_hopper.jpg")
    assert list_images(f"{photos}/*.jpg") == [(photos / name).resolve() for name in jpgs]
    assert list_images(f"{photos}/**/six_*.jpg") == [(photos / "nested/six_people.jpg").resolve()]
    listing = tmp_path / "lists" / "todo.txt"
    listing.parent.mkdir()
    lines = [
        "# two photos",
        "",
        f"../{photos.name}/astronaut.png",
        f"  {photos / 'nested/six_people.jpg'}  ",
        "missing.jpg",
    ]
    listing.write_text("\n".join(lines) + "\n")
    shutil.copytree(photos, tmp_path / photos.name)  # relative paths are relative to the list file's folder
    relative = (tmp_path / photos.name / "astronaut.png").resolve()
    expected = [relative, (photos / "nested/six_people.jpg").resolve(), (listing.parent / "missing.jpg").resolve()]
    assert list_images(str(listing)) == expected
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_list = tmp_path / "lists" / "todo.parquet"
    table = pa.table(
        {"path": [f"../{photos.name}/astronaut.png", str(photos / "nested/six_people.jpg"), "missing.jpg"]}
    )
    pq.write_table(table, pq_list)
    assert list_images(str(pq_list)) == expected


def test_list_file_then_the_folder_resumes_and_missing_files_are_errors(
    photos: Path, reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.parquet"
    listing = tmp_path / "first.txt"
    listing.write_text(f"{photos / 'astronaut.png'}\n{photos / 'nested/six_people.jpg'}\n")
    code, summary, _ = batch(capsys, str(listing), "--out", str(out))
    assert code == 0 and summary["done"] == 2 and len(read_rows(out)) == 2
    first = {row["path"]: row for row in read_rows(out)}
    code, summary, _ = batch(capsys, f"{photos}/**/*.*", "--out", str(out))
    assert code == 1 and summary["done"] == 4 and summary["skipped"] == 2
    rows = read_rows(out)
    assert_rows_match(rows, photos, reference)
    assert all(row == first[row["path"]] for row in rows if row["path"] in first)  # earlier rows kept as they were
    missing = tmp_path / "missing.txt"
    missing.write_text("nowhere.jpg\n")
    code, summary, err = batch(capsys, str(missing), "--out", str(tmp_path / "m.jsonl"), "-q")
    assert code == 1 and "does not exist" in read_rows(tmp_path / "m.jsonl")[0]["error"] and "nowhere.jpg" in err


def test_crash_leftovers_are_picked_up(
    photos: Path, reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed after writing some rows: Parquet parts (and a temporary file) left beside the file, a JSONL line
    cut in the middle. The next run skips what was written, redoes the cut line and leaves one clean file."""
    full = tmp_path / "full.jsonl"
    assert batch(capsys, str(photos), "--out", str(full))[0] == 1
    rows = {Path(row["path"]).name: row for row in read_rows(full)}
    out = tmp_path / "results.parquet"
    crashed = ParquetResults(out)
    crashed.append([rows["astronaut.png"], rows["bad.jpg"]])
    crashed.append([rows["grace_hopper.jpg"]])
    (crashed.parts / ".part-00002.parquet.123.tmp").write_bytes(b"half a file")
    assert len(list(crashed.parts.glob("part-*.parquet"))) == 2 and not out.exists()
    code, summary, _ = batch(capsys, str(photos), "--out", str(out))
    assert summary["skipped"] == 3 and summary["done"] == 3 and code == 1
    assert_rows_match(read_rows(out), photos, reference)
    assert not crashed.parts.exists()

    cut = tmp_path / "cut.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:2]) + lines[2][:40])
    code, summary, _ = batch(capsys, str(photos), "--out", str(cut))
    assert code == 1 and summary["skipped"] == 2 and summary["done"] == 4
    assert_rows_match(read_rows(cut), photos, reference)


def test_ctrl_c_keeps_what_was_detected(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from retinaserve.bulk import runner

    calls = []
    real = runner.detect_rows

    def interrupted_on_the_second_batch(detector: Any, batch_: Any, *rest: Any) -> Any:
        calls.append(len(batch_))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(detector, batch_, *rest)

    monkeypatch.setattr(runner, "detect_rows", interrupted_on_the_second_batch)
    out = tmp_path / "results.parquet"
    code, summary, _ = batch(capsys, str(photos), "--out", str(out), "--batch-size", "2")
    assert code == 130 and summary["interrupted"] and summary["done"] == 2
    assert len(read_rows(out)) == 2 and not (tmp_path / "results.parquet.parts").exists()


def test_retry_errors_redoes_only_the_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_photo_folder(tmp_path / "photos")
    for suffix in (".jsonl", ".parquet"):
        out = tmp_path / f"results{suffix}"
        (folder / "bad.jpg").write_bytes(b"not a jpeg")
        assert batch(capsys, str(folder), "--out", str(out))[0] == 1
        before = {row["path"]: row for row in read_rows(out)}
        shutil.copy(GRACE_HOPPER, folder / "bad.jpg")  # the bad file is replaced by a good photo
        code, summary, _ = batch(capsys, str(folder), "--out", str(out))
        assert code == 0 and summary["done"] == 0  # errors count as done without --retry-errors
        code, summary, _ = batch(capsys, str(folder), "--out", str(out), "--retry-errors")
        assert code == 1 and summary["done"] == 2 and summary["skipped"] == 4 and summary["errors"] == 1
        after = {row["path"]: row for row in read_rows(out)}
        assert len(after) == len(read_rows(out)) == 6  # one row per image: the retried rows replace the old ones
        fixed = str((folder / "bad.jpg").resolve())
        assert after[fixed]["error"] is None and after[fixed]["num_faces"] == 1
        assert "truncated" in after[str((folder / "cut.jpg").resolve())]["error"]
        assert all(after[p] == before[p] for p in before if p != fixed and before[p]["error"] is None)


def test_usage_errors_are_one_line_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    out = str(tmp_path / "r.parquet")
    cases = [
        (["batch", str(empty), "--out", out], "no images found in"),
        (["batch", str(empty / "*.jpg"), "--out", out], "no images found in"),
        (["batch", str(tmp_path / "nowhere"), "--out", out], "is not a folder, an image, a list file"),
        (["batch", str(SIX_PEOPLE), "--out", str(tmp_path / "r.csv")], "--out must end in .parquet or .jsonl"),
        (["batch", str(SIX_PEOPLE), "--out", out, "--model", "nope"], "unknown model 'nope'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    (tmp_path / "other.jsonl").write_text('{"something": "else"}\n')
    assert main(["batch", str(SIX_PEOPLE), "--out", str(tmp_path / "other.jsonl")]) == 2
    assert "has no 'path'" in capsys.readouterr().err
    for flag in (["--batch-size", "0"], ["--threshold", "1"], ["--replicas", "-1"], ["--precision", "fp64"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["batch", str(SIX_PEOPLE), "--out", out, *flag])
        assert exit_info.value.code == 2
    assert not (tmp_path / "r.parquet").exists()


def test_in_process_needs_neither_ray_nor_pyarrow_for_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the ray extra: JSONL in this process works; Parquet and --ray say what to install."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, summary, _ = batch(capsys, str(GRACE_HOPPER), "--out", str(tmp_path / "r.jsonl"))
    assert code == 0 and summary["done"] == 1 and read_rows(tmp_path / "r.jsonl")[0]["num_faces"] == 1
    for argv, message in (
        (["--out", str(tmp_path / "r.parquet")], "pip install pyarrow (or retinaserve[ray])"),
        (["--out", str(tmp_path / "s.jsonl"), "--ray"], "pip install 'ray[data]' (or retinaserve[ray])"),
    ):
        code, _, err = batch(capsys, str(GRACE_HOPPER), *argv)
        assert code == 2 and message in err and "Traceback" not in err, err


def test_a_refused_image_does_not_sink_its_batch() -> None:
    """A call that refuses one image is retried image by image: the others get their faces, it gets the error."""

    class Picky:
        name = MODEL

        def run(self, images: list[ReducedImage]) -> list[Any]:
            if any(image.width == 13 for image in images):
                raise InvalidImageError("13 pixels wide: refused")
            from retinaserve.detection.results import ImageResult

            return [ImageResult([], i.width, i.height, (i.width, i.height), {"total": 4.0}) for i in images]

    def decoded(width: int) -> Decoded:
        return Decoded(f"/{width}.png", ReducedImage.full(np.zeros((5, width, 3), np.uint8)), 1.0)

    batch_ = [decoded(20), decoded(13), Decoded("/bad.png", None, 2.0, "not an image"), decoded(30)]
    rows = detect_rows(Picky(), batch_)  # type: ignore[arg-type]
    assert [row["path"] for row in rows] == ["/20.png", "/13.png", "/bad.png", "/30.png"]
    assert [row["error"] for row in rows] == [None, "13 pixels wide: refused", "not an image", None]
    assert [row["width"] for row in rows] == [20, None, None, 30]
    assert rows[0]["timings_ms"] == {"decode": 1.0, "detect": 4.0}


def test_results_files_pick_the_format_by_suffix(tmp_path: Path) -> None:
    assert isinstance(open_results(tmp_path / "a.JSONL"), JsonlResults)
    assert isinstance(open_results(tmp_path / "a.parquet"), ParquetResults)
    with pytest.raises(ValueError, match="must end in .parquet or .jsonl"):
        open_results(tmp_path / "a.json")


def reconstruct_reference(paths: list[Path], json_path: Path) -> dict[str, list[dict[str, Any]]]:
    """``retinaserve reconstruct --json`` on ``paths`` with the batch tests' detector (its Detector pinned to their
    backend: ``reconstruct`` has no flag for it and ``auto`` would measure first): resolved path -> mesh entries."""
    import retinaserve.detection
    from retinaserve.detection import Detector

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(retinaserve.detection, "Detector", functools.partial(Detector, backend=BACKEND))
        argv = ["reconstruct", *map(str, paths), "--detector", MODEL, "--json", str(json_path), "-q"]
        assert main([*argv, "--out", str(json_path.parent / "meshes")]) == 0
    return {str(Path(path).resolve()): faces for path, faces in json.loads(json_path.read_text()).items()}


def assert_meshes_match(rows: list[dict[str, Any]], reference: dict[str, list[dict[str, Any]]]) -> None:
    """Each good row has ``reconstruct --json``'s entries (landmarks within 0.01 px, the same keys but ``files``);
    each error row has no meshes."""
    for row in rows:
        meshes = json.loads(row["meshes"]) if isinstance(row["meshes"], str) else row["meshes"]  # Parquet: JSON
        if row["error"] is not None:
            assert meshes is None and row["path"] not in reference
            continue
        expected = reference[row["path"]]
        assert len(meshes) == len(expected) > 0 and row["timings_ms"]["reconstruct"] > 0
        for got, want in zip(meshes, expected):
            assert set(got) - {"files"} == set(want) - {"files"} and got["model"] == want["model"]
            assert np.allclose(got["landmarks_68"], want["landmarks_68"], atol=0.01, rtol=0)
            assert got["pose"] == pytest.approx(want["pose"], abs=0.01) and got["box"] == pytest.approx(want["box"])


def test_reconstruct_adds_the_meshes_of_reconstruct_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--reconstruct``: each row's meshes equal ``retinaserve reconstruct --json``'s for its image, a corrupt file
    is an error row; ``--mesh-dir`` writes GLBs that load; a file's rows never mix with and without meshes."""
    import trimesh

    from retinaserve.bulk.meshes import mesh_file_stems

    folder = tmp_path / "photos"
    folder.mkdir()
    for source in (GRACE_HOPPER, SIX_PEOPLE):
        shutil.copy(source, folder / source.name)
    (folder / "cut.jpg").write_bytes(SIX_PEOPLE.read_bytes()[:20000])
    reference = reconstruct_reference([folder / p.name for p in (GRACE_HOPPER, SIX_PEOPLE)], tmp_path / "ref.json")

    out, mesh_dir = tmp_path / "results.jsonl", tmp_path / "meshes"
    code, summary, err = batch(capsys, str(folder), "--out", str(out), "--reconstruct", "--mesh-dir", str(mesh_dir))
    rows = read_rows(out)
    assert code == 1 and summary["errors"] == 1 and "corrupt or truncated image" in err
    assert summary["reconstruct"] == "facemesh-468" and summary["meshes"] == sum(map(len, reference.values())) == 7
    assert_meshes_match(rows, reference)
    files = [Path(entry["files"]["glb"]) for row in rows for entry in row["meshes"] or ()]
    assert sorted(f.name for f in files) == ["grace_hopper_face0.glb", *(f"six_people_face{n}.glb" for n in range(6))]
    loaded = trimesh.load(files[0], force="mesh")
    assert len(loaded.vertices) >= 468 and len(loaded.faces) > 800
    assert mesh_file_stems(["/a/x.jpg", "/b/X.png", "/c/y.jpg"]).keys() == {"/a/x.jpg", "/b/X.png"}

    parquet = tmp_path / "results.parquet"  # no --mesh-dir: no files, no texture baked
    code, summary, _ = batch(capsys, str(folder), "--out", str(parquet), "--reconstruct", "facemesh-468", "-q")
    assert code == 1 and summary["meshes"] == 7
    assert_meshes_match(read_rows(parquet), reference)
    assert all("files" not in m for row in read_rows(parquet) for m in json.loads(row["meshes"] or "[]"))
    assert batch(capsys, str(folder), "--out", str(parquet), "--reconstruct", "-q")[1]["skipped"] == 3

    plain = tmp_path / "plain.jsonl"  # resuming with and without --reconstruct is refused
    assert batch(capsys, str(GRACE_HOPPER), "--out", str(plain), "-q")[0] == 0
    for target, flags, message in (
        (plain, ["--reconstruct"], "was written without --reconstruct"),
        (parquet, [], "was written with --reconstruct"),
        (plain, ["--mesh-dir", str(mesh_dir)], "add --reconstruct"),
        (plain, ["--reconstruct", "--decode", "fast"], "drop --decode fast"),
        (plain, ["--reconstruct", MODEL], "not a 3D reconstruction model"),
    ):
        code, _, err = batch(capsys, str(folder), "--out", str(target), *flags)
        assert code == 2 and message in err and "Traceback" not in err, err


def test_a_failed_reconstruction_is_that_image_s_error() -> None:
    """A Reconstructor call that fails is retried image by image: the failing image becomes an error row (with its
    detect and reconstruct times), the others get their meshes."""
    from retinaserve.bulk.meshes import MeshOptions, MeshStage
    from retinaserve.detection.results import ImageResult
    from retinaserve.reconstruction.results import ImageReconstruction

    class Flaky:
        def run_detected(self, images: list[np.ndarray], detections: list[Any], **_: Any) -> list[Any]:
            if any(image.shape[1] == 13 for image in images):
                raise RuntimeError("the mesh network\nfailed")
            return [ImageReconstruction([], [], image.shape[1], image.shape[0]) for image in images]

    stage = MeshStage(MeshOptions(), Flaky())  # type: ignore[arg-type]
    rows = [
        {"path": f"/{w}.png", "model": MODEL, "error": None, "timings_ms": {"decode": 1.0, "detect": 2.0}}
        for w in (20, 13, 30)
    ]
    images = {i: (np.zeros((5, w, 3), np.uint8), ImageResult([], w, 5, (w, 5))) for i, w in enumerate((20, 13, 30))}
    out = stage.add(rows, images)
    assert [row["meshes"] for row in out] == [[], None, []]
    assert [row["error"] for row in out] == [None, "reconstruction: the mesh network failed", None]
    assert out[1]["timings_ms"]["detect"] == 2.0 and out[1]["timings_ms"]["reconstruct"] >= 0
