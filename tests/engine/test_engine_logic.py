"""CPU-side logic of the engine that GPU paths rely on: pooling, pinned staging, buckets, providers, precisions,
device choice and planner arithmetic (no network, no photos)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from retinaserve.detection import Face, Landmarks
from retinaserve.engine import (
    BackendUnavailableError,
    BucketedResize,
    BufferPool,
    EngineConfig,
    PinnedUploader,
    PrecisionNotSupportedError,
    check_precision,
    choose_bucket,
    default_buckets,
    pick_device,
    resolve_engine,
)
from retinaserve.engine.buffers import BufferKey
from retinaserve.engine.ort_backend import anchor_count, select_providers
from retinaserve.engine.parity import average_precision, match_faces
from retinaserve.engine.planner import (
    Footprint,
    choose_model,
    fit_footprint,
    largest_batch,
    parse_bytes,
    streams_that_fit,
)
from retinaserve.engine.precision import cpu_flags_have_bf16
from retinaserve.registry import get_model_spec

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_pool_reuses_by_shape_and_dtype() -> None:
    pool = BufferPool(max_free_per_key=2)
    a = pool.acquire((2, 3), torch.float32)
    pool.release(a)
    assert pool.acquire((2, 3), torch.float32).data_ptr() == a.data_ptr()
    assert pool.stats.hits == 1 and pool.stats.misses == 1
    pool.release(a)
    other = pool.acquire((2, 3), torch.float16)  # same shape, other dtype: a new buffer
    assert other.data_ptr() != a.data_ptr() and other.dtype == torch.float16
    assert pool.acquire((3, 2), torch.float32).data_ptr() != a.data_ptr()  # other shape
    assert pool.stats.misses == 3


def test_pool_keeps_at_most_max_free_and_ignores_double_release() -> None:
    pool = BufferPool(max_free_per_key=2)
    buffers = [pool.acquire((4,), torch.uint8) for _ in range(3)]
    for buffer in buffers:
        pool.release(buffer)
    pool.release(buffers[0])
    assert pool.free_count() == 2
    with pytest.raises(ValueError):
        BufferPool(max_free_per_key=0)


def test_pool_asks_for_pinned_memory_through_its_key() -> None:
    keys: list[BufferKey] = []

    def fake_allocator(key: BufferKey) -> torch.Tensor:
        keys.append(key)
        return torch.empty(key.shape, dtype=key.dtype)

    pool = BufferPool(allocator=fake_allocator)
    pool.acquire((8, 8, 3), torch.uint8, "cpu", pinned=True)
    assert keys == [BufferKey((8, 8, 3), torch.uint8, "cpu", pinned=True)]


class _FakeEvent:
    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


def test_pinned_uploader_returns_staging_buffers_only_after_their_copy() -> None:
    pool = BufferPool()
    uploader = PinnedUploader(CPU, pool)
    key = BufferKey((4, 4, 3), torch.uint8, "cpu", pinned=True)
    staging, event = torch.empty(4, 4, 3, dtype=torch.uint8), _FakeEvent()
    uploader._in_flight.append((event, staging, key))
    assert uploader.reap() == 1 and pool.free_count(key) == 0  # copy still running: buffer stays busy
    event.done = True
    assert uploader.reap() == 0 and pool.free_count(key) == 1
    pixels = torch.zeros(5, 5, 3, dtype=torch.uint8)
    assert uploader.upload(pixels) is pixels  # on CPU an upload is the tensor itself


def test_buckets_pick_the_largest_letterbox_then_the_least_padding() -> None:
    buckets = default_buckets(640)
    assert buckets[0] == (640, 640) and all(w % 32 == 0 and h % 32 == 0 for w, h in buckets)
    assert choose_bucket(886, 1280, buckets) == (640, 480)  # landscape 1.44:1
    assert choose_bucket(1280, 886, buckets) == (480, 640)  # portrait
    assert choose_bucket(500, 500, buckets) == (640, 640)
    assert choose_bucket(720, 1280, buckets) == (640, 384)  # 16:9
    resize = BucketedResize.with_long_side(640)
    assert resize.scaled_size(886, 1280) == (443, 640)
    assert resize.padded_size(886, 1280, 32) == (480, 640)
    with pytest.raises(ValueError):
        BucketedResize(buckets=())


def test_provider_order_prefers_tensorrt_then_cuda_then_cpu() -> None:
    everything = [
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "AzureExecutionProvider",
    ]
    assert select_providers(everything, CUDA) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(["CPUExecutionProvider", "CUDAExecutionProvider"], CUDA)[0] == "CUDAExecutionProvider"
    assert select_providers(everything, CPU) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        select_providers(["CPUExecutionProvider"], CUDA)  # never a silent fallback to CPU


def test_anchor_count_matches_the_registered_layout() -> None:
    spec = get_model_spec("retinaface-mnet025-edge")
    assert anchor_count(spec.anchors, 640, 640) == 16800
    assert anchor_count(spec.anchors, 480, 640) == 2 * (60 * 80 + 30 * 40 + 15 * 20)


def test_half_precision_on_cpu_is_refused_with_a_reason() -> None:
    with pytest.raises(PrecisionNotSupportedError, match="fp16 on CPU is refused"):
        check_precision("fp16", CPU)
    with pytest.raises(PrecisionNotSupportedError, match="onnx"):
        check_precision("int8", CPU, "torch")
    check_precision("fp16", CUDA)
    check_precision("int8", CPU, "onnx")
    assert cpu_flags_have_bf16(["sse2", "avx512_bf16"]) and not cpu_flags_have_bf16(["avx2", "avx512f"])


def test_device_auto_picks_cpu_here_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="retinaserve.engine"):
        choice = pick_device("auto", cuda_available=False)
    assert choice.device == CPU and "picked cpu" in choice.reason and "picked cpu" in caplog.text
    assert pick_device("auto", cuda_available=True).device == CUDA
    with pytest.raises(BackendUnavailableError):
        pick_device("cuda", cuda_available=False)
    engine = resolve_engine(EngineConfig(), cuda_available=False, onnxruntime_installed=True)
    assert (engine.device, engine.backend, engine.precision) == (CPU, "onnx", "fp32")
    gpu = resolve_engine(EngineConfig(), cuda_available=True, onnxruntime_installed=True)
    assert (gpu.backend, gpu.precision) == ("torch", "fp16") and "precision=auto picked fp16" in gpu.reason
    int8 = resolve_engine(EngineConfig(precision="int8"), cuda_available=False)
    fast_int8 = all(importlib.util.find_spec(name) for name in ("openvino", "nncf"))
    assert int8.backend == ("openvino" if fast_int8 else "onnx")
    assert resolve_engine(EngineConfig(precision="int8"), cuda_available=True).backend == "onnx"
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tensorflow'"):
        resolve_engine(EngineConfig(backend="tensorflow"))  # type: ignore[arg-type]
    with pytest.raises(PrecisionNotSupportedError, match="openvino backend runs fp32 or int8 on CPU"):
        resolve_engine(EngineConfig(backend="openvino", precision="fp32", device="cuda"), cuda_available=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_device_auto_on_this_machine_is_cpu() -> None:
    assert resolve_engine(EngineConfig(backend="torch")).device == CPU


def _footprint(model: str, weights: float, fixed: float, per_image: float) -> Footprint:
    return Footprint(model, "torch", "fp16", (640, 640), "cuda:0", weights, fixed, per_image, {})


def test_planner_arithmetic_from_measured_numbers() -> None:
    fixed, per_image = fit_footprint({1: 150.0, 2: 250.0, 4: 450.0})
    assert (fixed, per_image) == pytest.approx((50.0, 100.0))
    fp = _footprint("retinaface-r50", weights=40.0, fixed=fixed, per_image=per_image)
    budget = 1000.0  # 900 usable with 10 % headroom
    assert largest_batch(fp, budget) == 8  # 50 + 8 * 100 = 850 <= 900 < 950
    assert streams_that_fit(fp, budget, batch=2) == 4  # (900 - 40) // (250 - 40) = 860 // 210
    assert largest_batch(fp, 100.0) == 0
    assert parse_bytes("16GiB") == 16 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("1.5g") == 3 << 29
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_planner_falls_back_to_a_lighter_model_when_memory_is_short() -> None:
    heavy = _footprint("retinaface-r50", 100.0, 400.0, 300.0)
    light = _footprint("retinaface-mnet025", 2.0, 20.0, 40.0)
    assert choose_model([light, heavy], 4000.0)[0].model == "retinaface-r50"  # most accurate that fits
    chosen, reason = choose_model([light, heavy], 500.0)
    assert chosen.model == "retinaface-mnet025" and "skipped retinaface-r50" in reason


def _face(x: float, y: float, score: float, size: float = 20.0) -> Face:
    return Face((x, y, x + size, y + size), score, Landmarks(*[(x + 5.0, y + 5.0)] * 5))


def test_matching_and_average_precision() -> None:
    reference = [[_face(0, 0, 0.99), _face(100, 100, 0.99)]]
    assert average_precision(reference, reference) == pytest.approx(1.0)
    shifted = [[_face(100, 100, 0.95), _face(300, 300, 0.9), _face(1, 1, 0.5)]]
    assert sorted(match_faces(reference[0], shifted[0])) == [(0, 2), (1, 0)]
    # ranked: TP (p 1, r .5), FP, TP (p 2/3, r 1): AP = .5 * 1 + .5 * 2/3
    assert average_precision(reference, shifted) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(reference, [[]]) == 0.0


def test_cache_paths_carry_every_input(tmp_path: Path) -> None:
    from retinaserve.engine.onnx_models import Int8Options, onnx_cache_path

    a = onnx_cache_path("m", "ab" * 32, "int8", opset=17, extra=Int8Options().tag(), root=tmp_path)
    b = onnx_cache_path("m", "ab" * 32, "int8", opset=18, extra=Int8Options(per_channel=False).tag(), root=tmp_path)
    assert a != b and a.parent == b.parent and "opset17" in a.name and "pc-minmax" in a.name


def test_exported_files_are_keyed_by_the_architecture_too() -> None:
    """The same checkpoint through a network whose code changed (LeakyReLU -> ReLU) must not reuse the ONNX file
    or the backend profile exported from the old network."""
    from dataclasses import replace

    from retinaserve.engine.factory import EngineConfig, _network
    from retinaserve.registry import get_model_spec

    from ..conftest import WEIGHTS

    edge = get_model_spec("retinaface-mnet025-edge")
    leaky = replace(edge, build=get_model_spec("retinaface-mnet025").build)  # same keys, LeakyReLU 0.1
    weights = WEIGHTS / edge.weights.filename
    config = EngineConfig()
    _, relu_id = _network(edge, config, weights, False)
    _, leaky_id = _network(leaky, config, weights, False)
    assert relu_id[:16] != leaky_id[:16]  # the cache folder name
    assert _network(edge, config, weights, False)[1] == relu_id
