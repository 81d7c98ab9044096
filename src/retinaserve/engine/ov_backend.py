"""The OpenVINO backend (CPU): the cached FP32 ONNX model, or an INT8 OpenVINO IR quantised from it by NNCF,
compiled per input shape, inputs and outputs shared with torch tensors, compiled blobs cached on disk so that the
second start is fast.

Inputs and outputs are FP32 at the graph boundary, as for ONNX Runtime, so the Detector's pre- and
post-processing are the same for every backend.

Measured on a 2-core AMD EPYC (AVX2 + FMA, no VNNI), 1x3x640x640 forward, 2 threads, median ms; INT8 parity with
the torch FP32 reference on the parity views of the shared photos, faces at threshold 0.9 (``/tmp/ov_measure.py``)::

    model                     ORT fp32  ORT int8  OV fp32  OV int8   OV int8: AP, faces matched, landmarks mean
    retinaface-mnv2             63.1      53.0     45.2     32.8     0.9993, 270/274, 0.38 px (ORT int8: 0.9998)
    retinaface-mnet025-edge     15.6      12.5     13.7      9.5     0.9941, 129/136, 1.57 px (ORT int8: 0.9904)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from ..detection.backend import Backend, HeadOutputs
from ..registry import AnchorSpec
from ..weights import cache_dir
from .buffers import BufferPool
from .errors import BackendUnavailableError, ExportError, PrecisionNotSupportedError
from .onnx_models import PhotoCalibrationReader
from .ort_backend import OutputShapes, detector_output_shapes

__all__ = [
    "AccuracyCheck",
    "OpenVinoBackend",
    "OpenVinoInt8Options",
    "OpenVinoOptions",
    "OpenVinoVariant",
    "create_openvino_backend",
    "float_layers",
    "openvino_available",
    "openvino_cache_dir",
    "openvino_int8_path",
    "quantize_openvino_int8",
]

log = logging.getLogger(__name__)

OpenVinoVariant = Literal["fp32", "int8"]


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def openvino_cache_dir() -> Path:
    """Where OpenVINO keeps compiled blobs: ``<retinaserve cache>/engine/openvino``."""
    return cache_dir() / "engine" / "openvino"


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the openvino backend needs the openvino package ({exc}); pip install openvino"
        ) from exc
    return openvino


@dataclass(frozen=True)
class OpenVinoOptions:
    """Compile settings; ``None`` threads means OpenVINO's default (one per physical core)."""

    threads: int | None = None
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    max_static_shapes: int = 16
    """Input shapes (N, 3, H, W) that get a model compiled for exactly that shape; any further shapes share one
    dynamic-shape model (a little slower, never recompiled). 0: dynamic shapes only. See :class:`OpenVinoBackend`."""
    max_static_pixels: int = 2_000_000
    """Largest N x H x W that gets a static model: each compiled model keeps the memory of its shape (a 2048x2048
    input holds ~550 MiB), so rare large inputs (a request's det_size) share the one dynamic model instead of each
    keeping their own, and memory stays bounded by the largest input, not by how many large shapes were seen."""
    compile_cache: bool = True
    """Cache compiled blobs on disk (OpenVINO's ``CACHE_DIR``), so that a restart imports instead of compiling."""
    cache_dir: Path | None = None
    """Where the blobs go; ``None``: :func:`openvino_cache_dir`."""


