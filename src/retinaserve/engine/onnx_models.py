"""ONNX models of registered detectors: export with dynamic batch and spatial axes, verification against torch,
an FP16 conversion and INT8 static quantisation calibrated on real photos; all cached by what they depend on.

Cache layout: ``<cache>/engine/<model>/<weights sha256[:16]>/<variant>-opset<N>-<exporter>[-<options>].onnx``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..weights import cache_dir
from .errors import BackendUnavailableError, ExportError

__all__ = [
    "DETECTOR_SIGNATURE",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "Exporter",
    "Int8Options",
    "OnnxSignature",
    "OnnxVariant",
    "PhotoCalibrationReader",
    "calibration_samples",
    "convert_fp16",
    "crop_network_signature",
    "export_onnx",
    "file_digest",
    "leading_nodes",
    "onnx_cache_path",
    "quantize_int8",
    "verify_onnx",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("loc", "cls", "ldm")
Exporter = Literal["torchscript", "dynamo"]
OnnxVariant = Literal["fp32", "fp16", "int8"]
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class OnnxSignature:
    """A network's ONNX interface: output names, which axes are dynamic, and the inputs it is verified on."""

    output_names: tuple[str, ...]
    output_axes: tuple[dict[int, str], ...]
    """Per output, its dynamic axes (index -> name)."""
    sample_size: tuple[int, int]
    """(W, H) of the export sample."""
    dynamic_spatial: bool
    """Whether H and W are dynamic (detectors) or fixed at ``sample_size`` (mesh networks on square crops)."""
    verify_shapes: tuple[tuple[int, int, int, int], ...]
    input_spread: float
    """Standard deviation of the random verification inputs, the spread of real normalised pixels."""


DETECTOR_SIGNATURE = OnnxSignature(
    output_names=OUTPUT_NAMES,
    output_axes=({0: "batch", 1: "anchors"},) * 3,
    sample_size=(640, 640),
    dynamic_spatial=True,
    verify_shapes=((1, 3, 640, 640), (2, 3, 480, 640)),
    input_spread=60.0,
)


def crop_network_signature(outputs: tuple[str, ...], size: int, spread: float = 1.0) -> OnnxSignature:
    """The signature of a network on fixed ``size`` x ``size`` crops with ``outputs`` (batch axis dynamic)."""
    return OnnxSignature(
        output_names=outputs,
        output_axes=({0: "batch"},) * len(outputs),
        sample_size=(size, size),
        dynamic_spatial=False,
        verify_shapes=((1, 3, size, size), (3, 3, size, size)),
        input_spread=spread,
    )


@dataclass(frozen=True)
class Int8Options:
    """Static INT8 quantisation: QDQ format, weights per channel or per tensor, activation range calibration."""

    per_channel: bool = True
    """Per-channel weights: per-tensor loses most faces of MobileNet-0.25 (its depthwise filters' ranges differ
    by orders of magnitude once batch norm is folded); measured on the shared photos."""
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: tuple[int, int] = (640, 640)
    """(W, H) the calibration photos are letterboxed into."""
    float_convs: int = 13
    """Keep the first N convolutions (graph order) and the nodes up to the next one in FP32: the thin early layers
    are where INT8 loses faces. 13 is MobileNet-0.25's stage 1 and first stage-2 block: AP 0.80 -> 0.998 on the
    shared photos' parity views, and still the fastest variant measured."""

    def tag(self) -> str:
        size = f"{self.calibration_size[0]}x{self.calibration_size[1]}"
        return f"{'pc' if self.per_channel else 'pt'}-{self.method}-{size}-f{self.float_convs}"


def onnx_cache_path(
    model: str,
    weights_id: str,
    variant: OnnxVariant,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "torchscript",
    extra: str = "",
    root: Path | None = None,
) -> Path:
    """Where an exported or converted model is cached; every input that changes the file is in the path."""
    name = f"{variant}-opset{opset}-{exporter}{'-' + extra if extra else ''}.onnx"
    return (root or cache_dir() / "engine") / model / weights_id[:16] / name


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the onnx backend needs the onnx and onnxruntime packages ({exc}); pip install 'retinaserve[onnx]'"
        ) from exc


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    return Path(tmp)


