"""MediaPipe Face Mesh (``face_landmark.tflite``): 468 3D landmarks and a face-presence logit from a face crop.

An explicit re-implementation of the TFLite graph shipped in ``mediapipe==0.10.21``
(``mediapipe/modules/face_landmark/face_landmark.tflite``), laid out so that its tensors load one to one (see
:mod:`retinaserve.weights.tflite_facemesh`). The network is a plain residual stack: a stride-2 3x3 stem, then
blocks of 3x3 depthwise conv + 1x1 conv + skip add + per-channel PReLU. Stride-2 blocks take their skip through
a 2x2 max-pool and zero-pad its channels when the width grows. After a 6x6 trunk the graph splits into two
branches that end in 3x3 convolutions over the final 3x3 map: 1404 landmark values and one presence logit.

TFLite ``SAME`` padding is reproduced exactly: 3x3 stride-1 convolutions pad one pixel on every side, stride-2
ones (always on even sizes here) pad one row and one column at the bottom/right only. There is no batch norm;
every convolution has a bias. The input is RGB in [0, 1], NCHW; the model's pre- and post-processing (crop,
rotation, mapping landmarks back to the image) live outside this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INPUT_SIZE",
    "LANDMARK_BRANCH_BLOCKS",
    "NUM_LANDMARKS",
    "PRESENCE_BRANCH_BLOCKS",
    "TRUNK_BLOCKS",
    "ConvPReLU",
    "FaceMeshBranch",
    "FaceMeshNet",
    "ResidualBlock",
]

INPUT_SIZE = 192
"""The crop side the graph was built for: every stride-2 stage then sees an even size (192 ... 6)."""
NUM_LANDMARKS = 468
"""Landmarks per face; the landmark head outputs (x, y, z) for each, in crop pixels."""

TRUNK_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (16, 16, 1),
    (16, 16, 1),
    (16, 32, 2),
    (32, 32, 1),
    (32, 32, 1),
    (32, 64, 2),
    (64, 64, 1),
    (64, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 128, 1),
    (128, 128, 2),
    (128, 128, 1),
    (128, 128, 1),
)
"""(input channels, output channels, stride) of the shared residual blocks: 96x96x16 -> 6x6x128."""
LANDMARK_BRANCH_BLOCKS: tuple[tuple[int, int, int], ...] = ((128, 128, 2), (128, 128, 1), (128, 128, 1))
"""Residual blocks of the landmark branch before its 128 -> 32 reduction: 6x6 -> 3x3."""
PRESENCE_BRANCH_BLOCKS: tuple[tuple[int, int, int], ...] = ((128, 128, 2),)
"""Residual blocks of the presence branch before its 128 -> 32 reduction: 6x6 -> 3x3."""
BRANCH_CHANNELS = 32
"""Width of both branches after their 1x1 reduction."""


def _pad_same_stride2(x: torch.Tensor) -> torch.Tensor:
    """TFLite ``SAME`` for a 3x3 stride-2 window on an even size: one zero row/column at the bottom/right."""
    return F.pad(x, (0, 1, 0, 1))


class ConvPReLU(nn.Module):
    """Conv (TFLite ``SAME``, with bias) + per-channel PReLU; used for the stem and the branches' 1x1 reductions."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.pad_bottom_right = stride == 2 and kernel_size > 1
        padding = 0 if self.pad_bottom_right else kernel_size // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_bottom_right:
            x = _pad_same_stride2(x)
        return self.act(self.conv(x))


class ResidualBlock(nn.Module):
    """3x3 depthwise conv + 1x1 conv, added to the skip path, then PReLU: (N, c_in, H, W) -> (N, c_out, H/s, W/s).

    With stride 2 the skip path is a 2x2 max-pool, and its channels are zero-padded at the end when
    ``c_out > c_in`` (the graph's ``channel_padding`` PAD ops).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if c_out < c_in or (stride == 1 and c_out != c_in):
            raise ValueError(f"a residual block cannot map {c_in} to {c_out} channels with stride {stride}")
        self.pad_bottom_right = stride == 2
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride, padding=0 if self.pad_bottom_right else 1, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)
        self.skip_pool = nn.MaxPool2d(2, 2) if stride == 2 else None
        self.skip_channels = c_out - c_in
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pointwise(self.depthwise(_pad_same_stride2(x) if self.pad_bottom_right else x))
        skip = self.skip_pool(x) if self.skip_pool is not None else x
        if self.skip_channels:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.skip_channels))
        return self.act(skip + out)


class FaceMeshBranch(nn.Module):
    """One head's private layers: residual blocks, a 1x1 reduction to 32 channels + PReLU, one more block.

    ``x``: (N, 128, 6, 6) trunk features -> (N, 32, 3, 3).
    """

    def __init__(self, blocks: tuple[tuple[int, int, int], ...], channels: int = BRANCH_CHANNELS) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(c_in, c_out, stride) for c_in, c_out, stride in blocks))
        self.reduce = ConvPReLU(blocks[-1][1], channels, 1)
        self.refine = ResidualBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.reduce(self.blocks(x)))


class FaceMeshNet(nn.Module):
    """MediaPipe Face Mesh regressor (about 605 k parameters).

    ``x``: (N, 3, 192, 192) float RGB in [0, 1] (a square face crop). Returns ``(landmarks, presence)``:
    landmarks (N, 1404) = 468 x (x, y, z) in crop pixels, z a relative depth on the same scale as x (the
    graph's ``conv2d_21``); presence (N, 1) the raw face-presence logit (``conv2d_31``; sigmoid for a score).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvPReLU(3, TRUNK_BLOCKS[0][0], 3, stride=2)
        self.blocks = nn.Sequential(*(ResidualBlock(c_in, c_out, stride) for c_in, c_out, stride in TRUNK_BLOCKS))
        # each head is a 3x3 convolution over the whole 3x3 map (VALID, stride 3 as in the graph): a dense layer
        self.landmarks_branch = FaceMeshBranch(LANDMARK_BRANCH_BLOCKS)
        self.landmarks_head = nn.Conv2d(BRANCH_CHANNELS, 3 * NUM_LANDMARKS, 3, stride=3)
        self.presence_branch = FaceMeshBranch(PRESENCE_BRANCH_BLOCKS)
        self.presence_head = nn.Conv2d(BRANCH_CHANNELS, 1, 3, stride=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the check is skipped while tracing (ONNX export): shapes are then traced values, not ints
        if not torch.jit.is_tracing() and x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"FaceMeshNet takes (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) crops, got {tuple(x.shape)}")
        features = self.blocks(self.stem(x))
        landmarks = self.landmarks_head(self.landmarks_branch(features)).flatten(1)
        presence = self.presence_head(self.presence_branch(features)).flatten(1)
        return landmarks, presence