class OpenVinoBackend:
    """An FP32 ONNX or INT8 OpenVINO IR model on the CPU through OpenVINO, outputs written into pooled torch buffers.

    Static shapes first: a model compiled for the exact input shape ran faster than the dynamic-shape model
    (retinaface-mnv2, 2 threads, median ms: 1x640x640 43.5 vs 47.5, 1x480x640 32.4 vs 32.6, 2x640x640 90.3 vs
    96.0); compiling one shape takes ~240 ms (~60 ms from the blob cache on a restart), while the dynamic model
    spends 10-80 ms extra on the first call of each new shape. A service's few bucketed shapes pay it once.

    Thread-safe: one lock serialises the calls (with the LATENCY hint one request already uses every core), and
    outputs go into pooled buffers, so a later :meth:`forward` never overwrites outputs not yet released.
    """

    def __init__(
        self,
        model_path: Path,
        device: torch.device,
        outputs: AnchorSpec | OutputShapes,
        *,
        variant: OpenVinoVariant = "fp32",
        options: OpenVinoOptions | None = None,
    ) -> None:
        if device.type != "cpu":
            raise BackendUnavailableError(
                f"the openvino backend runs on the CPU only, not {device}; use device='cpu' or another backend"
            )
        self._ov = _import_openvino()
        self.options = options or OpenVinoOptions()
        if self.options.max_static_shapes < 0:
            raise ValueError(f"max_static_shapes must be >= 0, got {self.options.max_static_shapes}")
        self.model_path = model_path
        self.variant = variant
        self._device = device
        self._output_shapes = detector_output_shapes(outputs) if isinstance(outputs, AnchorSpec) else outputs
        """Detectors pass their anchors; other networks (mesh regressors) a function giving their output shapes."""
        self._core = self._ov.Core()
        self._model = self._core.read_model(str(model_path))
        self._input_name = self._model.input(0).get_any_name()
        self._config = self._compile_config()
        self._static: dict[tuple[int, ...], Any] = {}
        """Infer request per static input shape."""
        self._dynamic: Any = None
        """The dynamic-shape model's infer request, compiled when first needed."""
        self._lock = threading.Lock()
        self.pool = BufferPool()
        log.info("openvino %s model %s, %s", variant, model_path.name, self._config)

    def _compile_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.options.performance_hint,
            # FP32 where not quantised: on CPUs with BF16 units OpenVINO would otherwise silently run BF16
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if self.options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.options.threads
        if self.options.compile_cache:
            folder = self.options.cache_dir or openvino_cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(folder)
        return config

    @property
    def name(self) -> str:
        return f"openvino-{self.variant} CPU"

    @property
    def device(self) -> torch.device:
        return self._device

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def output_shapes(self, batch_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Shapes of the outputs for an (N, 3, H, W) input."""
        return self._output_shapes(batch_shape)

    def _request(self, shape: tuple[int, ...]) -> Any:
        """The infer request for ``shape``, compiling a model on first use; call with the lock held."""
        request = self._static.get(shape)
        if request is not None:
            return request
        pixels = shape[0] * shape[2] * shape[3]
        if len(self._static) < self.options.max_static_shapes and pixels <= self.options.max_static_pixels:
            model = self._model.clone()
            model.reshape({self._input_name: list(shape)})
            request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
            self._static[shape] = request
            log.debug("openvino compiled %s for %s", self.model_path.name, shape)
            return request
        if self._dynamic is None:
            self._dynamic = self._core.compile_model(self._model, "CPU", self._config).create_infer_request()
            log.debug("openvino compiled %s for dynamic shapes", self.model_path.name)
        return self._dynamic

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        """(N, 3, H, W) FP32 CPU batch (wrapped, not copied) -> outputs in pooled buffers (give them to release)."""
        batch = batch.to(torch.float32).contiguous()
        shape = tuple(batch.shape)
        output_shapes = self.output_shapes(shape)
        outputs = {name: self.pool.acquire(s, torch.float32) for name, s in output_shapes.items()}
        tensor = self._ov.Tensor
        with self._lock:
            request = self._request(shape)
            request.set_tensor(self._input_name, tensor(batch.numpy(), shared_memory=True))
            for name, out in outputs.items():
                request.set_tensor(name, tensor(out.numpy(), shared_memory=True))
            request.infer()
        return tuple(outputs.values())  # type: ignore[return-value]  # (loc, cls, ldm) for detectors

    def release(self, outputs: HeadOutputs) -> None:
        for tensor in outputs:
            self.pool.release(tensor)

    def synchronize(self) -> None:
        pass


@dataclass(frozen=True)
class OpenVinoInt8Options:
    """NNCF post-training INT8 (weights per channel, activations per tensor), calibrated on real photos.

    Chosen by measurement (AP vs torch FP32, parity views of the shared photos; speed differences within noise):
    retinaface-mnet025-edge AP 0.771 with NNCF's defaults, 0.979 with the overflow fix, 0.982 adding the mixed
    preset, 0.994 adding min/max ranges; retinaface-mnv2 0.9991 -> 0.9993. Keeping the first 13 convolutions in
    FP32 (as the ONNX INT8 does) gained less and ran 10-20 % slower.
    """

    preset: Literal["mixed", "performance"] = "mixed"
    """``mixed``: asymmetric activations (LeakyReLU outputs are far from symmetric); ``performance``: symmetric."""
    overflow_fix: Literal["enable", "first_layer", "disable"] = "enable"
    """7-bit weights in every layer: without VNNI, AVX2's int8 multiply-add saturates its int16 sums."""
    activation_ranges: Literal["minmax", "mean_minmax"] = "minmax"
    """``minmax``: min/max over all calibration views; ``mean_minmax`` (NNCF's default) averages per-view ranges
    and clips the rare large activations that faces need."""

    accuracy_control: bool = False
    """Revert the layers that cost most accuracy to FP32, one group at a time, until the held-out metric of an
    :class:`AccuracyCheck` is within ``max_drop`` of the FP32 model's (NNCF ``quantize_with_accuracy_control``).

    Off by default (``benchmarks/int8.py``; calibrated on six_people + grace_hopper, held out crowd_selfie +
    astronaut): retinaface-mnet025-edge reverts 4 of 56 convolutions, 9.6 vs 9.5 ms, held-out AP 0.9860 -> 0.9935,
    landmarks 1.48 -> 0.97 px mean; retinaface-mnv2 already meets the bound (AP 0.9927, 0.54 px), nothing
    reverted. But on photos it did not select on (the calibration photos' own views) the edge model's landmarks
    got worse (2.48 -> 2.89 px mean, AP 0.998 -> 1.000): the choice fits the held-out photos more than it
    generalises, and it costs held-out photos and ~2 minutes of quantisation."""
    max_drop: float = 0.01
    """The largest absolute drop of that metric (for detectors: AP, and a mean landmark pixel counts one point)."""

    def tag(self) -> str:
        control = f"-ac{self.max_drop:g}" if self.accuracy_control else ""
        return f"{self.preset}-of{self.overflow_fix}-{self.activation_ranges}{control}"


class AccuracyCheck(Protocol):
    """What INT8 accuracy control measures: held-out ``items`` (never calibration inputs) and a metric of a backend
    on any of them, higher is better, with the value per item (NNCF ranks layers by those)."""

    @property
    def items(self) -> Sequence[Any]: ...

    def __call__(self, backend: Backend, items: Sequence[Any]) -> tuple[float, list[float]]: ...


class _CompiledModelBackend:
    """A compiled OpenVINO model (what NNCF hands the validation function) seen as a :class:`Backend`."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled

    @property
    def name(self) -> str:
        return "openvino-int8-candidate CPU"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def upload(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def forward(self, batch: torch.Tensor) -> HeadOutputs:
        outputs = self._compiled(batch.to(torch.float32).contiguous().numpy())
        return tuple(torch.from_numpy(np.array(value)) for value in outputs.values())  # type: ignore[return-value]

    def release(self, outputs: HeadOutputs) -> None:
        pass

    def synchronize(self) -> None:
        pass


def openvino_int8_path(fp32_onnx: Path, options: OpenVinoInt8Options, calibration_id: str) -> Path:
    """Where the INT8 IR quantised from ``fp32_onnx`` is cached: beside it, named after everything it depends on
    (``calibration_id``: e.g. a digest of the calibration photos)."""
    return fp32_onnx.with_name(f"{fp32_onnx.stem}.openvino-int8-{options.tag()}-cal{calibration_id}.xml")


def quantize_openvino_int8(
    source: Path,
    target: Path,
    reader: PhotoCalibrationReader,
    options: OpenVinoInt8Options = OpenVinoInt8Options(),
    accuracy: AccuracyCheck | None = None,
) -> Path:
    """NNCF INT8 of an FP32 ONNX model into an OpenVINO IR ``target`` (.xml, and its .bin beside it), calibrated
    by ``reader``'s real inputs; FP32 inputs and outputs. With ``options.accuracy_control``, layers go back to FP32
    until ``accuracy`` (held-out inputs) is within ``options.max_drop`` of the FP32 model. Returns ``target``."""
    if options.accuracy_control and accuracy is None:
        raise PrecisionNotSupportedError(
            "openvino int8 accuracy control needs held-out photos to measure accuracy on (not the calibration "
            "ones): pass EngineConfig(validation_photos=...)"
        )
    ov = _import_openvino()
    try:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedAccuracyRestorerParameters,
            AdvancedQuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as exc:
        raise BackendUnavailableError(f"openvino int8 needs the nncf package ({exc}); pip install nncf") from exc
    reader.rewind()
    samples: list[np.ndarray] = []
    while (sample := reader.get_next()) is not None:
        samples.extend(sample.values())
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    fixes = {"enable": nncf.OverflowFix.ENABLE, "first_layer": nncf.OverflowFix.FIRST_LAYER}
    advanced = AdvancedQuantizationParameters(overflow_fix=fixes.get(options.overflow_fix, nncf.OverflowFix.DISABLE))
    if options.activation_ranges == "minmax":
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(max(level, logging.WARNING))  # NNCF prints every quantiser it places at INFO
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".openvino-int8.") as work:
            model = ov.Core().read_model(str(source))
            common: dict[str, Any] = {
                "preset": presets[options.preset],
                "target_device": nncf.TargetDevice.CPU,
                "subset_size": len(samples),
            }
            if accuracy is not None and options.accuracy_control:
                check = accuracy

                def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
                    return check(_CompiledModelBackend(compiled), list(items))

                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    nncf.Dataset(samples),
                    nncf.Dataset(list(check.items)),
                    validate,
                    max_drop=options.max_drop,
                    drop_type=nncf.DropType.ABSOLUTE,
                    advanced_quantization_parameters=advanced,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(num_ranking_workers=1),
                    **common,
                )
            else:
                quantized = nncf.quantize(model, nncf.Dataset(samples), advanced_parameters=advanced, **common)
            staged = Path(work) / target.name
            ov.save_model(quantized, str(staged), compress_to_fp16=False)
            os.replace(staged.with_suffix(".bin"), target.with_suffix(".bin"))
            os.replace(staged, target)  # the .xml last: its presence means the pair is complete
    except Exception as exc:
        raise ExportError(f"OpenVINO INT8 quantisation of {source} failed: {exc}") from exc
    finally:
        nncf_log.setLevel(level)
    log.info("quantised %s -> %s with %d calibration samples", source, target, len(samples))
    if options.accuracy_control:
        log.info("openvino int8 with accuracy control runs in FP32: %s", ", ".join(float_layers(target)) or "nothing")
    return target


_WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})


def float_layers(model_path: Path) -> list[str]:
    """Names of the convolutions (and matrix products) of an OpenVINO IR whose input is not quantised: the layers
    that run in FP32 (all of them in an FP32 model; those accuracy control reverted in an INT8 one)."""
    ov = _import_openvino()
    names = []
    for op in ov.Core().read_model(str(model_path)).get_ordered_ops():
        if op.get_type_name() in _WEIGHTED_OPS:
            source = op.input_value(0).get_node()
            if source.get_type_name() != "FakeQuantize":
                names.append(op.get_friendly_name())
    return names


def create_openvino_backend(
    onnx_path: Path,
    device: torch.device,
    output_shapes: AnchorSpec | OutputShapes,
    precision: str = "fp32",
    *,
    calibration: Callable[[], PhotoCalibrationReader] | None = None,
    calibration_id: str = "none",
    int8: OpenVinoInt8Options | None = None,
    options: OpenVinoOptions | None = None,
    accuracy: Callable[[], AccuracyCheck] | None = None,
) -> OpenVinoBackend:
    """The OpenVINO backend for the cached FP32 ONNX file of a network (what ``onnx_model_path`` returns).

    ``int8`` quantises it once with NNCF (cached by :func:`openvino_int8_path`; ``calibration_id`` must name the
    held-out inputs too where accuracy control uses them); ``calibration`` builds the reader of real inputs and
    ``accuracy`` the held-out check, both only called when the INT8 model is not cached yet.
    """
    if precision == "fp32":
        return OpenVinoBackend(onnx_path, device, output_shapes, variant="fp32", options=options)
    if precision != "int8":
        raise PrecisionNotSupportedError(f"the openvino backend runs fp32 or int8, not {precision}")
    if device.type != "cpu":
        raise BackendUnavailableError(f"the openvino backend runs on the CPU only, not {device}")
    int8 = int8 or OpenVinoInt8Options()
    path = openvino_int8_path(onnx_path, int8, calibration_id)
    if not path.is_file():
        if calibration is None:
            raise PrecisionNotSupportedError(
                "openvino int8 needs real photos to calibrate activation ranges: pass calibration photos "
                "(EngineConfig(calibration_photos=...) or --calibration DIR)"
            )
        check = accuracy() if accuracy is not None and int8.accuracy_control else None
        quantize_openvino_int8(onnx_path, path, calibration(), int8, check)
    return OpenVinoBackend(path, device, output_shapes, variant="int8", options=options)
