"""The torch backend: FP32 anywhere, FP16/BF16 on CUDA (BF16 on CPUs with BF16 units), channels_last, folded
batch norm, and optionally ``torch.compile`` or CUDA graphs captured per input shape.

Only the network runs in reduced precision: the Detector receives the raw outputs and decodes them in FP32, and
thresholds apply to FP32 softmax scores, so they mean the same at every precision.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..detection.backend import HeadOutputs
from .buffers import BufferPool, PinnedUploader
from .precision import Precision, check_precision, torch_dtype

__all__ = ["Compile", "TorchBackend", "TorchOptions", "fold_batch_norms"]

log = logging.getLogger(__name__)

Compile = Literal["none", "compile", "cuda-graphs"]


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs the network (keyword defaults are the fast choice on every device)."""

    precision: Precision = "fp32"
    channels_last: bool = True
    """NHWC activations: the layout oneDNN and cuDNN convolutions are fastest in (about 2x on CPU here)."""
    fold_batch_norm: bool = True
    """Fold each eval-mode BatchNorm into the convolution before it (exact up to rounding)."""
    compile: Compile = "none"
    """``compile``: torch.compile (inductor); ``cuda-graphs``: capture one graph per input shape (CUDA only)."""


def fold_batch_norms(module: nn.Module) -> int:
    """Fold ``Conv2d`` -> ``BatchNorm2d`` pairs inside every ``nn.Sequential`` in place; returns how many."""
    folded = 0
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        names = list(child._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = child._modules[first], child._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                child._modules[first] = fuse_conv_bn_eval(conv, bn)
                child._modules[second] = nn.Identity()
                folded += 1
    for child in module.modules():  # blocks with named conv/bn attributes (ResNet bottlenecks)
        for index in (1, 2, 3):
            conv_attr, bn_attr = getattr(child, f"conv{index}", None), getattr(child, f"bn{index}", None)
            if isinstance(conv_attr, nn.Conv2d) and isinstance(bn_attr, nn.BatchNorm2d) and not bn_attr.training:
                setattr(child, f"conv{index}", fuse_conv_bn_eval(conv_attr, bn_attr))
                setattr(child, f"bn{index}", nn.Identity())
                folded += 1
    return folded


class _GraphCache:
    """One captured CUDA graph per input shape, with its static input and outputs."""

    def __init__(self, network: nn.Module, pool: BufferPool) -> None:
        self.network = network
        self.pool = pool
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, HeadOutputs]] = {}

    def run(self, x: torch.Tensor) -> HeadOutputs:
        key = (*tuple(x.shape), int(x.is_contiguous(memory_format=torch.channels_last)))
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return tuple(o.clone() for o in static_out)  # type: ignore[return-value]  # overwritten by the next replay

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, HeadOutputs]:
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: cuDNN picks its algorithms here
                self.network(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.network(static_in)
        log.info("captured a CUDA graph for input %s", tuple(x.shape))
        return graph, static_in, outputs


class TorchBackend:
    """A network in torch at one precision on one device; see :class:`TorchOptions`."""

    def __init__(self, network: nn.Module, device: torch.device, options: TorchOptions | None = None) -> None:
        self.options = options or TorchOptions()
        check_precision(self.options.precision, device, "torch")
        if self.options.compile == "cuda-graphs" and device.type != "cuda":
            raise ValueError("cuda-graphs needs a CUDA device; use compile='compile' or 'none' on CPU")
        self._device = device
        self.dtype = torch_dtype(self.options.precision)
        network = copy.deepcopy(network).eval()
        if self.options.fold_batch_norm:
            log.debug("folded %d batch norms", fold_batch_norms(network))
        network = network.to(device=device, dtype=self.dtype)
        if self.options.channels_last:
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = network
        self.pool = BufferPool()
        self.uploader = PinnedUploader(device, BufferPool())
        self._lock = threading.Lock()
        self._run: Callable[[torch.Tensor], HeadOutputs] = network
        if self.options.compile == "compile":
            self._run = torch.compile(network, dynamic=False)  # type: ignore[assignment]
        elif self.options.compile == "cuda-graphs":
            self._run = _GraphCache(network, self.pool).run

    @property
    def name(self) -> str:
        extras = [
            s
            for s, on in (("channels_last", self.options.channels_last), ("folded-bn", self.options.fold_batch_norm))
            if on
        ]
        if self.options.compile != "none":
            extras.append(self.options.compile)
        return f"torch-{self.options.precision} {self._device} ({', '.join(extras) or 'plain'})"

    @property
    def device(self) -> torch.device:
        return self._device

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.uploader.upload(pixels)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        """(N, 3, H, W) FP32 -> raw outputs at the backend's precision, via a pooled input in the kernels' layout."""
        n, c, h, w = batch.shape
        if self.options.channels_last:
            buffer = self.pool.acquire((n, h, w, c), self.dtype, self._device)
            x = buffer.permute(0, 3, 1, 2)  # an NCHW view with NHWC memory: channels_last
        else:
            buffer = self.pool.acquire((n, c, h, w), self.dtype, self._device)
            x = buffer
        x.copy_(batch)  # cast and re-layout in one pass
        try:
            if self.options.compile == "cuda-graphs":
                with self._lock:
                    return self._run(x)
            return self._run(x)
        finally:
            self.pool.release(buffer)  # later work on the same stream is ordered after this forward

    def release(self, outputs: HeadOutputs) -> None:
        pass

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
