"""Precisions and devices: which precision runs where, and what ``device="auto"`` picks.

Half precision is for GPUs: weights and activations in FP16 or BF16, decode and NMS stay FP32 in the Detector.
On CPU, FP16 is refused (no fast kernels); BF16 is allowed only on CPUs with native BF16 units (AVX512-BF16 or
AMX), where ``retinaserve bench`` measured it faster than FP32; elsewhere it is refused with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast, get_args

import torch

from .errors import BackendUnavailableError, PrecisionNotSupportedError

__all__ = [
    "PRECISIONS",
    "DeviceChoice",
    "Precision",
    "check_precision",
    "cpu_has_native_bf16",
    "parse_precision",
    "pick_device",
    "torch_dtype",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_precision(text: str) -> Precision:
    """``"fp16"``, ``"FP16"``, ``"half"`` ... -> a :data:`Precision`; anything else raises with the choices."""
    aliases = {"float32": "fp32", "float": "fp32", "half": "fp16", "float16": "fp16", "bfloat16": "bf16"}
    value = aliases.get(text.strip().lower(), text.strip().lower())
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {text!r}; choose one of {', '.join(PRECISIONS)}")
    return cast(Precision, value)


def torch_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of weights and activations for a floating-point precision."""
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise PrecisionNotSupportedError(f"{precision} is not a torch floating-point precision; use the onnx backend")
    return dtypes[precision]


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises BF16 arithmetic (AVX512-BF16 or AMX-BF16); False where it cannot be told."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return cpu_flags_have_bf16(text.split())


def cpu_flags_have_bf16(flags: Iterable[str]) -> bool:
    """Whether a list of /proc/cpuinfo flags includes a native BF16 unit."""
    present = set(flags)
    return any(flag in present for flag in _BF16_CPU_FLAGS)


def check_precision(precision: Precision, device: torch.device, backend: str = "torch") -> None:
    """Raise :class:`PrecisionNotSupportedError` (with what to do instead) for a combination that cannot run well."""
    if backend == "torch" and precision == "int8":
        raise PrecisionNotSupportedError("int8 runs on the onnx backend (static quantisation): use --backend onnx")
    if device.type == "cpu" and precision == "fp16":
        raise PrecisionNotSupportedError(
            "fp16 on CPU is refused: CPUs have no fast FP16 kernels, so it would be slower and less accurate than "
            "fp32; use fp32 (or int8 with the onnx backend) on CPU, or fp16 on a CUDA device"
        )
    if device.type == "cpu" and precision == "bf16":
        if backend != "torch":
            raise PrecisionNotSupportedError("bf16 on CPU runs on the torch backend only")
        if not cpu_has_native_bf16():
            raise PrecisionNotSupportedError(
                "bf16 on CPU is refused: this CPU has no native BF16 units (avx512_bf16 or amx_bf16), where "
                "bf16 is slower than fp32; use fp32 on CPU or bf16 on a CUDA device"
            )


@dataclass(frozen=True)
class DeviceChoice:
    """The device ``auto`` resolved to, and why."""

    device: torch.device
    reason: str


def pick_device(requested: str | torch.device = "auto", *, cuda_available: bool | None = None) -> DeviceChoice:
    """``auto`` -> the first CUDA device when one is present, else CPU; explicit requests are checked, never swapped."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if str(requested) == "auto":
        if has_cuda:
            name = torch.cuda.get_device_name(0) if cuda_available is None else "cuda:0"
            choice = DeviceChoice(torch.device("cuda", 0), f"device=auto picked cuda:0 ({name})")
        else:
            choice = DeviceChoice(torch.device("cpu"), "device=auto picked cpu: no CUDA device is available")
        log.info(choice.reason)
        return choice
    device = torch.device(requested)
    if device.type == "cuda" and not has_cuda:
        raise BackendUnavailableError(
            f"device {str(requested)!r} was requested but CUDA is not available here; use device='cpu' or 'auto'"
        )
    return DeviceChoice(device, f"device {device} as requested")
