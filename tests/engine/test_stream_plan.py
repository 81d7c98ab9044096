"""The video stream plan: real-time arithmetic and the min(compute, memory) rule from hand-made numbers, the cost
measured on a real detector, and ``retinaserve plan --streams``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from retinaserve.detection import Detector, ResizePolicy
from retinaserve.detection.backend import Backend, HeadOutputs
from retinaserve.engine.planner import (
    Footprint,
    StreamCost,
    measure_stream_cost,
    network_input_size,
    plan_streams,
    sample_frame,
    stream_footprint,
    stream_verdict,
    streams_in_real_time,
)

SLIM = "ultralight-slim"


def _cost(ms: dict[int, float], peaks: dict[int, float] | None = None, model: str = SLIM) -> StreamCost:
    return StreamCost(model, "fake", "cpu", (1280, 720), (640, 360), ms, peaks or {})


def test_streams_in_real_time_arithmetic() -> None:
    cost = _cost({1: 10.0, 2: 8.0, 4: 7.5})
    assert (cost.best_batch, cost.best_ms) == (4, 7.5)
    # 900 ms of every second at 25 fps: batch 1 -> 900 / 250 = 3.6, batch 2 -> 4.5, batch 4 -> 4.8
    assert streams_in_real_time(cost, 25.0) == 4
    assert streams_in_real_time(cost, 25.0, headroom=0.0) == 5  # 1000 / 187.5 = 5.33
    # + 2 ms decode: 3.0, 3.6 and 3.79, and 3 streams never fill a batch of 4
    assert streams_in_real_time(cost, 25.0, decode_ms_per_frame=2.0) == 3
    assert streams_in_real_time(_cost({1: 4.0}), 25.0) == 9  # exactly 900 / 100, not 8.999...
    assert streams_in_real_time(_cost({1: 50.0}), 25.0) == 0
    assert streams_in_real_time(_cost({1: 50.0, 4: 10.0}), 25.0) == 0  # batch 4 would hold 3: cannot fill it
    with pytest.raises(ValueError):
        streams_in_real_time(cost, 0.0)


def test_a_plan_row_is_the_smaller_of_compute_and_memory() -> None:
    cost = _cost({1: 10.0, 2: 8.0, 4: 7.5}, peaks={1: 40.0, 2: 60.0, 4: 100.0})
    footprint = stream_footprint(cost, 10.0, backend="torch", precision="fp32")
    assert (footprint.weights_mb, footprint.fixed_mb, footprint.per_image_mb) == pytest.approx((10.0, 30.0, 20.0))
    # a stream of batch b costs 20 + 20 b MiB beyond the weights; 200 MiB -> 180 usable - 10 weights = 170
    roomy = plan_streams(cost, footprint, 25.0, 200.0, wanted=4)
    assert (roomy.batch, roomy.streams_compute, roomy.streams_memory, roomy.streams) == (2, 4, 4, 4)
    assert roomy.limited_by == "compute" and roomy.fits is True and roomy.ms_per_frame == 8.0
    assert roomy.mib_per_stream == pytest.approx(30.0)  # (50 + 40 - 10) / 2
    # 100 MiB -> 80 usable: batch 1 holds 2 (80 // 40), batch 2 one batch of 2, batch 4 none
    short = plan_streams(cost, footprint, 25.0, 100.0, wanted=3)
    assert (short.batch, short.streams_compute, short.streams_memory, short.streams) == (1, 3, 2, 2)
    assert short.limited_by == "memory" and short.fits is False and short.mib_per_stream == pytest.approx(40.0)
    assert plan_streams(cost, footprint, 25.0, 100.0).fits is None
    row = short.to_dict()
    assert row["fits"] is False and row["streams"] == 2 and row["weights"] == "real"


def test_the_verdict_names_the_fastest_and_the_most_accurate_that_hold_the_streams() -> None:
    footprint = Footprint(SLIM, "onnx", "fp32", (640, 360), "cpu", 5.0, 10.0, 1.0, {})
    slim = plan_streams(_cost({1: 10.0}, model=SLIM), footprint, 25.0, 1000.0, wanted=3)
    edge = plan_streams(_cost({1: 20.0}, model="retinaface-mnet025-edge"), footprint, 25.0, 1000.0, wanted=3)
    slow = plan_streams(_cost({1: 500.0}, model="retinaface-mnv2"), footprint, 25.0, 1000.0, wanted=3)
    verdict = stream_verdict([slim, edge, slow], 1)
    assert "fastest ultralight-slim onnx/fp32 (3 streams" in verdict
    assert "most accurate that holds them retinaface-mnet025-edge" in verdict  # mnv2 holds none
    assert stream_verdict([slim, edge, slow], 4).startswith("no model holds 4 streams of 1280x720 at 25 fps")


class _SleepingBackend:
    """A real backend that also sleeps ``ms`` per image of each batch: a known cost per frame."""

    def __init__(self, inner: Backend, ms: float) -> None:
        self.inner, self.ms = inner, ms
        self.name, self.device = f"sleeping {inner.name}", inner.device

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner.upload(pixels)

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        time.sleep(self.ms * batch.shape[0] / 1e3)
        return self.inner.forward(batch)

    def release(self, outputs: HeadOutputs) -> None:
        self.inner.release(outputs)

    def synchronize(self) -> None:
        self.inner.synchronize()


def test_stream_cost_on_a_real_detector(detector_factory) -> None:
    detector = detector_factory(SLIM, backend="torch", batch_size=4)
    cost = measure_stream_cost(detector, (640, 360), repeats=1)
    assert set(cost.ms_per_frame) == {1, 2, 4} and all(ms > 0 for ms in cost.ms_per_frame.values())
    assert cost.best_ms == min(cost.ms_per_frame.values()) and all(mb >= 0 for mb in cost.peak_mb.values())
    assert (cost.model, cost.frame, cost.input, cost.device) == (SLIM, (640, 360), (640, 360), "cpu")


@pytest.mark.parametrize(("model", "frame_size"), [(SLIM, (500, 333)), ("retinaface-mnv2", (1280, 720))])
def test_stream_cost_reports_the_input_the_detector_runs(detector_factory, model, frame_size) -> None:
    """The model's own resize (long side 640), padded as it needs (retinaface-mnv2: multiples of 32)."""
    detector = detector_factory(model, backend="torch")
    cost = measure_stream_cost(detector, frame_size, batches=(1,), repeats=1, warmup=0)
    reported = detector.run([sample_frame(frame_size)])[0]
    assert cost.input == reported.input_size == network_input_size(detector, frame_size)
    assert cost.input == {SLIM: (640, 426), "retinaface-mnv2": (640, 384)}[model]


