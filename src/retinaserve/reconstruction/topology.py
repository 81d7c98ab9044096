"""Mesh topology of a reconstruction model: triangles, UVs, mirror twins and the 68 iBUG landmark vertices.

Conventions used everywhere in :mod:`retinaserve.reconstruction`:

- vertices ``(V, 3)`` are in original-image pixels: x right, y down, z in the same pixel scale with **larger z
  closer to the camera** (exports flip y to get glTF's right-handed, y-up frame with +z toward the viewer);
- triangles ``(T, 3)`` are wound so that a triangle facing the camera has a **negative** signed area in image
  coordinates (x right, y down), i.e. it is counter-clockwise once y is flipped up, as glTF and OBJ expect;
- uv ``(V, 2)`` in [0, 1] with v **up** (OBJ/trimesh convention): texel row 0 of a texture map is v = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MeshTopology", "mirror_vertex_map"]


@dataclass(frozen=True, eq=False)
class MeshTopology:
    """What a mesh model's output vertices are connected by, loaded once from the model's data files."""

    triangles: np.ndarray
    """(T, 3) int32 vertex ids, wound as described in the module docstring."""
    uv: np.ndarray
    """(V, 2) float32 texture coordinates in [0, 1], v up."""
    mirror: np.ndarray
    """(V,) int32: the id of each vertex's twin across the face's left-right symmetry plane (itself on the plane)."""
    landmarks_68: np.ndarray
    """(68, 2) int32 vertex ids of the iBUG-68 points, in iBUG order (jaw 0-16, brows 17-26, nose 27-35, eyes
    36-47, mouth 48-67): each point is the mean of its two vertices (the same id twice where one vertex is the
    point). A (68,) array of single ids is accepted and stored as (68, 2)."""

    def __post_init__(self) -> None:
        vertices = self.uv.shape[0]
        if self.landmarks_68.ndim == 1:
            object.__setattr__(self, "landmarks_68", np.repeat(self.landmarks_68[:, None], 2, axis=1))
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            raise ValueError(f"triangles must be (T, 3), got {self.triangles.shape}")
        if self.uv.shape != (vertices, 2) or self.mirror.shape != (vertices,):
            raise ValueError(f"uv {self.uv.shape} and mirror {self.mirror.shape} must cover the same vertices")
        if self.landmarks_68.shape != (68, 2):
            raise ValueError(f"landmarks_68 must be (68,) or (68, 2), got {self.landmarks_68.shape}")
        if self.triangles.min() < 0 or self.triangles.max() >= vertices:
            raise ValueError("triangles refer to vertices that do not exist")

    def landmark_points(self, vertices: np.ndarray) -> np.ndarray:
        """(..., V, 3) vertices -> (..., 68, 3) iBUG-68 points (the mean of each point's two vertices)."""
        return vertices[..., self.landmarks_68, :].mean(axis=-2)

    @property
    def num_vertices(self) -> int:
        return int(self.uv.shape[0])

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])


def mirror_vertex_map(points: np.ndarray, *, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each vertex's left-right twin: nearest neighbour of its reflection across the plane x = c.

    points: (V, 3), the face roughly symmetric about a plane of constant x (BFM frame). c starts at 0 and is refined
    as the median midpoint of the matched pairs. Returns (mirror (V,) int32, mismatch (V,) distances in the units
    of ``points``).
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    centre = 0.0
    for _ in range(iterations):
        reflected = points.copy()
        reflected[:, 0] = 2.0 * centre - reflected[:, 0]
        mismatch, mirror = tree.query(reflected)
        updated = float(np.median((points[:, 0] + points[mirror, 0]) / 2.0))
        if updated == centre:
            break
        centre = updated
    return mirror.astype(np.int32), mismatch
