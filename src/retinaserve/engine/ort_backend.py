"""The ONNX Runtime backend: TensorRT, then CUDA, then CPU execution providers, IO binding into pooled buffers.

Inputs and outputs stay FP32 at the graph boundary (FP16 and INT8 models cast inside), so the Detector's
pre- and post-processing are the same for every model variant.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..detection.backend import HeadOutputs
from ..registry import AnchorSpec
from .buffers import BufferPool, PinnedUploader
from .errors import BackendUnavailableError
from .onnx_models import INPUT_NAME, OUTPUT_NAMES, OnnxVariant

__all__ = [
    "PROVIDER_PREFERENCE",
    "OnnxRuntimeBackend",
    "OrtOptions",
    "OutputShapes",
    "anchor_count",
    "detector_output_shapes",
    "select_providers",
]

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = PROVIDER_PREFERENCE[:2]
_OUTPUT_WIDTHS = {"loc": 4, "cls": 2, "ldm": 10}


def select_providers(available: Sequence[str], device: torch.device) -> list[str]:
    """Execution providers to use, best first: TensorRT, CUDA, then CPU on a GPU device; CPU alone on a CPU device.

    A CUDA device with neither GPU provider installed raises instead of silently running on CPU.
    """
    if device.type == "cpu":
        if "CPUExecutionProvider" not in available:
            raise BackendUnavailableError(f"onnxruntime has no CPUExecutionProvider (available: {list(available)})")
        return ["CPUExecutionProvider"]
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    if not any(p in chosen for p in _GPU_PROVIDERS):
        raise BackendUnavailableError(
            f"device {device} was requested but onnxruntime offers only {list(available)}; install onnxruntime-gpu "
            "(with CUDA and optionally TensorRT) or use device='cpu'"
        )
    return chosen


def anchor_count(anchors: AnchorSpec, height: int, width: int) -> int:
    """Number of anchors the heads predict for an input of ``height`` x ``width``."""
    return sum(
        math.ceil(height / step) * math.ceil(width / step) * len(sizes)
        for sizes, step in zip(anchors.min_sizes, anchors.steps)
    )


OutputShapes = Callable[[Sequence[int]], dict[str, tuple[int, ...]]]
"""(N, 3, H, W) input shape -> the shape of every output, by output name, in the graph's output order."""


