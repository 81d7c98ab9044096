"""UV texture baking: which texel lies in which triangle, which triangles the camera sees, and the bake itself.

A texture of ``S x S`` texels has texel ``(row i, column j)`` at ``u = (j + 0.5) / S``, ``v = 1 - (i + 0.5) / S``
(v up, row 0 at the top, as in :mod:`retinaserve.reconstruction.topology`). Image positions use OpenCV's pixel
convention (pixel centres at integer coordinates), as ``cv2.remap`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse

from .render import barycentric_coefficients, plane_coefficients, rasterize
from .topology import MeshTopology

__all__ = ["UVRaster", "bake_texture", "build_uv_raster", "visible_triangles"]


@dataclass(frozen=True, eq=False)
class UVRaster:
    """Where every texel of an ``S x S`` texture lies on the mesh; built once per (model, size) and reused."""

    size: int
    triangle_id: np.ndarray
    """(S, S) int32 id of the triangle holding the texel centre, -1 outside the UV layout."""
    barycentric: np.ndarray
    """(S, S, 3) float32 weights of that triangle's vertices at the texel centre (0 outside the layout)."""
    mask: np.ndarray
    """(S, S) bool: texels inside the layout."""
    mirror_texel: np.ndarray
    """(S, S, 2) float32 (column, row) texel position of each texel's mirror point: the same barycentric weights
    in the triangle of the vertices' mirror twins (-1 outside the layout). Used to fill what the camera missed."""
    interpolation: scipy.sparse.csr_matrix
    """(S * S, V) float32 sparse: row-major texel <- its triangle's three vertices with the barycentric weights
    (empty rows outside the layout), so that ``interpolation @ values (V, k)`` gives every texel's (S * S, k)."""
    outside_distance: np.ndarray
    """(S, S) float32 distance in texels to the nearest layout texel (0 inside the layout)."""


def build_uv_raster(topology: MeshTopology, size: int) -> UVRaster:
    """Rasterise the UV layout of ``topology`` into ``size`` x ``size`` texels (no holes along shared edges)."""
    uv = topology.uv.astype(np.float64)
    texel_xy = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=1)
    raster = rasterize(texel_xy, topology.triangles, (size, size))
    layout = np.flatnonzero(raster.triangle_id.reshape(-1) >= 0)
    tri = raster.triangle_id.reshape(-1)[layout]
    weights = raster.barycentric.reshape(-1, 3)[layout]
    corners = topology.triangles[tri]  # (N, 3)
    twins = topology.mirror[corners]  # the mirror triangle's vertices, in the same order
    mirror_texel = np.full((size * size, 2), -1.0, dtype=np.float32)
    mirror_texel[layout] = np.einsum("nk,nkd->nd", weights, texel_xy.astype(np.float32)[twins])
    row_starts = np.zeros(size * size + 1, dtype=np.int64)
    row_starts[layout + 1] = 3
    interpolation = scipy.sparse.csr_matrix(
        (weights.reshape(-1), corners.reshape(-1), np.cumsum(row_starts)),
        shape=(size * size, topology.num_vertices),
    )
    return UVRaster(
        size=size,
        triangle_id=raster.triangle_id,
        barycentric=raster.barycentric,
        mask=raster.mask,
        mirror_texel=mirror_texel.reshape(size, size, 2),
        interpolation=interpolation,
        outside_distance=cv2.distanceTransform((~raster.mask).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE),
    )


