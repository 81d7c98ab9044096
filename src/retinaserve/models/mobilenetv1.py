"""MobileNet-V1 parameter regressor of 3DDFA_V2 (a 120x120 face crop -> 62 normalised 3DMM parameters).

Module and parameter names follow the checkpoints of cleardusk/3DDFA_V2 (``conv1``, ``bn1``, ``dw2_1`` ...
``dw6`` with ``conv_dw``/``bn_dw``/``conv_sep``/``bn_sep``, then ``fc_param`` and ``fc_lm``) so that, once the
``module.`` prefix is stripped, they load with strict key matching. The network maps a normalised BGR batch
``(N, 3, 120, 120)`` to the raw 62 outputs; cropping, normalisation ((x - 127.5) / 128) and de-normalisation
(raw * std + mean) live in :mod:`retinaserve.reconstruction.bfm`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BLOCK_SETTINGS", "DepthwiseSeparable", "MobileNetV1", "build_3ddfa_mb05"]

BLOCK_SETTINGS: tuple[tuple[str, int, int, int], ...] = (
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
)
"""(attribute name, input channels, output channels, stride) of each block at width 1.0."""


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn_dw = nn.BatchNorm2d(c_in)
        self.conv_sep = nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetV1(nn.Module):
    """MobileNet-V1 trunk, global average pooling and a linear head of ``num_classes`` outputs.

    ``landmark_outputs`` adds the checkpoints' unused ``fc_lm`` head (136 = 68 x 2) so that they load strictly;
    :meth:`forward` never evaluates it. Pass ``None`` for a network without it.
    """

    def __init__(self, widen_factor: float = 1.0, num_classes: int = 62, landmark_outputs: int | None = 136) -> None:
        super().__init__()
        self.widen_factor = widen_factor

        def width(channels: int) -> int:
            return int(channels * widen_factor)

        self.conv1 = nn.Conv2d(3, width(32), 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width(32))
        self.relu = nn.ReLU(inplace=True)
        for name, c_in, c_out, stride in BLOCK_SETTINGS:
            self.add_module(name, DepthwiseSeparable(width(c_in), width(c_out), stride))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_param = nn.Linear(width(1024), num_classes)
        self.fc_lm: nn.Linear | None = nn.Linear(width(1024), landmark_outputs) if landmark_outputs else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised crops -> (N, C) pooled features."""
        x = self.relu(self.bn1(self.conv1(x)))
        for name, *_ in BLOCK_SETTINGS:
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 120, 120) normalised BGR crops -> (N, num_classes) raw (still normalised) parameters."""
        return self.fc_param(self.features(x))


def build_3ddfa_mb05() -> MobileNetV1:
    """3DDFA_V2's ``mb05_120x120`` network: width 0.5, 62 parameters, with the unused 136-d ``fc_lm`` head."""
    return MobileNetV1(widen_factor=0.5, num_classes=62, landmark_outputs=136)