def export_onnx(
    network: nn.Module,
    path: Path,
    *,
    signature: OnnxSignature = DETECTOR_SIGNATURE,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "torchscript",
) -> Path:
    """Export ``network`` (FP32, CPU) to ``path`` with a dynamic batch (and height and width where the signature
    says so); returns ``path``."""
    _require_onnx()
    import onnx

    network = network.float().cpu().eval()
    output_names = list(signature.output_names)
    sample = torch.zeros(1, 3, signature.sample_size[1], signature.sample_size[0])
    tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            if exporter == "torchscript":
                input_axes = {0: "batch", 2: "height", 3: "width"} if signature.dynamic_spatial else {0: "batch"}
                axes = {INPUT_NAME: input_axes}
                axes |= dict(zip(output_names, signature.output_axes))
                torch.onnx.export(
                    network,
                    (sample,),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            else:
                batch = torch.export.Dim("batch", min=1, max=256)
                rows, cols = torch.export.Dim("rows", min=1, max=256), torch.export.Dim("cols", min=1, max=256)
                shapes = {0: batch, 2: 32 * rows, 3: 32 * cols} if signature.dynamic_spatial else {0: batch}
                program = torch.onnx.export(
                    network,
                    (sample,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    dynamic_shapes={"x": shapes},
                )
                assert program is not None
                program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
        tmp.replace(path)
    except Exception as exc:
        raise ExportError(f"ONNX export ({exporter}, opset {opset}) to {path} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s", path)
    return path


def verify_onnx(
    network: nn.Module,
    path: Path,
    shapes: Sequence[tuple[int, int, int, int]] | None = None,
    *,
    signature: OnnxSignature = DETECTOR_SIGNATURE,
    atol: float = 1e-3,
) -> float:
    """Max abs difference of raw outputs between torch and ONNX Runtime (CPU) over ``shapes`` (default: the
    signature's); raises above ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    network = network.float().cpu().eval()
    names = list(signature.output_names)
    for shape in shapes or signature.verify_shapes:
        x = torch.randn(*shape, generator=generator) * signature.input_spread
        with torch.inference_mode():
            raw = network(x)
            expected = [t.numpy() for t in (raw if isinstance(raw, tuple) else (raw,))]
        actual = session.run(names, {INPUT_NAME: x.numpy()})
        for name, ref, got in zip(names, expected, actual):
            if ref.shape != got.shape:
                raise ExportError(f"{path}: output {name} has shape {got.shape} for input {shape}, torch {ref.shape}")
            worst = max(worst, float(np.abs(ref - got).max()))
    if worst > atol:
        raise ExportError(f"{path} differs from torch by {worst:.2e} (max abs, raw outputs) > {atol:.0e}")
    return worst


def convert_fp16(source: Path, target: Path) -> Path:
    """An FP16 copy of an FP32 ONNX model, keeping FP32 inputs and outputs (the casts run inside the graph)."""
    _require_onnx()
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    tmp = _atomic_target(target)
    try:
        onnx.save(model, str(tmp))
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


Preprocess = Callable[[np.ndarray], np.ndarray]
"""(H, W, 3) uint8 RGB -> (3, H_in, W_in) float32 normalised network input."""


def calibration_samples(photos: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Calibration views from few photos: five 70 % crops (corners and centre) of each photo and their mirrors.

    Whole photos are left to the parity check (:mod:`retinaserve.engine.parity`), so the two never share a view.
    """
    for photo in photos:
        height, width = photo.shape[:2]
        crop_h, crop_w = int(height * 0.7), int(width * 0.7)
        corners = [(0, 0), (0, width - crop_w), (height - crop_h, 0), (height - crop_h, width - crop_w)]
        corners.append(((height - crop_h) // 2, (width - crop_w) // 2))
        for top, left in corners:
            crop = photo[top : top + crop_h, left : left + crop_w]
            yield np.ascontiguousarray(crop)
            yield np.ascontiguousarray(crop[:, ::-1])


class PhotoCalibrationReader:
    """Feeds ONNX Runtime's calibrator one pre-processed real photo (or view of one) at a time."""

    def __init__(self, photos: Sequence[np.ndarray], preprocess: Preprocess) -> None:
        self._samples = [preprocess(view)[None] for view in calibration_samples(photos)]
        self._next = iter(self._samples)

    @classmethod
    def from_inputs(cls, inputs: Sequence[np.ndarray]) -> PhotoCalibrationReader:
        """A reader over ready network inputs (3, H, W) float32, e.g. face crops for a mesh network."""
        reader = cls([], lambda view: view)
        reader._samples = [np.ascontiguousarray(x, dtype=np.float32)[None] for x in inputs]
        reader._next = iter(reader._samples)
        return reader

    def __len__(self) -> int:
        return len(self._samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._next, None)
        return None if sample is None else {INPUT_NAME: sample}

    def rewind(self) -> None:
        self._next = iter(self._samples)


def quantize_int8(
    source: Path,
    target: Path,
    reader: PhotoCalibrationReader,
    options: Int8Options = Int8Options(),
) -> Path:
    """Static INT8 quantisation (QDQ, int8 weights, uint8 activations) of an FP32 model, calibrated by ``reader``."""
    _require_onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }

    class _Adapter(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

    reader.rewind()
    tmp = _atomic_target(target)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            import onnx

            excluded = leading_nodes(onnx.load(str(prepared)), options.float_convs)
            quantize_static(
                str(prepared),
                str(tmp),
                _Adapter(),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[options.method],
                nodes_to_exclude=excluded,
            )
            tmp.replace(target)
        except Exception as exc:
            raise ExportError(f"INT8 quantisation of {source} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    log.info("quantised %s -> %s with %d calibration samples", source, target, len(reader))
    return target


def leading_nodes(model: Any, convolutions: int) -> list[str]:
    """Names of the nodes (graph order) up to the ``convolutions``-th Conv and the non-Conv nodes right after it."""
    names: list[str] = []
    seen = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            if seen == convolutions:
                break
            seen += 1
        if seen == 0 and convolutions == 0:
            break
        names.append(node.name)
    return names


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the contents of several files (e.g. the calibration photos), for cache keys."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.read_bytes())
    return digest.hexdigest()