def test_stream_cost_is_per_frame_and_keeps_to_its_time_budget(detector_factory) -> None:
    """At 40 ms of sleep per image a per-batch figure would be >= 80 ms at batch 2; the network itself runs a
    160x90 input in a millisecond or two."""
    real = detector_factory(SLIM, backend="torch")
    slow = Detector(
        SLIM, backend=_SleepingBackend(real.backend, 40.0), resize=ResizePolicy(long_side=160), batch_size=4
    )
    cost = measure_stream_cost(slow, (320, 180), repeats=2)
    assert cost.input == (160, 90)
    assert all(40.0 <= ms < 80.0 for ms in cost.ms_per_frame.values()), cost.ms_per_frame
    hurried = measure_stream_cost(slow, (320, 180), time_budget_s=0.0)
    assert set(hurried.ms_per_frame) == {1}
    single = measure_stream_cost(detector_factory(SLIM, backend="torch", batch_size=1), (320, 180), repeats=1)
    assert set(single.ms_per_frame) == {1}  # the detector would split larger batches


def test_models_without_their_weights_are_planned_with_random_ones(shared) -> None:
    """``retinaface-mnet025``'s file name in ../shared holds the edge model's checkpoint, which does not verify."""
    from retinaserve.engine.planner import plan_video_streams

    (row,) = plan_video_streams(
        ["retinaface-mnet025"], [("torch", "fp32")], (320, 180), 25.0, 4096.0, device="cpu", batches=(1,), wanted=1
    )
    assert (row.weights, row.backend, row.batch, row.input) == ("random", "torch", 1, (640, 360))
    assert row.streams == min(row.streams_compute, row.streams_memory) and set(row.ms_per_frame_by_batch) == {1}


def test_decode_cost_is_measured_with_pyav() -> None:
    pytest.importorskip("av")
    from retinaserve.engine.planner import measure_decode_ms

    assert 0.0 < measure_decode_ms((320, 180), frames=8, passes=1) < 1000.0


def test_plan_streams_command(engine_cache, tmp_path: Path, capsys) -> None:
    from retinaserve.cli import main

    out = tmp_path / "plan.json"
    args = ["plan", "--streams", "2", "--fps", "25", "--size", "640x360", "--models", SLIM, "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "640x360 frames at 25 fps" in printed and "2 fit?" in printed and "\nverdict: " in printed
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert rows and {r["model"] for r in rows} == {SLIM} and document["streams"] == 2
    assert {(r["backend"], r["precision"]) for r in rows} >= {("torch", "fp32"), ("onnx", "fp32")}
    for row in rows:
        assert row["weights"] == "real" and row["input"] == [640, 360] and row["frame"] == [640, 360]
        assert row["streams"] == min(row["streams_compute"], row["streams_memory"])
        assert row["fits"] == (row["streams"] >= 2) and row["ms_per_frame"] > 0 and row["mib_per_stream"] >= 0
        assert row["ms_per_frame"] == row["ms_per_frame_by_batch"][str(row["batch"])]
        assert f"{SLIM}  {row['backend']}" in printed
    assert document["verdict"] in printed