def visible_triangles(
    vertices: np.ndarray,
    triangles: np.ndarray,
    image_size: tuple[int, int],
    *,
    max_buffer: int = 384,
    tolerance: float | None = None,
    min_facing: float = 0.3,
) -> np.ndarray:
    """(T,) bool: triangles that face the camera, are not hidden behind nearer parts of the mesh, and lie in the image.

    Triangles seen at a grazing angle (the cosine between their normal and the view direction under
    ``min_facing``, about 73 degrees) count as unseen: on turned faces they lie on the silhouette, where a small
    error of the mesh samples the background; their texels are filled from the mirror side instead.

    ``vertices``: (V, 3) image px, larger z nearer; ``image_size``: (H, W). Front-facing triangles (negative
    signed area) are drawn into a z-buffer over the mesh's box in the image, at most ``max_buffer`` px on its
    long side. Each triangle is then tested at four samples (its centroid and the midpoints between centroid and
    vertices): at the buffer pixel nearest a sample, its own plane must be within ``tolerance`` (default 1% of the
    mesh's size in the image, at least one buffer pixel) of the nearest surface. At least two samples must pass.
    """
    triangles = np.asarray(triangles)
    height, width = int(image_size[0]), int(image_size[1])
    xy = vertices[:, :2].astype(np.float64)
    if not np.isfinite(vertices).all():
        raise ValueError("vertices must be finite")
    lo = np.maximum(np.floor(xy.min(axis=0)), 0)
    hi = np.minimum(np.ceil(xy.max(axis=0)), [width - 1, height - 1])
    if np.any(hi < lo) or len(triangles) == 0:
        return np.zeros(len(triangles), dtype=bool)
    scale = min(1.0, max_buffer / (float((hi - lo).max()) + 1.0))
    shape = (int(np.ceil((hi[1] - lo[1]) * scale)) + 1, int(np.ceil((hi[0] - lo[0]) * scale)) + 1)
    points = (xy - lo) * scale
    depth = vertices[:, 2].astype(np.float64)
    coef, area = barycentric_coefficients(points, triangles)
    zbuf = rasterize(points, triangles, shape, depth=depth, cull_back=True, setup=(coef, area)).depth
    if tolerance is None:
        tolerance = max(0.01 * float(np.ptp(xy, axis=0).max()), 1.0 / scale)

    # Four samples per triangle: the centroid and the midpoints between it and each corner, rounded to pixels.
    x, y = points[:, 0][triangles], points[:, 1][triangles]  # (T, 3)
    cx = (x[:, 0:1] + x[:, 1:2] + x[:, 2:3]) / 3
    cy = (y[:, 0:1] + y[:, 1:2] + y[:, 2:3]) / 3
    sx = np.rint(np.concatenate([cx, (x + cx) / 2], axis=1))  # (T, 4)
    sy = np.rint(np.concatenate([cy, (y + cy) / 2], axis=1))
    inside = (sx >= 0) & (sx < shape[1]) & (sy >= 0) & (sy < shape[0])
    plane = plane_coefficients(coef, depth[triangles])  # each triangle's own depth, extended to the pixel
    own = plane[:, 0:1] * sx + plane[:, 1:2] * sy + plane[:, 2:3]
    nearest = zbuf[np.clip(sy, 0, shape[0] - 1).astype(np.intp), np.clip(sx, 0, shape[1] - 1).astype(np.intp)]
    # A sample on an uncovered pixel (a sliver on the silhouette) has nothing in front of it.
    passed = inside & ((own >= nearest - tolerance) | np.isneginf(nearest))
    count = passed[:, 0].astype(np.int8) + passed[:, 1] + passed[:, 2] + passed[:, 3]
    corners = vertices[triangles].astype(np.float64) * np.array([1.0, -1.0, 1.0])  # y up: front faces +z
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    facing = normals[:, 2] / np.maximum(np.linalg.norm(normals, axis=1), 1e-12)
    return (area < 0) & (count >= 2) & (facing >= min_facing)


