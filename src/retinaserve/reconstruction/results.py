"""Typed reconstruction results: one :class:`FaceMesh` per face, with one wire format (``to_dict``) and exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detection.results import Face
from .pose import Pose
from .topology import MeshTopology

__all__ = ["EXPORT_FORMATS", "FaceMesh", "ImageReconstruction", "SkippedFace"]

EXPORT_FORMATS = ("glb", "obj")


@dataclass(frozen=True, eq=False)
class FaceMesh:
    """A reconstructed face: a textured mesh in original-image pixels, its 68 landmarks, pose, box and score.

    ``vertices`` (V, 3): x, y image pixels, z in the same scale with larger z nearer the camera (centred on the
    face); the UV layout and triangles are the model's (:class:`MeshTopology`).
    """

    model: str
    vertices: np.ndarray
    topology: MeshTopology = field(repr=False)
    texture: np.ndarray = field(repr=False)
    """(S, S, 3) uint8 RGB texture map baked from the photo (row 0 is v = 1)."""
    texture_mask: np.ndarray = field(repr=False)
    """(S, S) bool: texels seen in the photo (the others are mirrored from the other side or inpainted)."""
    landmarks_68: np.ndarray
    """(68, 3) iBUG-68 points in the vertices' frame."""
    pose: Pose
    face: Face
    """The detection the mesh was made from (box, score, five landmarks)."""
    extras: dict[str, float] = field(default_factory=dict)
    """Model-specific values, e.g. ``presence`` (facemesh's face-presence probability)."""

    @property
    def triangles(self) -> np.ndarray:
        return self.topology.triangles

    @property
    def uv(self) -> np.ndarray:
        return self.topology.uv

    def to_trimesh(self) -> Any:
        """The textured mesh as a ``trimesh.Trimesh`` in glTF's frame (see :mod:`.export`)."""
        from .export import to_trimesh

        return to_trimesh(self.vertices, self.triangles, self.uv, self.texture)

    def save(self, path: str | Path) -> list[Path]:
        """Write the textured mesh by extension: ``.glb`` (texture embedded) or ``.obj`` (+ ``.mtl`` + ``.png``)."""
        from .export import export_glb, export_obj

        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in (".glb", ".obj"):
            raise ValueError(f"cannot save a mesh as {target.name}: use .glb or .obj")
        target.parent.mkdir(parents=True, exist_ok=True)
        mesh = self.to_trimesh()
        return [export_glb(mesh, target)] if suffix == ".glb" else export_obj(mesh, target)

    def to_dict(self, *, files: dict[str, str] | None = None, vertices: bool = False) -> dict[str, Any]:
        """JSON-ready ``{"box", "score", "landmarks_68", "pose", "model"[, "files"][, "vertices"]}``."""
        out: dict[str, Any] = {
            "box": list(self.face.box),
            "score": self.face.score,
            "landmarks_68": np.round(self.landmarks_68, 3).tolist(),
            "pose": {k: round(v, 3) for k, v in self.pose.to_dict().items()},
            "model": self.model,
        }
        if self.extras:
            out["extras"] = dict(self.extras)
        if files:
            out["files"] = dict(files)
        if vertices:
            out["vertices"] = np.round(self.vertices, 3).tolist()
            out["triangles"] = self.triangles.tolist()
        return out


@dataclass(frozen=True)
class SkippedFace:
    """A detected face that was not reconstructed, and why (e.g. too small)."""

    face: Face
    reason: str


@dataclass(frozen=True)
class ImageReconstruction:
    """The meshes of one image, the faces skipped, and the per-stage timings of the call (ms)."""

    meshes: list[FaceMesh]
    skipped: list[SkippedFace]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage for the whole call: detect, crop, geometry, texture, total."""
    memory_mb: dict[str, float] = field(default_factory=dict)
