"""``auto`` by measurement: the fastest exact (FP32) backend and the batch size that pays, per model and machine.

Which runtime is fastest depends on the CPU (on the 2-core EPYC here OpenVINO beats ONNX Runtime by 1.4x and eager
torch by 5x for MobileNet-class detectors; elsewhere the order differs), so ``auto`` does not guess: the first time a
model is built on a machine, every installed exact backend runs the model's default input a few times, interleaved,
the fastest wins, and batch sizes are tried on the winner. The answer is cached as a JSON profile keyed by the
machine (CPU model, cores, flags, library versions), so later starts read it in milliseconds and log it.

>>> backend, profile = fastest_backend(get_model_spec("retinaface-mnv2"))        # doctest: +SKIP
>>> profile.reason                                                                 # doctest: +SKIP
'openvino/fp32 46.1 ms < onnx/fp32 66.0 ms < torch/fp32 151.3 ms at 640x640; batch 1: larger batches do not pay'
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..detection.backend import Backend
from ..registry import ModelSpec
from ..weights import cache_dir

__all__ = [
    "BATCH_GAIN",
    "EXACT_CANDIDATES",
    "EngineProfile",
    "default_input_size",
    "installed_candidates",
    "machine_fingerprint",
    "measure_profile",
    "profile_path",
    "read_profile",
    "write_profile",
]

log = logging.getLogger(__name__)

EXACT_CANDIDATES: tuple[tuple[str, str], ...] = (("openvino", "fp32"), ("onnx", "fp32"), ("torch", "fp32"))
"""Backends that compute the FP32 network (results within float rounding of the reference), in the order tried."""
_MODULES = {"openvino": "openvino", "onnx": "onnxruntime", "torch": "torch"}
BATCH_GAIN = 0.9
"""A larger batch is chosen only when it costs at most this fraction of batch 1's time per image."""
SLOW_FACTOR = 3.0
"""A backend this many times slower than the best after warm-up is timed no further (its one time is kept)."""
PROFILE_VERSION = 1