def detector_output_shapes(anchors: AnchorSpec) -> OutputShapes:
    """A detector's outputs: loc (N, A, 4), cls (N, A, 2), ldm (N, A, 10) for A anchors of the input size."""

    def shapes(batch_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        n, _, h, w = batch_shape
        count = anchor_count(anchors, h, w)
        return {name: (n, count, _OUTPUT_WIDTHS[name]) for name in OUTPUT_NAMES}

    return shapes


@dataclass(frozen=True)
class OrtOptions:
    """Session settings; ``None`` thread counts mean ONNX Runtime's default (one per physical core)."""

    intra_op_threads: int | None = None
    graph_optimization: str = "all"
    """``disable``, ``basic``, ``extended`` or ``all``."""
    trt_fp16: bool = False
    """Let TensorRT build FP16 engines (set for the fp16 variant)."""
    trt_profile_shapes: tuple[tuple[int, int, int, int], ...] = ()
    """(min batch, max batch, H, W) per bucket for TensorRT optimisation profiles; empty: built on demand."""
    trt_cache_dir: Path | None = None
    extra_session_config: dict[str, str] = field(default_factory=dict)


def _provider_options(provider: str, device: torch.device, options: OrtOptions) -> dict[str, Any]:
    index = device.index or 0
    if provider == "TensorrtExecutionProvider":
        opts: dict[str, Any] = {"device_id": index, "trt_fp16_enable": options.trt_fp16}
        if options.trt_cache_dir is not None:
            options.trt_cache_dir.mkdir(parents=True, exist_ok=True)
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(options.trt_cache_dir)}
        if options.trt_profile_shapes:
            lo = ",".join(f"{INPUT_NAME}:{b0}x3x{h}x{w}" for b0, _, h, w in options.trt_profile_shapes)
            hi = ",".join(f"{INPUT_NAME}:{b1}x3x{h}x{w}" for _, b1, h, w in options.trt_profile_shapes)
            opts |= {"trt_profile_min_shapes": lo, "trt_profile_opt_shapes": hi, "trt_profile_max_shapes": hi}
        return opts
    if provider == "CUDAExecutionProvider":
        return {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    return {}


class OnnxRuntimeBackend:
    """An ONNX model (fp32, fp16 or int8 variant) in an ONNX Runtime session, bound to pooled torch buffers."""

    def __init__(
        self,
        model_path: Path,
        device: torch.device,
        outputs: AnchorSpec | OutputShapes,
        *,
        variant: OnnxVariant = "fp32",
        options: OrtOptions | None = None,
        available_providers: Sequence[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from exc
        self.options = options or OrtOptions()
        self.variant = variant
        self.model_path = model_path
        self._device = device
        self._output_shapes = detector_output_shapes(outputs) if isinstance(outputs, AnchorSpec) else outputs
        """Detectors pass their anchors; other networks (mesh regressors) a function giving their output shapes."""
        available = list(ort.get_available_providers() if available_providers is None else available_providers)
        self.providers = select_providers(available, device)
        session_options = ort.SessionOptions()
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        session_options.graph_optimization_level = levels[self.options.graph_optimization]
        if self.options.intra_op_threads is not None:
            session_options.intra_op_num_threads = self.options.intra_op_threads
        config = dict(self.options.extra_session_config)
        if device.type == "cpu":
            # ORT's workers spin after each run by default and then starve torch's pre- and post-processing on the
            # same cores: measured on 2 cores at 640x640, the whole call went from 27.5 to 19.6 ms (fp32) and from
            # 23.8 to 16.5 ms (int8) with spinning off.
            config.setdefault("session.intra_op.allow_spinning", "0")
        for key, value in config.items():
            session_options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            str(model_path),
            session_options,
            providers=[(p, _provider_options(p, device, self.options)) for p in self.providers],
        )
        self.active_providers = self.session.get_providers()
        if device.type == "cuda" and not any(p in self.active_providers for p in _GPU_PROVIDERS):
            raise BackendUnavailableError(f"onnxruntime could not start a GPU provider: active {self.active_providers}")
        self.pool = BufferPool()
        self.uploader = PinnedUploader(device, BufferPool())
        log.info("onnxruntime %s session for %s on %s", variant, model_path.name, self.active_providers)

    @property
    def name(self) -> str:
        return f"onnx-{self.variant} {self.active_providers[0]}"

    @property
    def device(self) -> torch.device:
        return self._device

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.uploader.upload(pixels)

    def output_shapes(self, batch_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Shapes of the outputs for an (N, 3, H, W) input."""
        return self._output_shapes(batch_shape)

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        """Bind the FP32 batch and pooled FP32 outputs on the device, run, and hand the outputs over."""
        batch = batch.to(torch.float32).contiguous()
        device_type = "cuda" if self._device.type == "cuda" else "cpu"
        index = self._device.index or 0
        if device_type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()  # ORT runs on its own stream
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, device_type, index, np.float32, list(batch.shape), batch.data_ptr())
        outputs = []
        for name, shape in self.output_shapes(batch.shape).items():
            out = self.pool.acquire(shape, torch.float32, self._device)
            binding.bind_output(name, device_type, index, np.float32, list(shape), out.data_ptr())
            outputs.append(out)
        self.session.run_with_iobinding(binding)
        return tuple(outputs)  # type: ignore[return-value]  # (loc, cls, ldm) for detectors

    def release(self, outputs: HeadOutputs) -> None:
        for tensor in outputs:
            self.pool.release(tensor)

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
