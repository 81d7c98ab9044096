"""How big one model replica (a Serve replica, a Ray Data actor) is, from the memory planner's measurement, and how
many fit: on a GPU ``num_gpus`` is the fraction of the card that one replica's measured budget needs, so several
replicas share a card safely; on CPU it is the cores each replica gets, and ``memory`` (bytes) keeps Ray from
packing more replicas on a node than its RAM holds.

One replica's budget is the planner's fitted peak at its batch (weights, the batch's inputs and activations, the
runtime's workspace), plus ``headroom``; on CUDA each replica is its own process and so also pays a CUDA context,
which the allocator's peak does not see (:data:`CUDA_CONTEXT_MB`). Nothing here needs Ray: the numbers are the same
whether a Serve deployment, a Ray Data actor pool or the README's table uses them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..engine.planner import Footprint

__all__ = [
    "CUDA_CONTEXT_MB",
    "DEFAULT_CORES_PER_REPLICA",
    "GPU_CARDS",
    "MAX_REPLICAS_PER_GPU",
    "MeasuredReplica",
    "ReplicaPlan",
    "measure_replica",
    "measure_replica_footprint",
    "plan_replicas",
]

CUDA_CONTEXT_MB = 500.0
"""Device memory a process pays for its CUDA context and cuDNN/cuBLAS handles before any tensor (300-600 MiB on
recent drivers and cards); the allocator's peak, which the planner measures, does not include it."""
DEFAULT_CORES_PER_REPLICA = 4
"""CPU replicas' default size when the number of replicas is left to the plan: the CPU backends scale well to about
four threads on one batch; beyond that, more replicas use the cores better than wider ones."""
MAX_REPLICAS_PER_GPU = 8
"""More replicas than this on one card only queue for its compute (each also pays a CUDA context)."""
GPU_CARDS: dict[str, float] = {
    "T4 16 GB": 15_360.0,
    "L4 24 GB": 22_528.0,
    "A10G 24 GB": 22_528.0,
    "A100 40 GB": 40_448.0,
    "A100 80 GB": 81_050.0,
    "H100 80 GB": 81_050.0,
}
"""Usable memory (MiB, as ``nvidia-smi`` reports the total) of the cards the README's sizing table plans for."""


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica's resources and how many replicas the plan runs, with the measurement it came from."""

    model: str
    backend: str
    precision: str
    device: str
    """``cpu`` or ``cuda``."""
    batch: int
    """Images per model call the replica is sized for."""
    replicas: int
    num_cpus: float
    num_gpus: float
    memory_mb: float
    """One replica's budget: the planner's peak at ``batch`` with headroom (and a CUDA context on a GPU)."""
    capacity_mb: float
    """What the budget is taken from: one card's memory on a GPU, the node's RAM on CPU."""
    reason: str
    footprint: Footprint | None = None

    def actor_options(self) -> dict[str, Any]:
        """``ray_actor_options`` / ``map_batches`` resources for one replica. On a GPU, host RAM is not reserved:
        the planner measured the device, not the host."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus > 0:
            options["num_gpus"] = self.num_gpus
        else:
            options["memory"] = int(self.memory_mb * (1 << 20))
        return options

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["footprint"] = self.footprint.to_dict() if self.footprint is not None else None
        return data


def measure_replica_footprint(
    model: str,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    input_size: tuple[int, int] = (640, 640),
    batches: tuple[int, ...] = (1, 2, 4),
) -> Footprint:
    """The planner's measurement of one replica's memory (random weights: memory does not depend on their values,
    and no weights file is needed to size a deployment)."""
    from ..engine.factory import EngineConfig
    from ..engine.planner import measure_footprint

    config = EngineConfig(backend=backend, precision=precision, device=device, random_weights=True)  # type: ignore[arg-type]
    return measure_footprint(model, config, input_size, batches)


@dataclass(frozen=True)
class MeasuredReplica:
    """What a replica will run (``auto`` resolved) and its measured footprint."""

    backend: str
    batch: int | None
    """The batch size that paid when ``auto`` measured the backends here; None when no measurement said."""
    footprint: Footprint
    card_mb: float | None
    """The GPU's memory (MiB) on CUDA; None on CPU."""


def _measure_here(
    model: str, backend: str, precision: str, device: str, weights: Path | None, download: bool
) -> MeasuredReplica:
    batch = None
    if backend == "auto":
        from ..engine.factory import EngineConfig, fastest_backend, resolve_engine
        from ..registry import get_model_spec

        config = EngineConfig(backend="auto", precision=precision, device=device)  # type: ignore[arg-type]
        if resolve_engine(config).precision == "fp32":  # what the Detector's auto picks: measured, cached here
            _, profile = fastest_backend(get_model_spec(model), config, weights=weights, download=download)
            backend, batch = profile.backend, profile.max_batch
        else:
            backend = resolve_engine(config).backend
    footprint = measure_replica_footprint(model, backend=backend, precision=precision, device=device)
    card_mb = None
    if device.startswith("cuda"):
        import torch

        card = torch.device(device if ":" in device else "cuda:0")
        card_mb = torch.cuda.get_device_properties(card).total_memory / float(1 << 20)
    return MeasuredReplica(backend, batch, footprint, card_mb)