@dataclass(frozen=True)
class EngineProfile:
    """What ``auto`` measured for one model on one machine, what it picked and why."""

    model: str
    device: str
    input_size: tuple[int, int]
    """(W, H) of the input the backends were timed on."""
    backend: str
    precision: str
    max_batch: int
    forward_ms: dict[str, float]
    """Median ms of one batch-1 forward pass per ``backend/precision``."""
    batch_ms: dict[int, float]
    """The winner's median ms per image at each batch size tried."""
    machine: str
    skipped: dict[str, str] = field(default_factory=dict)
    """Installed backends that could not run the model, with the reason (not tried again until re-measured)."""
    measured_at: float = field(default_factory=time.time)
    source: str = "measured"
    """``measured`` (now) or the profile file it was read from."""

    @property
    def variant(self) -> str:
        return f"{self.backend}/{self.precision}"

    def covers(self, candidates: Sequence[str]) -> bool:
        """Whether this profile tried exactly ``candidates`` (a runtime installed since, or removed, means the
        answer may be different: measure again)."""
        return set(self.forward_ms) | set(self.skipped) == set(candidates) and self.variant in self.forward_ms

    @property
    def reason(self) -> str:
        """One line saying what was picked and why, for the log and ``/v1/models``."""
        ranked = sorted(self.forward_ms.items(), key=lambda item: item[1])
        order = " < ".join(f"{name} {ms:.1f} ms" for name, ms in ranked)
        width, height = self.input_size
        if self.max_batch == 1:
            batching = "larger batches do not pay" if len(self.batch_ms) > 1 else "batching not measured"
        else:
            gain = self.batch_ms[1] / self.batch_ms[self.max_batch]
            batching = f"{gain:.2f}x images/s over batch 1"
        where = "measured now" if self.source == "measured" else f"profile {self.source}"
        return f"{order} at {width}x{height}; batch {self.max_batch}: {batching} ({where})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_ms"] = {str(b): ms for b, ms in self.batch_ms.items()}
        data["version"] = PROFILE_VERSION
        data.pop("source")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> EngineProfile:
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')} is not {PROFILE_VERSION}")
        return cls(
            model=str(data["model"]),
            device=str(data["device"]),
            input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
            backend=str(data["backend"]),
            precision=str(data["precision"]),
            max_batch=int(data["max_batch"]),
            forward_ms={str(k): float(v) for k, v in data["forward_ms"].items()},
            batch_ms={int(k): float(v) for k, v in data["batch_ms"].items()},
            machine=str(data["machine"]),
            skipped={str(k): str(v) for k, v in data.get("skipped", {}).items()},
            measured_at=float(data["measured_at"]),
            source=source,
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of ``/proc/cpuinfo`` (``model name``, ``flags``), or "" where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_fingerprint(device: torch.device | str = "cpu") -> str:
    """What the timings depend on, in one line: CPU (or GPU) model, usable cores, CPU flags, runtime versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    flags = hashlib.sha256(_cpuinfo("flags").encode()).hexdigest()[:8]
    versions = ",".join(f"{name}={_version(name)}" for name in ("torch", "onnxruntime", "openvino"))
    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{cpu} x{cores} threads={torch.get_num_threads()} flags={flags} gpu={gpu} {versions}"


def profile_path(model: str, weights_id: str, device: torch.device, size: tuple[int, int], machine: str) -> Path:
    """Where the profile of this model, weights, device, input size and machine is cached."""
    key = hashlib.sha256(f"{model}|{weights_id}|{device}|{size}|{machine}".encode()).hexdigest()[:16]
    return cache_dir() / "profiles" / f"{model}-{device.type}-{size[0]}x{size[1]}-{key}.json"


def installed_candidates(device: torch.device, candidates: Sequence[tuple[str, str]] = EXACT_CANDIDATES) -> list[str]:
    """``backend/precision`` names among ``candidates`` whose runtime is installed and can run on ``device``."""
    found = []
    for backend, precision in candidates:
        if importlib.util.find_spec(_MODULES[backend]) is None:
            continue
        if backend == "openvino" and device.type != "cpu":
            continue  # its GPU plugin is for Intel GPUs
        found.append(f"{backend}/{precision}")
    return found


def default_input_size(spec: ModelSpec) -> tuple[int, int]:
    """(W, H) the model usually sees: a square of its default long side (640 where it runs at original size)."""
    side = spec.default_long_side or 640
    multiple = spec.input.pad_multiple
    side = -(-side // multiple) * multiple
    return side, side


def _time_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def measure_profile(
    spec: ModelSpec,
    backends: dict[str, Backend],
    *,
    device: torch.device,
    size: tuple[int, int],
    machine: str,
    batch_sizes: Sequence[int] = (1, 2, 4),
    rounds: int = 5,
    batch_repeats: int = 3,
) -> EngineProfile:
    """Time every backend's batch-1 forward pass, interleaved over ``rounds`` (medians), then the winner's time per
    image at each batch size; the smallest batch within :data:`BATCH_GAIN` of the best wins."""
    width, height = size
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(1, 3, height, width, generator=generator).to(device)

    def call(backend: Backend, batch: torch.Tensor) -> None:
        outputs = backend.forward(batch)
        backend.synchronize()
        backend.release(outputs)

    samples: dict[str, list[float]] = {}
    for name, backend in backends.items():  # warm-up: first calls allocate, compile kernels, fill caches
        call(backend, one)
        samples[name] = [_time_ms(lambda backend=backend: call(backend, one))]  # type: ignore[misc]
    best_warm = min(values[0] for values in samples.values())
    racing = {n: b for n, b in backends.items() if samples[n][0] <= SLOW_FACTOR * best_warm}
    for _ in range(rounds):  # interleaved; a backend already far behind after warm-up sits the rounds out
        for name, backend in racing.items():
            samples[name].append(_time_ms(lambda backend=backend: call(backend, one)))  # type: ignore[misc]
    forward_ms = {name: statistics.median(values) for name, values in samples.items()}
    winner = min(forward_ms, key=forward_ms.__getitem__)
    chosen = backends[winner]
    batches = {b: one.expand(b, -1, -1, -1).contiguous() for b in sorted({1, *batch_sizes})}
    for batch in batches.values():
        call(chosen, batch)
    per_image: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(batch_repeats):  # interleaved, batch 1 included, so that load during the sweep hits all alike
        for b, batch in batches.items():
            per_image[b].append(_time_ms(lambda batch=batch: call(chosen, batch)) / b)  # type: ignore[misc]
    batch_ms = {b: statistics.median(values) for b, values in per_image.items()}
    max_batch = 1
    for batch_size in sorted(batch_ms):
        if batch_ms[batch_size] <= BATCH_GAIN * batch_ms[max_batch]:
            max_batch = batch_size
    backend_name, precision = winner.split("/")
    return EngineProfile(
        model=spec.name,
        device=str(device),
        input_size=size,
        backend=backend_name,
        precision=precision,
        max_batch=max_batch,
        forward_ms=forward_ms,
        batch_ms=batch_ms,
        machine=machine,
    )


def read_profile(path: Path) -> EngineProfile | None:
    """The cached profile at ``path``, or None when absent or unreadable (then it is measured again)."""
    try:
        return EngineProfile.from_json(json.loads(path.read_text()), source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("ignoring the engine profile %s (%s); measuring again", path, exc)
        return None


def write_profile(path: Path, profile: EngineProfile) -> None:
    """Write atomically, so that two processes measuring at once never leave half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=1))
    tmp.replace(path)
