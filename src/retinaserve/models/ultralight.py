"""The ultra-light face detectors with landmarks ("slim" and "RFB", biubug6/Face-Detector-1MB-with-landmark).

A MobileNet-V1-like trunk with four prediction levels (strides 8, 16, 32, 64; 3, 2, 2 and 3 anchors per
cell). Parameter names follow the original so its checkpoints load with strict key matching. ``forward``
returns raw head outputs (loc, class logits, landmarks), like :class:`~retinaserve.models.retinaface.RetinaFace`.
"""

from __future__ import annotations

import torch
from torch import nn

from .retinaface import HeadOutputs, conv_dw

__all__ = ["BasicRFB", "UltraLight"]

ANCHORS_PER_LEVEL = (3, 2, 2, 3)


def _stem(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _separable(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (bias) + ReLU + pointwise 1x1 (bias), no batch norm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1)
    )


class _ConvBN(nn.Module):
    """conv + BN (+ ReLU): the original's ``BasicConv``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class BasicRFB(nn.Module):
    """Receptive-field block: three dilated branches (rates 2, 3, 5), concatenated, projected, plus shortcut."""

    def __init__(self, c_in: int, c_out: int, scale: float = 1.0, map_reduce: int = 8) -> None:
        super().__init__()
        self.scale = scale
        inter = c_in // map_reduce
        self.branch0 = nn.Sequential(
            _ConvBN(c_in, inter, 1, relu=False),
            _ConvBN(inter, 2 * inter, 3, padding=1),
            _ConvBN(2 * inter, 2 * inter, 3, padding=2, dilation=2, relu=False),
        )
        self.branch1 = nn.Sequential(
            _ConvBN(c_in, inter, 1, relu=False),
            _ConvBN(inter, 2 * inter, 3, padding=1),
            _ConvBN(2 * inter, 2 * inter, 3, padding=3, dilation=3, relu=False),
        )
        self.branch2 = nn.Sequential(
            _ConvBN(c_in, inter, 1, relu=False),
            _ConvBN(inter, (inter // 2) * 3, 3, padding=1),
            _ConvBN((inter // 2) * 3, 2 * inter, 3, padding=1),
            _ConvBN(2 * inter, 2 * inter, 3, padding=5, dilation=5, relu=False),
        )
        self.ConvLinear = _ConvBN(6 * inter, c_out, 1, relu=False)
        self.shortcut = _ConvBN(c_in, c_out, 1, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ConvLinear(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1))
        return self.relu(out * self.scale + self.shortcut(x))


class UltraLight(nn.Module):
    """The "slim" (``rfb=False``) or "RFB" (``rfb=True``) detector."""

    def __init__(self, rfb: bool = False) -> None:
        super().__init__()
        self.conv1 = _stem(3, 16)
        self.conv2 = conv_dw(16, 32, 1, 0.0)
        self.conv3 = conv_dw(32, 32, 2, 0.0)
        self.conv4 = conv_dw(32, 32, 1, 0.0)
        self.conv5 = conv_dw(32, 64, 2, 0.0)
        self.conv6 = conv_dw(64, 64, 1, 0.0)
        self.conv7 = conv_dw(64, 64, 1, 0.0)
        self.conv8: nn.Module = BasicRFB(64, 64, scale=1.0) if rfb else conv_dw(64, 64, 1, 0.0)
        self.conv9 = conv_dw(64, 128, 2, 0.0)
        self.conv10 = conv_dw(128, 128, 1, 0.0)
        self.conv11 = conv_dw(128, 128, 1, 0.0)
        self.conv12 = conv_dw(128, 256, 2, 0.0)
        self.conv13 = conv_dw(256, 256, 1, 0.0)
        self.conv14 = nn.Sequential(
            nn.Conv2d(256, 64, 1), nn.ReLU(inplace=True), _separable(64, 256, stride=2), nn.ReLU(inplace=True)
        )
        channels = (64, 128, 256, 256)
        self.loc = self._heads(channels, 4)
        self.conf = self._heads(channels, 2)
        self.landm = self._heads(channels, 10)

    @staticmethod
    def _heads(channels: tuple[int, ...], k: int) -> nn.Sequential:
        heads: list[nn.Module] = [_separable(c, a * k) for c, a in zip(channels[:-1], ANCHORS_PER_LEVEL[:-1])]
        heads.append(nn.Conv2d(channels[-1], ANCHORS_PER_LEVEL[-1] * k, 3, padding=1))
        return nn.Sequential(*heads)

    def forward(self, x: torch.Tensor) -> HeadOutputs:
        x = self.conv1(x)
        for layer in (self.conv2, self.conv3, self.conv4, self.conv5, self.conv6, self.conv7):
            x = layer(x)
        s8 = self.conv8(x)
        s16 = self.conv11(self.conv10(self.conv9(s8)))
        s32 = self.conv13(self.conv12(s16))
        s64 = self.conv14(s32)
        features = (s8, s16, s32, s64)
        outputs = []
        for heads, k in ((self.loc, 4), (self.conf, 2), (self.landm, 10)):
            per_level = [head(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, k) for head, f in zip(heads, features)]
            outputs.append(torch.cat(per_level, dim=1))
        return outputs[0], outputs[1], outputs[2]