def measure_replica(
    model: str,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    weights: Path | None = None,
    download: bool = False,
) -> MeasuredReplica:
    """One replica of ``model`` measured where it will run: ``auto`` resolved as the Detector resolves it (so the
    footprint is that of the backend the replicas run, and the replicas find the measurement cached), then the
    planner's footprint. A CUDA replica asked for on a machine without a GPU is measured in a Ray task on a GPU of
    the connected cluster."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            import ray

            if not ray.is_initialized():
                raise ValueError(
                    f"device {device}: no GPU here to measure a replica on; run on a GPU node, or join a Ray "
                    "cluster with GPUs first"
                )
            task = ray.remote(num_gpus=1)(_measure_here)
            measured: MeasuredReplica = ray.get(task.remote(model, backend, precision, "cuda", weights, download))
            return measured
    return _measure_here(model, backend, precision, device, weights, download)


def _round_up(value: float, step: float) -> float:
    return math.ceil(value / step - 1e-9) * step


def plan_replicas(
    footprint: Footprint,
    *,
    batch: int,
    replicas: int | None = None,
    cpus: float | None = None,
    gpus: float = 0.0,
    capacity_mb: float | None = None,
    reserve_cpus: float = 0.0,
    headroom: float = 0.1,
    cores_per_replica: int | None = None,
) -> ReplicaPlan:
    """Resources for one replica of ``footprint`` at ``batch`` and the number of replicas (``replicas``, or as many
    as fit when None).

    GPU (``footprint.device`` is cuda): ``num_gpus`` = (peak at batch x (1 + headroom) + a CUDA context) / the
    card's ``capacity_mb``, rounded up to 0.01; without ``replicas``, as many per card as that allows (at most
    :data:`MAX_REPLICAS_PER_GPU`) times ``gpus``. CPU: the ``cpus`` less ``reserve_cpus`` (for the HTTP ingress or
    the readers) split among the replicas, whole cores where there are enough; ``memory`` is the peak with headroom,
    and the number of replicas is also capped by what ``capacity_mb`` of RAM holds.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if replicas is not None and replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    need_mb = footprint.peak_mb(batch) * (1.0 + headroom)
    where = f"{footprint.model} {footprint.backend}/{footprint.precision} at batch {batch}"
    if footprint.device.startswith("cuda"):
        if capacity_mb is None or capacity_mb <= 0:
            raise ValueError("a GPU plan needs the card's memory (capacity_mb)")
        need_mb += CUDA_CONTEXT_MB
        fraction = min(1.0, max(0.01, _round_up(need_mb / capacity_mb, 0.01)))
        per_card = max(1, min(MAX_REPLICAS_PER_GPU, math.floor(1.0 / fraction + 1e-9)))
        count = replicas if replicas is not None else max(1, int(per_card * max(gpus, 1.0)))
        reason = (
            f"{where} needs {need_mb:.0f} MiB (peak {footprint.peak_mb(batch):.0f} + {headroom:.0%} + CUDA context "
            f"{CUDA_CONTEXT_MB:.0f}) of a {capacity_mb:.0f} MiB card: num_gpus {fraction:.2f}, {per_card} per card"
        )
        return ReplicaPlan(
            footprint.model,
            footprint.backend,
            footprint.precision,
            "cuda",
            batch,
            count,
            1.0,
            fraction,
            need_mb,
            capacity_mb,
            reason,
            footprint,
        )
    total = float(cpus if cpus is not None else (os.cpu_count() or 1))
    usable = max(1.0, total - reserve_cpus)
    if replicas is None:
        per = float(min(usable, cores_per_replica or DEFAULT_CORES_PER_REPLICA))
        count = max(1, math.floor(usable / per))
    else:
        count = replicas
        per = math.floor(usable / count) if usable >= count else usable / count  # fractions share cores
        per = float(per)
    memory_note = ""
    if capacity_mb is not None and capacity_mb > 0:
        fits = max(1, math.floor(capacity_mb * (1.0 - headroom) / need_mb))
        if replicas is None and fits < count:
            memory_note = f"; RAM holds {fits}"
            count = fits
    reason = (
        f"{where} needs {need_mb:.0f} MiB of RAM (peak {footprint.peak_mb(batch):.0f} + {headroom:.0%}); "
        f"{usable:g} of {total:g} CPUs for replicas: {count} x {per:g} CPUs{memory_note}"
    )
    return ReplicaPlan(
        footprint.model,
        footprint.backend,
        footprint.precision,
        "cpu",
        batch,
        count,
        round(per, 3),
        0.0,
        need_mb,
        float(capacity_mb or 0.0),
        reason,
        footprint,
    )
