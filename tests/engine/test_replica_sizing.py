"""Replica sizing from the memory planner (``retinaserve.ray.sizing``): the arithmetic on footprints, and one real
measurement; no Ray needed."""

from __future__ import annotations

import pytest

from retinaserve.engine.planner import Footprint
from retinaserve.ray.sizing import CUDA_CONTEXT_MB, measure_replica_footprint, plan_replicas


def footprint(device: str, *, fixed: float = 100.0, per_image: float = 50.0) -> Footprint:
    return Footprint("retinaface-mnv2", "torch", "fp16", (640, 640), device, 10.0, fixed, per_image, {})


def test_a_gpu_replica_asks_for_the_fraction_of_the_card_its_budget_needs() -> None:
    plan = plan_replicas(footprint("cuda:0"), batch=8, capacity_mb=16_000.0)
    need = (100.0 + 50.0 * 8) * 1.1 + CUDA_CONTEXT_MB
    assert plan.memory_mb == pytest.approx(need)
    assert plan.num_gpus == pytest.approx(0.07)  # 1050 / 16000 = 0.0656, rounded up
    assert plan.num_gpus * 16_000 >= need
    assert plan.replicas == 8  # 15 fit; capped
    assert plan.actor_options() == {"num_cpus": 1.0, "num_gpus": pytest.approx(0.07)}
    assert "num_gpus 0.07" in plan.reason
    assert plan_replicas(footprint("cuda"), batch=8, capacity_mb=16_000.0, replicas=3).replicas == 3
    assert plan_replicas(footprint("cuda"), batch=8, capacity_mb=16_000.0, gpus=2).replicas == 16


def test_a_replica_bigger_than_the_card_takes_the_whole_card() -> None:
    plan = plan_replicas(footprint("cuda", per_image=4000.0), batch=8, capacity_mb=16_000.0)
    assert plan.num_gpus == 1.0 and plan.replicas == 1


def test_cpu_replicas_split_the_cores_and_reserve_their_ram() -> None:
    plan = plan_replicas(footprint("cpu"), batch=4, cpus=16, capacity_mb=64_000.0, reserve_cpus=1)
    assert plan.replicas == 3 and plan.num_cpus == 4.0  # 15 usable cores, 4 per replica
    assert plan.actor_options() == {"num_cpus": 4.0, "memory": int(plan.memory_mb * (1 << 20))}
    assert plan.memory_mb == pytest.approx((100 + 50 * 4) * 1.1)
    two = plan_replicas(footprint("cpu"), batch=4, cpus=2, replicas=2, reserve_cpus=0.5)
    assert two.replicas == 2 and two.num_cpus == 0.75  # fewer cores than replicas: they share
    one = plan_replicas(footprint("cpu"), batch=4, cpus=2, replicas=1, reserve_cpus=0.5)
    assert one.num_cpus == 1.0


def test_ram_caps_the_number_of_cpu_replicas() -> None:
    plan = plan_replicas(footprint("cpu", per_image=1000.0), batch=8, cpus=64, capacity_mb=20_000.0)
    assert plan.replicas == 2  # 8.9 GB each, 18 GB usable
    assert "RAM holds 2" in plan.reason


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_mb"):
        plan_replicas(footprint("cuda"), batch=8)
    with pytest.raises(ValueError, match="batch"):
        plan_replicas(footprint("cpu"), batch=0)
    with pytest.raises(ValueError, match="replicas"):
        plan_replicas(footprint("cpu"), batch=1, replicas=0)


def test_a_real_measurement_sizes_a_cpu_replica(shared: object) -> None:
    measured = measure_replica_footprint("ultralight-slim", backend="onnx")
    assert measured.device == "cpu" and measured.per_image_mb > 1.0
    plan = plan_replicas(measured, batch=4, cpus=2, replicas=1, capacity_mb=8_000.0)
    assert plan.memory_mb == pytest.approx(measured.peak_mb(4) * 1.1)
    assert plan.footprint is measured and plan.to_dict()["footprint"]["model"] == "ultralight-slim"
