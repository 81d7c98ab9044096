"""3D reconstruction behind the service: the Reconstructor's stages spread over the service's batchers.

Faces are detected through the detection service's batcher (so reconstruct and detect requests share detector
calls), their crops go through a second batcher in front of the mesh network (faces of concurrent requests in one
call), and textures are baked and exported in a small thread pool. An admission queue bounds how many
reconstructions run at once by their estimated memory (:func:`estimate_job_mb`), so load makes requests wait or
get 429, never makes the server run out of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..detection.results import Face
from ..memory import trim_heap
from ..reconstruction import FaceMesh, Reconstructor, SkippedFace
from ..reconstruction.export import glb_bytes, obj_zip_bytes
from .batching import Batcher, BatchStats, QueueFullError
from .inference import DetectionService, DetectOptions
from .jobs import Admission, JobState
from .settings import TEXTURE_SIZES, ServeSettings
from .uploads import decode_upload

__all__ = ["ReconstructOptions", "ReconstructionOutcome", "ReconstructionService", "estimate_job_mb"]

log = logging.getLogger(__name__)

Report = Callable[[JobState, int, int], None]
"""``(state, done, total)``: a stage starts (done 0) or items of it finish; called on the event loop."""

_BASE_MB = 170.0
_MB_PER_MEGAPIXEL = 5.0
_MB_PER_FACE_AT_512 = 2.0


def estimate_job_mb(pixels: int, faces: int, texture_size: int) -> float:
    """Peak memory one reconstruction adds to the server, in MiB, from the image's pixel count, the most faces it
    may reconstruct and the texture size: an upper bound of what ``benchmarks/serve_reconstruct.py memory``
    measured per job with 4 running at once on the 2-core CI machine (110-190 MiB for 0.3-18 Mpx photos with 1-16
    faces). Most of it is the detector's activations for the job's image in a batched detector call, so the
    base term dominates; decoded pixels and per-face textures add little."""
    per_face = _MB_PER_FACE_AT_512 * (texture_size / 512) ** 2
    return _BASE_MB + _MB_PER_MEGAPIXEL * pixels / 1e6 + per_face * faces


@dataclass(frozen=True)
class ReconstructOptions:
    max_faces: int
    texture_size: int


@dataclass
class ReconstructionOutcome:
    """One image's meshes and what is derived from them (GLB bytes once exported), with per-stage timings."""

    model: str
    width: int
    height: int
    meshes: list[FaceMesh]
    skipped: list[SkippedFace]
    timings_ms: dict[str, float] = field(default_factory=dict)
    glb: list[bytes] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Memory the outcome holds (textures, masks, vertices, exported files)."""
        arrays = sum(m.texture.nbytes + m.texture_mask.nbytes + m.vertices.nbytes for m in self.meshes)
        return arrays + sum(len(g) for g in self.glb) + 4096

    def mesh(self, index: int) -> FaceMesh:
        """Face ``index``; ValueError naming the valid range (or that there is no face) otherwise."""
        if not self.meshes:
            why = f" ({len(self.skipped)} detected but too small)" if self.skipped else ""
            raise LookupError(f"no face was reconstructed in this image{why}")
        if not 0 <= index < len(self.meshes):
            raise ValueError(f"face must be in [0, {len(self.meshes) - 1}], got {index}")
        return self.meshes[index]

    def glb_bytes(self, index: int) -> bytes:
        mesh = self.mesh(index)
        return self.glb[index] if index < len(self.glb) else glb_bytes(mesh.to_trimesh())

    def obj_zip_bytes(self, index: int) -> bytes:
        return obj_zip_bytes(self.mesh(index).to_trimesh(), stem=f"face{index}")

    def texture_png(self, index: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.mesh(index).texture).save(buffer, format="PNG", compress_level=3)
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        faces = []
        for index, mesh in enumerate(self.meshes):
            faces.append(
                {"index": index, **mesh.to_dict(), "texture_coverage": round(float(mesh.texture_mask.mean()), 4)}
            )
        return {
            "model": self.model,
            "image": {"width": self.width, "height": self.height},
            "faces": faces,
            "skipped": [{"box": list(s.face.box), "score": s.face.score, "reason": s.reason} for s in self.skipped],
            "timings_ms": dict(self.timings_ms),
        }


@dataclass(frozen=True)
class _Crop:
    input: np.ndarray
    record: Any


class ReconstructionService:
    """The served 3D model: its mesh-network batcher, texture workers and admission queue."""

    def __init__(
        self,
        settings: ServeSettings,
        detection: DetectionService,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.detection = detection
        self.on_stage = on_stage
        self._reconstructor: Reconstructor | None = None
        self.ready = False
        self.admission = Admission(
            budget_mb=settings.job_memory_mb,
            max_running=settings.max_running_jobs,
            max_outstanding=settings.max_jobs,
            on_idle=self._trim,
        )
        self._last_trim = 0.0
        self.batcher: Batcher[_Crop, tuple[np.ndarray, dict]] = Batcher(
            self._geometry,
            max_batch_size=16,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_jobs * settings.max_reconstruct_faces,
            on_batch=on_batch,
            name="mesh-batcher",
        )
        self._workers = ThreadPoolExecutor(max_workers=settings.max_running_jobs, thread_name_prefix="texture")

    @property
    def reconstructor(self) -> Reconstructor:
        if self._reconstructor is None:
            raise RuntimeError("the reconstruction service is not started")
        return self._reconstructor

    @property
    def model_name(self) -> str:
        return self.reconstructor.name

    def _trim(self) -> None:
        """When the last reconstruction ends, hand the memory the burst freed back to the OS (at most every 2 s):
        without this the process stays at its peak after a load spike (997 vs 772 MiB measured 10 s after one)."""
        now = time.monotonic()
        if now - self._last_trim > 2.0:
            self._last_trim = now
            with contextlib.suppress(RuntimeError):  # the pool is already shut down: nothing left to trim for
                asyncio.get_running_loop().run_in_executor(self._workers, trim_heap)

    def _geometry(self, crops: list[_Crop]) -> list[tuple[np.ndarray, dict]]:
        return self.reconstructor.infer_geometry([(c.input, c.record) for c in crops])

    def _build(self) -> Reconstructor:
        settings = self.settings
        return Reconstructor(
            settings.reconstruction_model,
            detector=self.detection.detector,  # the served detector: detection goes through its batcher anyway
            weights=settings.reconstruction_weights,
            device=settings.device,
            texture_size=min(512, settings.max_texture_size),
            batch_size=self.batcher.max_batch_size,
        )

    def warm_up(self) -> None:
        """One mesh-network call and the default texture size's UV raster, so the first request pays neither."""
        reconstructor = self.reconstructor
        size = reconstructor.spec.crop.size
        reconstructor.backend.forward(reconstructor.backend.upload(torch.zeros((1, 3, size, size))))
        reconstructor.raster(reconstructor.texture_size)

    async def start(self) -> None:
        """Start the mesh batcher and build the Reconstructor (its network) on the batcher's thread."""
        await self.batcher.start()
        self._reconstructor = await self.batcher.run_in_worker(self._build)
        if self.settings.warmup:
            await self.batcher.run_in_worker(self.warm_up)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self._workers.shutdown(wait=True, cancel_futures=True)

    def options(self, max_faces: int | None, texture_size: int | None) -> ReconstructOptions:
        """Per-request options within the server's limits (ValueError with the limit otherwise)."""
        settings = self.settings
        faces = settings.max_reconstruct_faces if max_faces is None else max_faces
        if not 1 <= faces <= settings.max_reconstruct_faces:
            raise ValueError(f"max_faces must be in [1, {settings.max_reconstruct_faces}], got {faces}")
        size = self.reconstructor.texture_size if texture_size is None else texture_size
        sizes = [s for s in TEXTURE_SIZES if s <= settings.max_texture_size]
        if size not in sizes:
            raise ValueError(f"texture_size must be one of {', '.join(map(str, sizes))}, got {size}")
        return ReconstructOptions(faces, size)

    def admit(self, pixels: int, options: ReconstructOptions) -> Any:
        """A ticket in the admission queue sized by the job's memory estimate; QueueFullError when full."""
        return self.admission.ticket(estimate_job_mb(pixels, options.max_faces, options.texture_size))

    async def run(
        self, data: bytes, options: ReconstructOptions, report: Report, *, export: bool = True
    ) -> ReconstructionOutcome:
        """Image bytes (already probed) -> meshes, reporting each stage; the caller holds an admission ticket."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = round((now - since) * 1e3, 3)
            if self.on_stage is not None:
                self.on_stage(stage, now - since)
            return now

        report(JobState.DETECTING, 0, 1)
        image = await run_in_threadpool(decode_upload, data, max_pixels=self.settings.max_pixels)
        t = lap("decode", start)
        with await self._reserve_pixels(image.shape[0] * image.shape[1]):
            detection = await self.detection.detect(image, DetectOptions())
            reconstructor = self.reconstructor
            faces, skipped = reconstructor.select_faces(detection.result.faces[: options.max_faces])
            t = lap("detect", t)

            report(JobState.GEOMETRY, 0, len(faces))
            crops = await run_in_threadpool(_crops, reconstructor, image, faces)
            t = lap("crop", t)
            timeout = self.settings.job_timeout_s
            futures = [asyncio.ensure_future(self.batcher.submit(crop, timeout_s=timeout)) for crop in crops]
            del crops
            try:
                for done, _ in enumerate(asyncio.as_completed(futures), start=1):
                    await _
                    report(JobState.GEOMETRY, done, len(faces))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            geometry = [future.result() for future in futures]
            t = lap("geometry", t)

            report(JobState.TEXTURE, 0, len(faces))
            meshes: list[FaceMesh] = []
            for (vertices, extras), face in zip(geometry, faces):
                bake = partial(
                    reconstructor.build_mesh, image, face, vertices, extras, texture_size=options.texture_size
                )
                meshes.append(await loop.run_in_executor(self._workers, bake))
                report(JobState.TEXTURE, len(meshes), len(faces))
            del image
            t = lap("texture", t)

        outcome = ReconstructionOutcome(
            reconstructor.name, detection.result.width, detection.result.height, meshes, skipped, timings
        )
        if export:
            report(JobState.EXPORTING, 0, len(meshes))
            for index, mesh in enumerate(meshes):
                outcome.glb.append(await loop.run_in_executor(self._workers, _glb, mesh))
                report(JobState.EXPORTING, index + 1, len(meshes))
            lap("export", t)
        timings["total"] = round((time.perf_counter() - start) * 1e3, 3)
        return outcome

    async def _reserve_pixels(self, pixels: int) -> Any:
        """A share of the detection service's in-flight pixel budget, waiting (not failing) while it is spent:
        an admitted job should finish, not bounce off detect traffic."""
        deadline = time.monotonic() + self.settings.job_timeout_s
        while True:
            try:
                return self.detection.reserve(pixels)
            except QueueFullError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


def _crops(reconstructor: Reconstructor, image: np.ndarray, faces: list[Face]) -> list[_Crop]:
    return [_Crop(*reconstructor.crop(image, face)) for face in faces]


def _glb(mesh: FaceMesh) -> bytes:
    return glb_bytes(mesh.to_trimesh())
