"""MobileNet-V2 trunk in the Keras layout, and the RetinaFace built on it.

Mirrors the frozen TensorFlow graph of PyPI ``retinaface==1.1.1`` (Keras ``MobileNetV2``, width 1.0,
cut after ``block_15``) so that its constants load one to one: batch-norm epsilon 1e-3, ReLU6, and every
stride-2 convolution as an explicit one-pixel bottom/right zero pad followed by an unpadded convolution
(TF ``SAME`` for even input sizes). The input is already normalised to [-1, 1]; see
:mod:`retinaserve.weights.tf_graph` for the conversion and the preprocessing read from the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .retinaface import RetinaFace, RetinaFaceConfig

__all__ = [
    "FEATURE_BLOCKS",
    "INVERTED_RESIDUAL_SETTINGS",
    "RETINAFACE_MNV2_CONFIG",
    "ConvBN",
    "InvertedResidual",
    "MobileNetV2Body",
    "build_retinaface_mnv2",
]

KERAS_BN_EPS = 1e-3
"""Keras ``BatchNormalization`` epsilon used throughout the MobileNet-V2 trunk."""

INVERTED_RESIDUAL_SETTINGS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
    (6, 32, 1),
    (6, 64, 2),
    (6, 64, 1),
    (6, 64, 1),
    (6, 64, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 160, 2),
    (6, 160, 1),
    (6, 160, 1),
)
"""(expansion, output channels, stride) of Keras blocks ``expanded_conv``, ``block_1`` ... ``block_15``."""

FEATURE_BLOCKS = (5, 12, 15)
"""Blocks whose outputs feed the FPN: strides 8, 16 and 32."""

RETINAFACE_MNV2_CONFIG = RetinaFaceConfig(backbone="mobilenetv2", out_channels=64, slope=0.1, bn_eps=1.001e-5)
"""FPN/SSH/heads of the graph: 64 channels, LeakyReLU 0.1, batch-norm epsilon 1.001e-5."""


class ConvBN(nn.Module):
    """Bias-free conv + BN (+ ReLU6); stride 2 pads one row and column at the bottom/right, then convolves unpadded."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        *,
        groups: int = 1,
        relu6: bool = True,
        eps: float = KERAS_BN_EPS,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.pad_bottom_right = stride == 2
        padding = 0 if self.pad_bottom_right else kernel_size // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=eps)
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_bottom_right:
            x = F.pad(x, (0, 1, 0, 1))
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand (absent when expansion is 1), 3x3 depthwise, linear 1x1 project, residual."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, eps: float = KERAS_BN_EPS) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvBN(c_in, hidden, 1, eps=eps) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden, eps=eps)
        self.project = ConvBN(hidden, c_out, 1, relu6=False, eps=eps)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out


class MobileNetV2Body(nn.Module):
    """Keras MobileNet-V2 (width 1.0) up to ``block_15``; returns the stride 8, 16, 32 maps (32, 96, 160 ch).

    ``x``: (N, 3, H, W) RGB scaled to [-1, 1], H and W multiples of 32.
    """

    out_channels = (32, 96, 160)

    def __init__(self, bn_eps: float = KERAS_BN_EPS) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2, eps=bn_eps)
        blocks = []
        c_in = 32
        for expansion, c_out, stride in INVERTED_RESIDUAL_SETTINGS:
            blocks.append(InvertedResidual(c_in, c_out, stride, expansion, bn_eps))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in FEATURE_BLOCKS:
                features.append(x)
        return features


def build_retinaface_mnv2() -> RetinaFace:
    """RetinaFace with the Keras MobileNet-V2 trunk, laid out like the ``retinaface==1.1.1`` graph (untrained)."""
    return RetinaFace(RETINAFACE_MNV2_CONFIG, body=MobileNetV2Body())
