"""3D face reconstruction from one photo: textured meshes in image coordinates, poses and 68 landmarks."""

from __future__ import annotations

from .pose import Pose
from .reconstructor import STAGES, Reconstructor
from .results import FaceMesh, ImageReconstruction, SkippedFace
from .topology import MeshTopology

__all__ = ["STAGES", "FaceMesh", "ImageReconstruction", "MeshTopology", "Pose", "Reconstructor", "SkippedFace"]
