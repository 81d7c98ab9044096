"""Backends on the real photos and weights: every backend/precision the CPU runs gives the reference's faces
within documented tolerances; ONNX export reproduces torch; buckets map back to original pixels.

Tolerances (parity views of the two shared photos, 640x640 letterbox, faces at the model's threshold 0.9):
- torch FP32 (channels_last, folded BN) and ONNX FP32: the same faces, landmarks within 0.05 px;
- BF16 (CPUs with BF16 units): AP >= 0.99, landmarks within 3 px;
- INT8 (static, per-channel, 13 leading convolutions in FP32): AP >= 0.98 vs the FP32 reference (measured 0.998),
  mean landmark deviation <= 2 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retinaserve import Detector, ResizePolicy
from retinaserve.detection.backend import Backend
from retinaserve.engine import BucketedResize, EngineConfig, PrecisionNotSupportedError, create_backend
from retinaserve.engine.bench import BenchConfig, Variant, run_benchmark
from retinaserve.engine.onnx_models import verify_onnx
from retinaserve.engine.parity import ParityReport, compare_detections, detect_all, parity_views
from retinaserve.engine.planner import measure_footprint
from retinaserve.engine.precision import cpu_has_native_bf16
from retinaserve.registry import get_model_spec
from retinaserve.weights import load_network

from ..conftest import WEIGHTS
from .conftest import EDGE, requires_cuda

RESIZE = ResizePolicy(det_size=(640, 640))
THRESHOLD = get_model_spec(EDGE).default_threshold


@pytest.fixture(scope="module")
def views(photos: list[np.ndarray]) -> list[np.ndarray]:
    return parity_views(photos)


@pytest.fixture(scope="module")
def reference(views: list[np.ndarray], engine_cache: Path) -> list:
    detector = Detector(EDGE, weights=WEIGHTS / get_model_spec(EDGE).weights.filename, resize=RESIZE)
    return detect_all(detector, views, 0.05)


def _parity(backend: Backend, views: list[np.ndarray], reference: list, precision: str) -> ParityReport:
    candidate = detect_all(Detector(EDGE, backend=backend, resize=RESIZE), views, 0.05)
    return compare_detections(
        reference, candidate, threshold=THRESHOLD, model=EDGE, backend=backend.name, precision=precision
    )


def _backend(engine_cache: Path, photo_paths: tuple[Path, ...], backend: str, precision: str) -> Backend:
    config = EngineConfig(backend=backend, precision=precision, device="cpu", calibration_photos=photo_paths)  # type: ignore[arg-type]
    return create_backend(EDGE, config)


def test_onnx_export_reproduces_torch(engine_cache: Path) -> None:
    from retinaserve.engine.factory import onnx_model_path

    network = load_network(get_model_spec(EDGE), WEIGHTS / get_model_spec(EDGE).weights.filename)
    path = onnx_model_path(get_model_spec(EDGE), network, "test-export", "fp32", EngineConfig())
    assert path.is_file() and str(engine_cache) in str(path)
    # dynamic batch and spatial axes: other batch sizes and aspect ratios than the export sample
    assert verify_onnx(network, path, ((1, 3, 640, 640), (3, 3, 480, 640), (2, 3, 320, 256))) < 1e-3


@pytest.mark.parametrize(("backend", "precision"), [("torch", "fp32"), ("onnx", "fp32")])
def test_fp32_backends_give_the_reference_faces(
    engine_cache, photo_paths, views, reference, backend, precision
) -> None:
    report = _parity(_backend(engine_cache, photo_paths, backend, precision), views, reference, precision)
    assert report.reference_faces > 100
    assert report.matched == report.reference_faces == report.candidate_faces
    assert report.ap == pytest.approx(1.0) and report.max_landmark_px < 0.05


def test_int8_parity_within_tolerance(engine_cache, photo_paths, views, reference) -> None:
    report = _parity(_backend(engine_cache, photo_paths, "onnx", "int8"), views, reference, "int8")
    assert report.ap >= 0.98, report
    assert report.matched >= 0.95 * report.reference_faces and report.mean_landmark_px <= 2.0, report


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="BF16 on CPU runs only with native BF16 units")
def test_bf16_on_cpu_parity(engine_cache, photo_paths, views, reference) -> None:
    report = _parity(_backend(engine_cache, photo_paths, "torch", "bf16"), views, reference, "bf16")
    assert report.ap >= 0.99 and report.max_landmark_px <= 3.0, report


def test_fp16_on_cpu_is_refused(engine_cache) -> None:
    with pytest.raises(PrecisionNotSupportedError, match="fp16 on CPU is refused"):
        create_backend(EDGE, EngineConfig(backend="torch", precision="fp16", device="cpu"))
    with pytest.raises(PrecisionNotSupportedError, match="fp16 on CPU is refused"):
        create_backend(EDGE, EngineConfig(backend="onnx", precision="fp16", device="cpu"))


def test_buckets_batch_mixed_sizes_and_map_back_to_original_pixels(engine_cache, photos) -> None:
    backend = create_backend(EDGE, EngineConfig(backend="torch", device="cpu"))
    six = photos[0]
    crop = np.ascontiguousarray(six[100:700, 200:1100])  # another aspect ratio, another bucket
    bucketed = Detector(EDGE, backend=backend, resize=BucketedResize.with_long_side(640), batch_size=4)
    results = bucketed.run([six, crop, six[:, ::-1].copy()])
    assert [r.input_size for r in results] == [(640, 480), (640, 480), (640, 480)]
    letterboxed = Detector(EDGE, backend=backend, resize=RESIZE)
    alone = letterboxed.run([six])[0].faces
    assert len(results[0].faces) == len(alone) == 6
    for face in alone:  # same faces in original pixels, whichever input shape they were found at
        nearest = min(results[0].faces, key=lambda f: np.abs(np.subtract(f.box, face.box)).sum())
        assert np.abs(np.subtract(nearest.box, face.box)).max() < 0.1 * face.width
    for image, result in zip([six, crop], results):  # batched in a bucket == alone, letterboxed into that bucket
        alone_in_bucket = Detector(EDGE, backend=backend, resize=ResizePolicy(det_size=result.input_size)).run([image])
        assert len(alone_in_bucket[0].faces) == len(result.faces) > 0
        for a, b in zip(alone_in_bucket[0].faces, result.faces):
            assert np.allclose(a.box, b.box, atol=1e-2) and np.allclose(
                a.landmarks.points(), b.landmarks.points(), atol=1e-2
            )


def test_every_call_reports_stage_timings_and_memory(engine_cache, photos) -> None:
    detector = Detector(EDGE, backend=create_backend(EDGE, EngineConfig(backend="onnx", device="cpu")), resize=RESIZE)
    result = detector.run([photos[0]])[0]
    assert set(result.timings_ms) >= {"decode", "copy", "preprocess", "forward", "postprocess", "total"}
    assert result.memory_mb["peak_rss"] >= result.memory_mb["rss"] * 0.5 > 0
    pool = detector.backend.pool  # type: ignore[attr-defined]
    detector.run([photos[0]])
    assert pool.stats.hits >= 3  # the second call's outputs came from the first call's buffers


def test_benchmark_rows_carry_the_documented_fields(engine_cache, photo_paths) -> None:
    config = BenchConfig(
        photos=photo_paths,
        variants=(Variant("onnx", "fp32"),),
        batch_sizes=(2,),
        input_sizes=((320, 320),),
        warmup=1,
        repeats=2,
        rounds=1,
        device="cpu",
    )
    rows = run_benchmark(config)
    assert [(r.backend, r.batch) for r in rows] == [("torch-baseline", 1), ("torch-baseline", 2), ("onnx", 2)]
    first = rows[0].to_dict()
    for key in ("model", "backend", "precision", "batch", "input", "p50_ms", "throughput_ips", "peak_mem_mb"):
        assert key in first
    assert rows[0].speedup_vs_baseline == pytest.approx(1.0) and all(r.throughput_ips > 0 for r in rows)


def test_planner_measures_a_footprint(engine_cache) -> None:
    footprint = measure_footprint(EDGE, EngineConfig(backend="torch", device="cpu", random_weights=True), (320, 320))
    assert set(footprint.measured_mb) == {1, 2, 4}
    assert footprint.per_image_mb >= 0 and footprint.peak_mb(4) >= footprint.peak_mb(1)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cuda_keeps_the_faces(engine_cache, views, reference, precision) -> None:
    backend = create_backend(EDGE, EngineConfig(backend="torch", precision=precision, device="cuda"))
    report = _parity(backend, views, reference, precision)
    assert report.ap >= 0.99 and report.mean_landmark_px <= 1.0, report


@pytest.mark.gpu
@requires_cuda
def test_pinned_upload_on_cuda_round_trips(photos) -> None:
    from retinaserve.engine import PinnedUploader

    uploader = PinnedUploader(torch.device("cuda", 0))
    pixels = torch.from_numpy(photos[0])
    on_gpu = uploader.upload(pixels)
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), pixels)
    torch.cuda.synchronize()
    assert uploader.reap() == 0 and uploader.pool.free_count() == 1