def bake_texture(
    image_rgb: np.ndarray,
    vertices: np.ndarray,
    topology: MeshTopology,
    raster: UVRaster,
    *,
    fill: bool = True,
    border: int = 8,
    inpaint_radius: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a face's texture from the photo -> ``(texture (S, S, 3) uint8, seen (S, S) bool)``.

    ``image_rgb``: (H, W, 3) uint8; ``vertices``: (V, 3) image px of this face; ``raster``: from
    :func:`build_uv_raster` for the same topology. A texel is seen when its triangle is visible
    (:func:`visible_triangles`) and its image position (the barycentric mix of the triangle's projected
    vertices, sampled bilinearly) lies in the image. With ``fill``, unseen layout texels take the colour of
    their mirror texel when that one was seen, the rest are inpainted (Telea), and texels up to ``border`` px
    outside the layout take the colour of the nearest filled layout texel so that viewers' filtering shows no
    dark seams (black beyond); the returned mask still marks only the seen texels. Without ``fill``, every unseen
    texel is black.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb must be (H, W, 3) uint8, got {image_rgb.shape} {image_rgb.dtype}")
    if raster.interpolation.shape[1] != len(vertices):
        raise ValueError(f"the raster is for {raster.interpolation.shape[1]} vertices, got {len(vertices)}")
    height, width = image_rgb.shape[:2]
    size = raster.size
    triangles = topology.triangles
    visible = visible_triangles(vertices, triangles, (height, width))

    # Each texel's image position; two sparse mat-vecs are cheaper than one with two columns.
    map_x = (raster.interpolation @ vertices[:, 0].astype(np.float32)).reshape(size, size)
    map_y = (raster.interpolation @ vertices[:, 1].astype(np.float32)).reshape(size, size)
    fixed_xy, fixed_frac = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)  # what remap uses inside anyway
    texture = cv2.remap(
        np.ascontiguousarray(image_rgb), fixed_xy, fixed_frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    seen = np.take(np.append(visible, False), raster.triangle_id)
    xy = vertices[:, :2]
    if xy.min() < -0.5 or xy[:, 0].max() > width - 0.5 or xy[:, 1].max() > height - 0.5:
        # Part of the mesh is outside the photo: so are some texels (their positions are convex combinations).
        seen &= (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    if not fill:
        return cv2.bitwise_and(texture, texture, mask=seen.view(np.uint8)), seen

    # 1. Unseen layout texels copy their mirror texel when every texel of its bilinear footprint was seen.
    known = seen.copy()
    cells = _texels(texture)
    holes = np.flatnonzero((raster.mask & ~seen).reshape(-1))
    if holes.size:
        twin = np.take(raster.mirror_texel.reshape(-1, 2), holes, axis=0)
        twin_seen = _sample(seen.view(np.uint8) * np.uint8(255), twin)[:, 0] == 255
        np.put(cells, holes[twin_seen], _texels(_sample(texture, twin))[twin_seen])
        known.reshape(-1)[holes[twin_seen]] = True

    # 2. Holes and a ring of ``border`` texels around the layout take the colour of the nearest known texel,
    #    which both continues the border colours outward and gives the inpainting below a boundary free of black.
    padded = raster.outside_distance <= border
    texture = cv2.bitwise_and(texture, texture, mask=padded.view(np.uint8))
    if not known.any():  # nothing of the face is in view: nothing to fill from
        return np.zeros_like(texture), seen
    need = np.flatnonzero((padded & ~known).reshape(-1))
    if need.size == 0:
        return texture, seen
    _, labels = cv2.distanceTransformWithLabels(
        (~known).view(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )  # labels number the known texels 1, 2, ... in row-major order
    source = np.flatnonzero(known.reshape(-1))
    cells = _texels(texture)
    nearest = np.take(labels.reshape(-1), need).astype(np.intp) - 1
    np.put(cells, need, np.take(cells, np.take(source, nearest)))

    # 3. Holes inside the layout are inpainted (Telea) from their surroundings, within their bounding box; large
    #    holes (the jaw's sides, unseen from either side in a frontal photo) at a reduced resolution, since Telea's
    #    cost grows with the hole's area and these colours are a smooth guess anyway.
    remaining = raster.mask & ~known
    rows, cols = np.flatnonzero(remaining.any(axis=1)), np.flatnonzero(remaining.any(axis=0))
    if rows.size:
        pad = 4 * (int(np.ceil(inpaint_radius)) + 1)
        box = (
            slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, size)),
            slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, size)),
        )
        texture[box] = _inpaint(texture[box], remaining[box], inpaint_radius)
    return texture, seen


def _texels(image: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous (..., 3) uint8 image with one 3-byte item per pixel, for fast gathers/scatters."""
    return image.reshape(-1, 3).view("V3").reshape(-1)


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` (H, W[, C]) at ``xy`` (N, 2) px -> (N, C), zero outside, via ``cv2.remap``."""
    columns = 1024  # remap wants maps under 32767 on a side: lay the points out as rows of 1024
    rows = -(-len(xy) // columns)
    grid = np.full((2, rows * columns), -1.0, dtype=np.float32)
    grid[:, : len(xy)] = xy.T
    grid_x, grid_y = grid.reshape(2, rows, columns)
    sampled = cv2.remap(image, grid_x, grid_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.ascontiguousarray(sampled.reshape(rows * columns, -1)[: len(xy)])


_INPAINT_FULL_RESOLUTION = 2048
"""Up to this many hole texels Telea runs at full resolution; beyond, at 1/2 or 1/4."""


def _inpaint(image: np.ndarray, holes: np.ndarray, radius: float) -> np.ndarray:
    """``image`` (h, w, 3) uint8 with ``holes`` (h, w) bool filled by Telea inpainting (other pixels unchanged)."""
    count = int(holes.sum())
    factor = 1 if count <= _INPAINT_FULL_RESOLUTION else 2 if count <= 4 * _INPAINT_FULL_RESOLUTION else 4
    mask = holes.view(np.uint8)
    if factor == 1:
        return cv2.inpaint(image, mask, radius, cv2.INPAINT_TELEA)
    height, width = holes.shape
    small_size = (max(1, width // factor), max(1, height // factor))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_holes = (cv2.resize(mask, small_size, interpolation=cv2.INTER_AREA) > 0).view(np.uint8)
    filled = cv2.resize(cv2.inpaint(small, small_holes, radius, cv2.INPAINT_TELEA), (width, height))
    return cv2.copyTo(filled, mask, image.copy())
