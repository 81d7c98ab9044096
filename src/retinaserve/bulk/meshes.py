"""``retinaserve batch --reconstruct``: the 3D meshes of the faces a batch row holds, built by a Reconstructor that
shares the row's Detector (so a mesh is made from exactly the face in ``faces``), in this process and in each Ray
actor alike.

Each image's row gains ``meshes``: one ``FaceMesh.to_dict()`` per reconstructed face, what ``retinaserve reconstruct
--json`` writes for it (``files`` only with a mesh folder). Faces under the Reconstructor's minimum size are in
``faces`` but have no mesh, as ``reconstruct --json`` leaves them out; ``timings_ms`` gains ``reconstruct``. The
images must be decoded at full size (``--decode exact``): the crops and textures need every pixel, and detecting on
those same pixels is what ``reconstruct`` does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RetinaServeError
from ..registry import DEFAULT_RECONSTRUCTION_MODEL, get_reconstruction_spec
from .results import Row, error_row
from .runner import one_line

if TYPE_CHECKING:
    from ..detection import Detector
    from ..detection.results import ImageResult
    from ..reconstruction.reconstructor import Reconstructor

__all__ = ["MESH_FAILURES", "MeshOptions", "MeshStage", "mesh_file_stems", "mesh_model_mb"]

log = logging.getLogger(__name__)

MESH_FAILURES = (RetinaServeError, ValueError, RuntimeError, OSError)
"""What reconstructing (or writing the GLB of) one image may raise: it becomes that image's error row."""


@dataclass(frozen=True)
class MeshOptions:
    """The 3D model a bulk run adds meshes with, built the same way in this process and in each Ray actor."""

    model: str = DEFAULT_RECONSTRUCTION_MODEL
    mesh_dir: Path | None = None
    """Where each face's GLB goes (absolute; on a multi-node cluster a folder every node sees); None: no files."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Image path -> the stem its files are named by, for the paths whose stem another image of the run shares."""
    download: bool | None = None
    """None: the default model provisions itself, as ``reconstruct`` does."""

    def build(self, detector: Detector, device: str) -> MeshStage:
        from ..reconstruction.reconstructor import Reconstructor

        reconstructor = Reconstructor(self.model, detector=detector, device=device, download=self.download)
        return MeshStage(self, reconstructor)


def mesh_file_stems(paths: Sequence[str]) -> dict[str, str]:
    """Image path -> file stem, for the paths whose stem (case-insensitively) another of ``paths`` shares:
    ``<stem>-<8 hex digits of the path's SHA-1>``, so that ``a/img.jpg`` and ``b/img.png`` never write the same
    ``img_face0.glb``. The same paths give the same names, so a resumed run names files as the first did."""
    seen: dict[str, int] = {}
    for path in paths:
        stem = Path(path).stem.casefold()
        seen[stem] = seen.get(stem, 0) + 1
    return {
        path: f"{Path(path).stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        for path in paths
        if seen[Path(path).stem.casefold()] > 1
    }


def mesh_model_mb(model: str, *, download: bool | None = None) -> float:
    """The 3D model's weights and mesh data on disk, in MiB (resolved, and provisioned when allowed, here): what a
    replica's footprint grows by, roughly (a rough figure: these models are a few MiB beside the detector)."""
    from ..weights import resolve_data_files, resolve_weights

    spec = get_reconstruction_spec(model)
    allowed = spec.name == DEFAULT_RECONSTRUCTION_MODEL if download is None else download
    files = [resolve_weights(spec, download=allowed).path, *resolve_data_files(spec, download=allowed).values()]
    return sum(path.stat().st_size for path in files) / float(1 << 20)


class MeshStage:
    """Adds ``meshes`` to rows: one Reconstructor call over the faces of a batch (the mesh network batches them),
    retried image by image when it fails, so one bad image never sinks the others."""

    def __init__(self, options: MeshOptions, reconstructor: Reconstructor) -> None:
        self.options = options
        self.reconstructor = reconstructor

    def add(self, rows: list[Row], images: dict[int, tuple[np.ndarray, ImageResult]]) -> list[Row]:
        """``rows`` with ``meshes`` and ``timings_ms["reconstruct"]`` set; ``images``: row index -> the (H, W, 3)
        full-size pixels and detection result of each row that was detected. A row whose reconstruction fails
        becomes an error row."""
        for row in rows:
            row["meshes"] = None
            row["timings_ms"]["reconstruct"] = None
        order = sorted(images)
        if not order:
            return rows
        start = time.perf_counter()
        try:
            results = self.reconstructor.run_detected(
                [images[i][0] for i in order], [images[i][1] for i in order], texture=self.options.mesh_dir is not None
            )
            share = (time.perf_counter() - start) * 1e3 / len(order)
            for index, result in zip(order, results):
                self._fill(rows, index, result, share)
        except MESH_FAILURES as exc:
            log.warning("reconstructing a batch of %d images failed (%s); running them one by one", len(order), exc)
            for index in order:
                one = time.perf_counter()
                try:
                    (result,) = self.reconstructor.run_detected(
                        [images[index][0]], [images[index][1]], texture=self.options.mesh_dir is not None
                    )
                    self._fill(rows, index, result, (time.perf_counter() - one) * 1e3)
                except MESH_FAILURES as failure:
                    self._fail(rows, index, failure, (time.perf_counter() - one) * 1e3)
        return rows

    def _fill(self, rows: list[Row], index: int, result: Any, reconstruct_ms: float) -> None:
        """Row ``index`` gets the entries of ``result`` (an ImageReconstruction), its GLBs written first."""
        row = rows[index]
        start = time.perf_counter()
        try:
            row["meshes"] = [
                mesh.to_dict(files=self._save(row["path"], n, mesh)) for n, mesh in enumerate(result.meshes)
            ]
        except MESH_FAILURES as exc:
            self._fail(rows, index, exc, reconstruct_ms + (time.perf_counter() - start) * 1e3)
            return
        row["timings_ms"]["reconstruct"] = reconstruct_ms + (time.perf_counter() - start) * 1e3

    def _save(self, path: str, number: int, mesh: Any) -> dict[str, str] | None:
        """Write face ``number``'s GLB as ``<mesh_dir>/<stem>_face<number>.glb`` (as ``reconstruct`` names it)."""
        if self.options.mesh_dir is None:
            return None
        stem = self.options.renamed.get(path, Path(path).stem)
        target = self.options.mesh_dir / f"{stem}_face{number}.glb"
        mesh.save(target)
        return {"glb": str(target)}

    def _fail(self, rows: list[Row], index: int, exc: BaseException, reconstruct_ms: float) -> None:
        old = rows[index]
        row = error_row(old["path"], old["model"], f"reconstruction: {one_line(exc)}", old["timings_ms"]["decode"])
        row["timings_ms"]["detect"] = old["timings_ms"]["detect"]
        row["timings_ms"]["reconstruct"] = reconstruct_ms
        row["meshes"] = None
        rows[index] = row
