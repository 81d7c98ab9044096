"""The hardware floor: how fast a model could possibly run here, from the machine's measured FP32 peak and the
network's FLOPs, so that every backend's time can be read as a multiple of it (``retinaserve bench --vs-floor``).

The peak is a large FP32 matrix product on all the threads torch uses (the best a BLAS gets out of these cores);
the FLOPs are counted by torch's own :class:`~torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, as
papers quote them). A network never reaches the peak (depthwise convolutions are memory-bound), so 1.0x is a bound,
not a target.
"""

from __future__ import annotations

import time
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..registry import get_model_spec

__all__ = ["floor_ms", "fp32_peak_gflops", "network_gflops"]


def fp32_peak_gflops(size: int = 2048, repeats: int = 8, device: torch.device | str = "cpu") -> float:
    """The best FP32 GFLOP/s of ``size`` x ``size`` matrix products over ``repeats`` tries (after a warm-up)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


@cache
def network_gflops(model: str, width: int, height: int) -> float:
    """GFLOPs of one forward pass of a registered detector at ``width`` x ``height`` (random weights: the count
    does not depend on them)."""
    spec = get_model_spec(model)
    torch.manual_seed(0)
    network = spec.build().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def floor_ms(gflops: float, peak_gflops: float) -> float:
    """The fewest milliseconds ``gflops`` of work can take at ``peak_gflops``."""
    return gflops / peak_gflops * 1e3
