"""A small vectorised CPU rasteriser, shaded previews of face meshes, wireframe overlays and a preview sheet.

Pixel centres are at integer coordinates (OpenCV's convention): pixel ``(row i, column j)`` is the point
``(x=j, y=i)``. Triangles are scanned in groups: every pixel centre in a triangle's bounding box is tested with
barycentric coordinates in one numpy expression, and a z-buffer keeps the nearest one (larger depth wins).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "Rasterized",
    "barycentric_coefficients",
    "draw_mesh_overlay",
    "plane_coefficients",
    "preview_sheet",
    "rasterize",
    "render_shaded",
    "signed_areas",
    "vertex_normals",
]

_EDGE_EPS = 1e-7
"""How far outside a triangle (in barycentric units) a pixel centre may lie and still count as inside, so that
centres exactly on a shared edge are never lost to rounding."""
_GROUP_CANDIDATES = 1 << 20
"""About how many (triangle, pixel) pairs one vectorised group tests; bounds the temporary memory (~100 MB)."""

_BACKGROUND = (22, 24, 28)
_CLAY = np.array([205.0, 200.0, 192.0])


@dataclass(frozen=True, eq=False)
class Rasterized:
    """Which triangle covers each pixel centre of an ``(H, W)`` frame, where, and at what depth."""

    triangle_id: np.ndarray
    """(H, W) int32 id of the winning triangle, -1 where no triangle covers the pixel centre."""
    depth: np.ndarray
    """(H, W) float32 depth of the winner (0 when rasterised without depth), -inf where uncovered."""
    coef: np.ndarray
    """(T, 3, 3) the triangles' :func:`barycentric_coefficients`, for :attr:`barycentric`."""

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: covered pixels."""
        return self.triangle_id >= 0

    @functools.cached_property
    def barycentric(self) -> np.ndarray:
        """(H, W, 3) float32 weights of the winning triangle's vertices at the pixel centre (0 where uncovered);
        computed on first use (a depth test alone does not need them)."""
        height, width = self.triangle_id.shape
        ids = self.triangle_id.reshape(-1)
        covered = np.flatnonzero(ids >= 0)
        weights = np.zeros((height * width, 3), dtype=np.float32)
        c = self.coef[ids[covered]]  # (N, 3, 3)
        px = (covered % width).astype(np.float64)[:, None]
        py = (covered // width).astype(np.float64)[:, None]
        weights[covered] = c[:, :, 0] * px + c[:, :, 1] * py + c[:, :, 2]
        return weights.reshape(height, width, 3)


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) signed areas of ``triangles`` (T, 3) over ``points`` (V, 2) in image coordinates (x right, y down).

    Negative means counter-clockwise once y is flipped up: the front-facing winding of our meshes.
    """
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def barycentric_coefficients(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps from a point to its barycentric weights -> ``(coef (T, 3, 3) float64, area (T,) float64)``.

    Vertex k's weight at ``(x, y)`` is ``coef[:, k, 0] * x + coef[:, k, 1] * y + coef[:, k, 2]``, and the three
    sum to one. ``area`` is the signed area in image coordinates (as :func:`signed_areas`); degenerate
    (zero-area) triangles get area 0 and all-zero maps.
    """
    x = points[:, 0].astype(np.float64)[triangles]  # (T, 3)
    y = points[:, 1].astype(np.float64)[triangles]
    x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
    y0, y1, y2 = y[:, 0], y[:, 1], y[:, 2]
    double_area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    scale = np.maximum(np.maximum(np.abs(x1 - x0), np.abs(x2 - x0)), np.maximum(np.abs(y1 - y0), np.abs(y2 - y0)))
    ok = np.abs(double_area) > 1e-12 * scale * scale  # False for NaN too
    double_area[~ok] = 0.0
    inv = np.divide(1.0, double_area, out=np.zeros_like(double_area), where=ok)
    coef = np.empty((len(triangles), 3, 3))
    # w0 = cross(p1 - p, p2 - p) / 2A and w1 = cross(p2 - p, p0 - p) / 2A, written as affine functions of p.
    for k, (ax, ay, bx, by) in enumerate(((x1, y1, x2, y2), (x2, y2, x0, y0))):
        coef[:, k, 0] = (ay - by) * inv
        coef[:, k, 1] = (bx - ax) * inv
        coef[:, k, 2] = (ax * by - ay * bx) * inv
    coef[:, 2, 0] = -coef[:, 0, 0] - coef[:, 1, 0]
    coef[:, 2, 1] = -coef[:, 0, 1] - coef[:, 1, 1]
    coef[:, 2, 2] = ok - coef[:, 0, 2] - coef[:, 1, 2]
    return coef, 0.5 * double_area


def plane_coefficients(coef: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(T, 3) ``(a, b, c)`` with ``a x + b y + c`` the interpolation of per-corner ``values`` (T, 3) over each
    triangle, from :func:`barycentric_coefficients`' ``coef`` (T, 3, 3)."""
    return coef[:, 0] * values[:, 0:1] + coef[:, 1] * values[:, 1:2] + coef[:, 2] * values[:, 2:3]


def _pixel_range(corners: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last pixel centre (clipped to ``[0, limit)``) within each triangle's extent ``corners`` (T, 3)."""
    low = np.minimum(np.minimum(corners[:, 0], corners[:, 1]), corners[:, 2])
    high = np.maximum(np.maximum(corners[:, 0], corners[:, 1]), corners[:, 2])
    with np.errstate(invalid="ignore"):  # non-finite triangles are never drawn (their area is 0)
        first = np.clip(np.ceil(low - 1e-9), 0, limit).astype(np.int64)
        last = np.clip(np.floor(high + 1e-9), -1, limit - 1).astype(np.int64)
    return first, last


def _scan(
    points: np.ndarray,
    triangles: np.ndarray,
    coef: np.ndarray,
    live: np.ndarray,
    height: int,
    width: int,
    plane: np.ndarray | None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(triangle (n,), flat pixel (n,), depth (n,) or None)`` for every pixel centre inside a triangle.

    Vectorised scanlines: for each (triangle, row) pair the span of columns where all three barycentric weights
    are >= -eps is solved in closed form, then the spans are expanded to pixels. Triangles are grouped so that
    one group covers about ``_GROUP_CANDIDATES`` bounding-box pixels. ``live``: (T,) bool, the triangles to
    draw; ``plane``: (T, 3) depth planes.
    """
    x_lo, x_hi = _pixel_range(points[:, 0].astype(np.float64)[triangles], width)
    y_lo, y_hi = _pixel_range(points[:, 1].astype(np.float64)[triangles], height)
    box_w = x_hi - x_lo + 1
    box_h = y_hi - y_lo + 1
    live = np.flatnonzero(live & (box_w > 0) & (box_h > 0))
    if live.size == 0:
        return
    group = np.cumsum(box_w[live] * box_h[live]) // _GROUP_CANDIDATES
    for ids in np.split(live, np.flatnonzero(np.diff(group)) + 1):
        rows = box_h[ids]
        tri = np.repeat(ids, rows)
        row = np.repeat(y_lo[ids] - np.cumsum(rows) + rows, rows) + np.arange(tri.size)
        row_f = row.astype(np.float64)
        left = x_lo[tri].astype(np.float64)
        right = x_hi[tri].astype(np.float64)
        for k in range(3):
            a = coef[tri, k, 0]
            rest = coef[tri, k, 1] * row_f + (coef[tri, k, 2] + _EDGE_EPS)  # inside: a x + rest >= 0
            bound = -rest / np.where(a != 0, a, 1.0)
            left = np.where(a > 0, np.maximum(left, bound), left)
            right = np.where(a < 0, np.minimum(right, bound), right)
            right = np.where((a == 0) & (rest < 0), -1.0, right)
        x0 = np.ceil(left)
        count = np.maximum(np.floor(right) - x0 + 1, 0).astype(np.int64)
        pixel_tri = np.repeat(tri, count)
        offset = np.arange(pixel_tri.size, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
        flat = np.repeat(row * width + x0.astype(np.int64), count) + offset
        z = None
        if plane is not None:
            p = plane[tri]
            z_start = p[:, 0] * x0 + p[:, 1] * row_f + p[:, 2]
            z = np.repeat(z_start, count) + np.repeat(p[:, 0], count) * offset
        yield pixel_tri, flat, z


def rasterize(
    points: np.ndarray,
    triangles: np.ndarray,
    size: tuple[int, int],
    depth: np.ndarray | None = None,
    *,
    cull_back: bool = False,
    setup: tuple[np.ndarray, np.ndarray] | None = None,
) -> Rasterized:
    """Rasterise ``triangles`` (T, 3) over ``points`` (V, 2) px into an ``(H, W)`` frame.

    ``depth``: (V,) per-vertex depth, larger is nearer (z-buffer). Without it (a UV layout, where triangles do
    not overlap) a pixel centre on an edge shared by two triangles goes to either of them. ``cull_back`` skips
    triangles whose signed area is >= 0; ``setup``: :func:`barycentric_coefficients` of the same points and
    triangles, when the caller has it already.
    """
    height, width = int(size[0]), int(size[1])
    triangles = np.asarray(triangles)
    coef, area = barycentric_coefficients(points, triangles) if setup is None else setup
    live = area < 0 if cull_back else area != 0  # degenerate and non-finite triangles have area 0
    plane = None if depth is None else plane_coefficients(coef, np.asarray(depth, dtype=np.float64)[triangles])
    zbuf = np.full(height * width, -np.inf)
    ids = np.full(height * width, -1, dtype=np.int32)
    for tri, pix, z in _scan(points, triangles, coef, live, height, width, plane):
        if z is None:
            ids[pix] = tri
            continue
        np.maximum.at(zbuf, pix, z)
        win = z >= zbuf[pix]
        ids[pix[win]] = tri[win]
    if depth is None:
        zbuf[ids >= 0] = 0.0
    return Rasterized(
        triangle_id=ids.reshape(height, width), depth=zbuf.astype(np.float32).reshape(height, width), coef=coef
    )


def _face_normal_sum(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(3,) sum of the area-weighted face normals (right-handed frame): where an open mesh such as a face looks."""
    v = vertices[triangles]
    return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).sum(axis=0)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of ``vertices`` (V, 3) in a right-handed frame (CCW faces out)."""
    v = vertices.astype(np.float64, copy=False)
    face = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
    flat = triangles.reshape(-1)
    normals = np.stack(
        [np.bincount(flat, weights=np.repeat(face[:, k], 3), minlength=len(v)) for k in range(3)], axis=1
    )
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def render_shaded(
    vertices: np.ndarray,
    triangles: np.ndarray,
    size: tuple[int, int] = (512, 512),
    *,
    view: Literal["front", "side"] = "front",
    light: tuple[float, float, float] = (-0.35, 0.45, 1.0),
    side_angle: float = 70.0,
    margin: float = 0.06,
) -> np.ndarray:
    """Gray clay preview of a mesh -> (H, W, 3) uint8 RGB on a dark background.

    ``vertices``: (V, 3) image px (x right, y down, larger z nearer). Orthographic, fitted into the frame with
    ``margin``. ``view="front"`` is the camera's view; ``view="side"`` turns the mesh about the vertical axis
    through its centre until the face (its area-weighted mean normal) looks ``side_angle`` degrees to the right.
    ``light``: direction toward the light in the viewer's frame (x right, y up, z toward the viewer).
    Lambert shading with interpolated vertex normals, lit on both sides.
    """
    height, width = int(size[0]), int(size[1])
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = _BACKGROUND
    triangles = np.asarray(triangles)
    if len(vertices) == 0 or len(triangles) == 0:
        return out
    world = vertices.astype(np.float64) * np.array([1.0, -1.0, 1.0])  # right-handed: y up, +z to the viewer
    world -= (world.min(axis=0) + world.max(axis=0)) / 2
    if view == "side":
        # Turn about the vertical axis so that the face's mean normal ends up ``side_angle`` from the viewer,
        # whatever its pose in the photo: a profile, not the back of a face that was already turned.
        facing = _face_normal_sum(world, triangles)
        angle = math.radians(side_angle) - math.atan2(facing[0], facing[2])
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]])
        world = world @ rotation.T
        world -= (world.min(axis=0) + world.max(axis=0)) / 2
    elif view != "front":
        raise ValueError(f"view must be 'front' or 'side', got {view!r}")
    extent = np.maximum(world.max(axis=0) - world.min(axis=0), 1e-9)
    scale = min(width * (1 - 2 * margin) / extent[0], height * (1 - 2 * margin) / extent[1])
    points = np.stack([world[:, 0] * scale + (width - 1) / 2, -world[:, 1] * scale + (height - 1) / 2], axis=1)
    raster = rasterize(points, triangles, (height, width), depth=world[:, 2])

    covered = np.flatnonzero(raster.triangle_id.reshape(-1) >= 0)
    tri = raster.triangle_id.reshape(-1)[covered]
    weights = raster.barycentric.reshape(-1, 3)[covered].astype(np.float64)
    normals = np.einsum("nk,nkd->nd", weights, vertex_normals(world, triangles)[triangles[tri]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    normals[normals[:, 2] < 0] *= -1  # two-sided: the inside of an open mesh is lit like its outside
    direction = np.asarray(light, dtype=np.float64)
    direction /= np.linalg.norm(direction)
    lambert = np.clip(normals @ direction, 0.0, 1.0)
    shade = 0.22 + 0.78 * lambert
    colors = np.clip(shade[:, None] * _CLAY, 0, 255).astype(np.uint8)
    out.reshape(-1, 3)[covered] = colors
    return out


def draw_mesh_overlay(
    image_rgb: np.ndarray,
    vertices: np.ndarray,
    triangles: np.ndarray,
    *,
    color: tuple[int, int, int] = (80, 255, 120),
    alpha: float = 0.6,
    front_only: bool | None = None,
    max_edges: int = 12000,
    thickness: int = 1,
) -> np.ndarray:
    """Wireframe of a mesh drawn over a photo -> a new (H, W, 3) uint8 image.

    ``vertices``: (V, 3) image px. ``front_only`` (default: for meshes over 5,000 triangles) keeps the edges of
    front-facing triangles; above ``max_edges`` unique edges an even random subset (fixed seed) is drawn.
    Antialiased lines at 1/16 px precision, blended with ``alpha``.
    """
    triangles = np.asarray(triangles)
    if front_only is None:
        front_only = len(triangles) > 5000
    if front_only:
        triangles = triangles[signed_areas(vertices[:, :2], triangles) < 0]
    first = triangles.reshape(-1).astype(np.int64)
    second = triangles[:, [1, 2, 0]].reshape(-1).astype(np.int64)
    keys = np.unique(np.minimum(first, second) * len(vertices) + np.maximum(first, second))
    edges = np.stack(np.divmod(keys, len(vertices)), axis=1)
    if len(edges) > max_edges:
        edges = edges[np.random.default_rng(0).choice(len(edges), max_edges, replace=False)]
    layer = np.ascontiguousarray(image_rgb).copy()
    if len(edges):
        lines = np.round(vertices[:, :2][edges] * 16).astype(np.int32)  # (E, 2, 2) in 1/16 px
        cv2.polylines(layer, list(lines), False, color, thickness, cv2.LINE_AA, 4)
    return cv2.addWeighted(layer, alpha, image_rgb, 1 - alpha, 0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _fit(image: np.ndarray, box: tuple[int, int]) -> Image.Image:
    """``image`` (h, w, 3) uint8 scaled to fit ``box`` (width, height), aspect kept."""
    picture = Image.fromarray(image)
    factor = min(box[0] / picture.width, box[1] / picture.height)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    resample = Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BICUBIC
    return picture.resize(size, resample) if size != picture.size else picture


def preview_sheet(
    image_rgb: np.ndarray,
    meshes: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    tile: int = 256,
    max_faces: int = 6,
) -> Image.Image:
    """A contact sheet: the photo with every mesh's wireframe, then per face its texture, front and side renders.

    ``meshes``: ``(vertices (V, 3) image px, triangles (T, 3), texture (S, S, 3) uint8 or None)`` per face;
    the first ``max_faces`` get a row of three ``tile`` x ``tile`` panels.
    """
    gap, label_h = 6, 18
    font = _font(13)
    overlay = np.ascontiguousarray(image_rgb[..., :3])
    for vertices, triangles, _ in meshes:
        overlay = draw_mesh_overlay(overlay, vertices, triangles)
    faces = list(meshes)[:max_faces]
    sheet_w = 3 * tile + 4 * gap
    photo = _fit(overlay, (sheet_w - 2 * gap, 2 * tile))
    row_h = label_h + tile + gap
    sheet_h = gap + label_h + photo.height + gap + row_h * len(faces)
    sheet = Image.new("RGB", (sheet_w, sheet_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, gap), f"photo with {len(meshes)} mesh(es)", fill=(230, 230, 230), font=font)
    sheet.paste(photo, ((sheet_w - photo.width) // 2, gap + label_h))
    top = gap + label_h + photo.height + gap
    for index, (vertices, triangles, texture) in enumerate(faces):
        panels: list[tuple[str, np.ndarray | None]] = [
            ("texture", texture),
            ("front", render_shaded(vertices, triangles, (tile, tile), view="front")),
            ("side", render_shaded(vertices, triangles, (tile, tile), view="side")),
        ]
        for column, (name, panel) in enumerate(panels):
            x = gap + column * (tile + gap)
            draw.text((x, top), f"face {index + 1}: {name}", fill=(230, 230, 230), font=font)
            if panel is None:
                draw.rectangle((x, top + label_h, x + tile - 1, top + label_h + tile - 1), outline=(90, 90, 90))
                draw.text((x + 8, top + label_h + tile // 2), "no texture", fill=(150, 150, 150), font=font)
                continue
            picture = _fit(panel, (tile, tile))
            sheet.paste(picture, (x + (tile - picture.width) // 2, top + label_h + (tile - picture.height) // 2))
        top += row_h
    return sheet
