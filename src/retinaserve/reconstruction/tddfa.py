"""3DDFA_V2 (MobileNetV1 x0.5) around its network: the box crop, 62 parameters -> dense Basel Face Model mesh.

The crop is 3DDFA_V2's: a square of 1.58x the box's mean side, shifted down by 0.14 of it, resized to 120x120
BGR. The parameters give a scaled rotation, a translation and 50 shape and expression coefficients; the mesh is
the morphable model posed by them (:mod:`.bfm`), mapped from the crop back to image pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..detection.results import Face
from ..registry import CropSpec
from .bfm import (
    MorphableModel,
    MorphableModelDataError,
    basis_tensors,
    crop_roi,
    crop_to_image,
    load_cached_morphable_model,
    load_morphable_model,
    params_to_vertices,
    roi_box_from_bbox,
    save_morphable_model,
)
from .pose import Pose, euler_from_rotation

__all__ = ["BASES", "TDDFADecoder"]

log = logging.getLogger(__name__)

BASES = ("u_shp.npy", "u_exp.npy", "w_shp_sim.npy", "w_exp_sim.npy", "keypoints_sim.npy")


class TDDFADecoder:
    """Pre- and post-processing of ``3ddfa-v2-mb05``: crop rule, network input, vertices and pose."""

    outputs: tuple[tuple[str, int], ...] = (("params", 62),)

    def __init__(self, crop: CropSpec, model: MorphableModel) -> None:
        self.spec = crop
        self.topology = model.topology
        self._bases = basis_tensors(model)
        # keep the bases once (as tensors): holding the model too would keep a second 23 MB copy alive
        self._mean = torch.as_tensor(model.param_mean, dtype=torch.float32)
        self._std = torch.as_tensor(model.param_std, dtype=torch.float32)

    @classmethod
    def from_files(cls, crop: CropSpec, files: dict[str, Path], *, cache: Path | None = None) -> TDDFADecoder:
        """Assemble the morphable model from the resolved data files (bases, indices, triangles, UVs, mean/std).

        With ``cache`` (a ``.npz`` path named after the data files' hashes) the assembled model is read from there
        when present (about 20 ms) and written there otherwise (assembling takes about 0.5 s).
        """
        if cache is not None and cache.is_file():
            try:
                return cls(crop, load_cached_morphable_model(cache))
            except MorphableModelDataError as exc:
                log.warning("rebuilding the morphable model: %s", exc)
        folders = {files[name].parent for name in BASES}
        if len(folders) != 1:
            raise ValueError(f"the five basis files must lie in one folder, found them in {sorted(map(str, folders))}")
        model = load_morphable_model(
            bases_wheel_or_dir=folders.pop(),
            indices=files["indices.npy"],
            tri=files["tri.pkl"],
            uv_mat=files["BFM_UV.mat"],
            mean_std=files["param_mean_std_62d_120x120.pkl"],
        )
        if cache is not None:
            try:
                save_morphable_model(model, cache)
            except OSError as exc:  # a read-only cache costs time, not correctness
                log.warning("could not cache the morphable model at %s: %s", cache, exc)
        return cls(crop, model)

    def crop(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """The network's (3, 120, 120) float32 input for one face (BGR), and its square roi box in the image."""
        roi = roi_box_from_bbox(np.asarray(face.box))
        pixels = crop_roi(image, roi, self.spec.size)[:, :, ::-1]  # RGB -> BGR, as the network was trained
        x = (pixels.astype(np.float32) - self.spec.mean) / self.spec.std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), roi

    def decode(self, outputs: tuple[torch.Tensor, ...], crops: list[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        """(N, 62) raw outputs -> per face (V, 3) float32 image-frame vertices (z centred) and the pose."""
        params = outputs[0].float().cpu() * self._std + self._mean  # the network's outputs are normalised
        vertices = crop_to_image(params_to_vertices(self._bases, params), np.stack(crops), zero_min_depth=False)
        vertices[..., 2] -= vertices[..., 2].mean(dim=-1, keepdim=True)
        rotations = torch.nn.functional.normalize(params[:, :12].reshape(-1, 3, 4)[:, :, :3], dim=-1).numpy()
        return [
            (v.numpy().astype(np.float32), {"pose": euler_from_rotation(_orthonormal(r))})
            for v, r in zip(vertices, rotations)
        ]

    def pose(self, vertices: np.ndarray, extras: dict) -> Pose:
        """The pose the parameters carry (their rotation), computed in :meth:`decode`."""
        pose: Pose = extras["pose"]
        return pose


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest to a (3, 3) matrix whose rows are nearly orthonormal (SVD, reflection removed)."""
    u, _, vt = np.linalg.svd(matrix.astype(np.float64))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0]) @ vt
