"""What the Detector needs from whatever runs the network: a device, an upload, and a forward pass.

The Detector owns resizing, normalisation, anchors, decoding and NMS (always FP32); a backend only moves pixels
to its device and maps a normalised FP32 batch to raw head outputs. :class:`NetworkBackend` is the plain FP32
torch default; :mod:`retinaserve.engine` adds half precision, compiled graphs, pinned copies and ONNX Runtime.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Backend", "HeadOutputs", "NetworkBackend"]

HeadOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(loc (N, A, 4), class logits (N, A, 2), landmarks (N, A, 10)); any float dtype, cast to FP32 afterwards."""


@runtime_checkable
class Backend(Protocol):
    """Runs one network: ``upload`` host pixels to ``device``, ``forward`` a batch, ``release`` its outputs."""

    @property
    def name(self) -> str:
        """Short description such as ``torch-fp32 cpu`` or ``onnxruntime-int8 CPUExecutionProvider``."""
        ...

    @property
    def device(self) -> torch.device:
        """Where inputs are pre-processed and outputs are post-processed."""
        ...

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 host pixels -> the same pixels on :attr:`device`."""
        ...

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        """(N, 3, H, W) normalised FP32 input on :attr:`device` -> raw head outputs on :attr:`device`."""
        ...

    def release(self, outputs: HeadOutputs) -> None:
        """The caller is done with ``outputs``: their buffers may be reused by a later :meth:`forward`."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU), so that stage timings are honest."""
        ...


class NetworkBackend:
    """The default: the network in FP32 on one torch device, plain copies, no compilation."""

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network = network.to(device).eval()
        self._device = device

    @property
    def name(self) -> str:
        return f"torch-fp32 {self._device}"

    @property
    def device(self) -> torch.device:
        return self._device

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self._device)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        return self.network(batch)  # type: ignore[no-any-return]  # (loc, cls, ldm) for detectors

    def release(self, outputs: HeadOutputs) -> None:
        pass

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
