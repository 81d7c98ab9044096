"""MediaPipe Face Mesh topology: the 468-vertex canonical face model's triangles, UVs and mirror twins.

The data comes from MediaPipe's ``geometry_pipeline_metadata_landmarks.pbtxt`` (Apache-2.0), whose
``canonical_mesh`` lists 468 vertices as ``vertex_buffer`` values ``(x, y, z, u, v)`` in landmark order and 898
triangles as ``index_buffer`` triples. The canonical model is in centimetres with y **up** and +z toward the
viewer, v measured from the top of the texture; its triangles are counter-clockwise seen from the front
(normals toward +z). Put into the image frame (x, -y, z), that is the negative signed area that
:mod:`retinaserve.reconstruction.topology` asks of front-facing triangles, so the triangles are kept as listed.
The loader checks this numerically (99.97% of the projected area faces the viewer; the 10 triangles that do not are
slivers on the nose and lips), reverses the winding of a file that had it the other way round and refuses one
whose winding is inconsistent.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .render import signed_areas
from .topology import MeshTopology, mirror_vertex_map

__all__ = [
    "FACEMESH_NUM_TRIANGLES",
    "FACEMESH_NUM_VERTICES",
    "FaceMeshTopologyError",
    "load_facemesh_topology",
    "parse_canonical_mesh",
]

logger = logging.getLogger(__name__)

FACEMESH_NUM_VERTICES = 468
FACEMESH_NUM_TRIANGLES = 898

_VERTEX_RE = re.compile(r"^\s*vertex_buffer\s*:\s*(\S+)\s*$", re.MULTILINE)
_INDEX_RE = re.compile(r"^\s*index_buffer\s*:\s*(\d+)\s*$", re.MULTILINE)


class FaceMeshTopologyError(ValueError):
    """The canonical face model file is not the one expected (wrong counts, bad indices, unexpected winding)."""


def parse_canonical_mesh(pbtxt: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``canonical_mesh`` from the pbtxt -> ``(vertex_buffer (V, 5) float64 x y z u v, triangles (T, 3) int32)``.

    A line reader over ``vertex_buffer:`` / ``index_buffer:`` entries; no protobuf schema is needed.
    """
    text = Path(pbtxt).read_text(encoding="utf-8")
    values = np.array([float(v) for v in _VERTEX_RE.findall(text)], dtype=np.float64)
    indices = np.array([int(i) for i in _INDEX_RE.findall(text)], dtype=np.int64)
    expected_values = FACEMESH_NUM_VERTICES * 5
    expected_indices = FACEMESH_NUM_TRIANGLES * 3
    if values.size != expected_values or indices.size != expected_indices:
        raise FaceMeshTopologyError(
            f"{pbtxt}: expected {expected_values} vertex_buffer values (468 x 5) and {expected_indices} index_buffer "
            f"values (898 x 3), found {values.size} and {indices.size}; is this geometry_pipeline_metadata_landmarks"
            ".pbtxt?"
        )
    if indices.max() >= FACEMESH_NUM_VERTICES:
        raise FaceMeshTopologyError(f"{pbtxt}: index_buffer refers to vertex {indices.max()} of 468")
    return values.reshape(FACEMESH_NUM_VERTICES, 5), indices.reshape(FACEMESH_NUM_TRIANGLES, 3).astype(np.int32)


def load_facemesh_topology(pbtxt: Path, landmarks_68: np.ndarray | None = None) -> tuple[MeshTopology, np.ndarray]:
    """Load the Face Mesh topology -> ``(MeshTopology, canonical vertices (468, 3) float32, y up, +z to viewer)``.

    ``landmarks_68``: (68,) or (68, 2) vertex ids of the iBUG-68 points in iBUG order. MediaPipe ships no such
    table, so the caller supplies it; it is required (no guessed table is made up here).
    """
    if landmarks_68 is None:
        raise ValueError(
            "landmarks_68 is required: the Face Mesh data has no iBUG-68 table; pass the (68,) or (68, 2) array of "
            "vertex ids that maps the 468 landmarks to the 68 iBUG points"
        )
    ids = np.asarray(landmarks_68)
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= FACEMESH_NUM_VERTICES:
        raise ValueError(f"landmarks_68 must hold integer vertex ids in [0, {FACEMESH_NUM_VERTICES})")

    buffer, triangles = parse_canonical_mesh(pbtxt)
    canonical = buffer[:, :3]
    uv = np.stack([buffer[:, 3], 1.0 - buffer[:, 4]], axis=1)

    # A frontal face in the image frame is the canonical model with y flipped (z unchanged): front-facing
    # triangles must then have a negative signed area (weighted by area, so slivers on the silhouette don't vote).
    area = signed_areas(canonical[:, :2] * np.array([1.0, -1.0]), triangles)
    front_fraction = float(np.abs(area[area < 0]).sum() / np.abs(area).sum())
    if front_fraction < 0.5:
        triangles = triangles[:, [0, 2, 1]]
        front_fraction = 1.0 - front_fraction
        logger.info("reversed the winding of %s to face the camera", Path(pbtxt).name)
    if front_fraction < 0.9:
        raise FaceMeshTopologyError(
            f"{pbtxt}: only {front_fraction:.0%} of the projected area faces the viewer; the winding is inconsistent"
        )

    mirror, mismatch = mirror_vertex_map(canonical.astype(np.float64))
    logger.debug("Face Mesh mirror: max mismatch %.4f model units", mismatch.max())
    topology = MeshTopology(
        triangles=np.ascontiguousarray(triangles, dtype=np.int32),
        uv=uv.astype(np.float32),
        mirror=mirror,
        landmarks_68=ids.astype(np.int32),
    )
    return topology, canonical.astype(np.float32)
