"""RetinaFace networks (backbone -> FPN -> SSH context -> box/class/landmark heads).

Module and parameter names follow biubug6's Pytorch_Retinaface so that its checkpoints load with
strict key matching. The networks map an image batch (N, 3, H, W) to raw head outputs; resizing,
normalisation, anchors, decoding and NMS live in :mod:`retinaserve.detection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FPN",
    "SSH",
    "HeadOutputs",
    "MobileNetV1Body",
    "ResNet50Body",
    "RetinaFace",
    "RetinaFaceConfig",
]

HeadOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(loc (N, A, 4), class logits (N, A, 2), landmarks (N, A, 10)) for A anchors."""


def _act(slope: float) -> nn.Module:
    return nn.LeakyReLU(negative_slope=slope, inplace=True) if slope else nn.ReLU(inplace=True)


def conv_bn(c_in: int, c_out: int, stride: int = 1, slope: float | None = 0.0, eps: float = 1e-5) -> nn.Sequential:
    """3x3 conv + BN (+ activation unless ``slope`` is None)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out, eps=eps)]
    if slope is not None:
        layers.append(_act(slope))
    return nn.Sequential(*layers)


def conv_bn_1x1(c_in: int, c_out: int, slope: float = 0.0, eps: float = 1e-5) -> nn.Sequential:
    """1x1 conv + BN + activation."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out, eps=eps), _act(slope))


def conv_dw(c_in: int, c_out: int, stride: int, slope: float = 0.0) -> nn.Sequential:
    """Depthwise 3x3 + BN + act, then pointwise 1x1 + BN + act (MobileNet-V1 block)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        _act(slope),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(c_out),
        _act(slope),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-V1 x0.25 trunk; returns the stride 8, 16 and 32 maps (64, 128, 256 channels)."""

    out_channels = (64, 128, 256)

    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, slope=slope),
            conv_dw(8, 16, 1, slope),
            conv_dw(16, 32, 2, slope),
            conv_dw(32, 32, 1, slope),
            conv_dw(32, 64, 2, slope),
            conv_dw(64, 64, 1, slope),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2, slope), *[conv_dw(128, 128, 1, slope) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2, slope), conv_dw(256, 256, 1, slope))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class Bottleneck(nn.Module):
    """torchvision-layout ResNet bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Body(nn.Module):
    """ResNet-50 trunk with torchvision's parameter names; returns layer2..4 (512, 1024, 2048 ch)."""

    out_channels = (512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 64, blocks=3, stride=1)
        self.layer2 = self._make_layer(256, 128, blocks=4, stride=2)
        self.layer3 = self._make_layer(512, 256, blocks=6, stride=2)
        self.layer4 = self._make_layer(1024, 512, blocks=3, stride=2)

    @staticmethod
    def _make_layer(c_in: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        c_out = width * Bottleneck.expansion
        return nn.Sequential(Bottleneck(c_in, width, stride), *[Bottleneck(c_out, width) for _ in range(blocks - 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class FPN(nn.Module):
    """Three-level feature pyramid: 1x1 lateral convs, nearest upsampling, 3x3 merge convs."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, slope: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.output1 = conv_bn_1x1(in_channels[0], out_channels, slope, eps)
        self.output2 = conv_bn_1x1(in_channels[1], out_channels, slope, eps)
        self.output3 = conv_bn_1x1(in_channels[2], out_channels, slope, eps)
        self.merge1 = conv_bn(out_channels, out_channels, slope=slope, eps=eps)
        self.merge2 = conv_bn(out_channels, out_channels, slope=slope, eps=eps)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3 = self.output1(features[0])
        p4 = self.output2(features[1])
        p5 = self.output3(features[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """SSH context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches concatenated, then ReLU."""

    def __init__(self, c_in: int, c_out: int, slope: float, eps: float = 1e-5) -> None:
        super().__init__()
        if c_out % 4:
            raise ValueError(f"SSH output channels must be divisible by 4, got {c_out}")
        self.conv3X3 = conv_bn(c_in, c_out // 2, slope=None, eps=eps)
        self.conv5X5_1 = conv_bn(c_in, c_out // 4, slope=slope, eps=eps)
        self.conv5X5_2 = conv_bn(c_out // 4, c_out // 4, slope=None, eps=eps)
        self.conv7X7_2 = conv_bn(c_out // 4, c_out // 4, slope=slope, eps=eps)
        self.conv7x7_3 = conv_bn(c_out // 4, c_out // 4, slope=None, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3 = self.conv3X3(x)
        mid = self.conv5X5_1(x)
        branch5 = self.conv5X5_2(mid)
        branch7 = self.conv7x7_3(self.conv7X7_2(mid))
        return F.relu(torch.cat([branch3, branch5, branch7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting ``k`` values per anchor; output (N, H*W*anchors, k) in NHWC anchor order."""

    def __init__(self, c_in: int, anchors: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv1x1 = nn.Conv2d(c_in, anchors * k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.k)


@dataclass(frozen=True)
class RetinaFaceConfig:
    """Architecture of one RetinaFace variant (no anchors or thresholds: those live in the registry)."""

    backbone: str
    """``mobilenet0.25`` or ``resnet50`` (``mobilenetv2`` is built by :mod:`retinaserve.models.mobilenetv2`)."""
    out_channels: int = 64
    slope: float = 0.1
    """LeakyReLU slope of FPN and SSH activations (0 means ReLU)."""
    backbone_slope: float = 0.1
    """LeakyReLU slope inside the MobileNet-V1 trunk (0 means ReLU)."""
    anchors_per_cell: int = 2
    bn_eps: float = 1e-5
    """Batch-norm epsilon of FPN and SSH."""


class RetinaFace(nn.Module):
    """RetinaFace: any trunk with three stride-8/16/32 outputs, FPN, SSH and shared-shape heads.

    ``forward`` returns raw head outputs (loc, class logits, landmarks); no softmax, so that thresholds
    and half precision are handled by the post-processing.
    """

    def __init__(self, config: RetinaFaceConfig, body: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if body is None:
            if config.backbone == "mobilenet0.25":
                body = MobileNetV1Body(config.backbone_slope)
            elif config.backbone == "resnet50":
                body = ResNet50Body()
            else:
                raise ValueError(f"unknown RetinaFace backbone {config.backbone!r}")
        self.body = body
        in_channels: tuple[int, int, int] = body.out_channels  # type: ignore[assignment]
        c = config.out_channels
        self.fpn = FPN(in_channels, c, config.slope, config.bn_eps)
        self.ssh1 = SSH(c, c, config.slope, config.bn_eps)
        self.ssh2 = SSH(c, c, config.slope, config.bn_eps)
        self.ssh3 = SSH(c, c, config.slope, config.bn_eps)
        a = config.anchors_per_cell
        self.ClassHead = nn.ModuleList(_Head(c, a, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(c, a, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(c, a, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> HeadOutputs:
        p3, p4, p5 = self.fpn(self.body(x))
        features = [self.ssh1(p3), self.ssh2(p4), self.ssh3(p5)]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        cls = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        ldm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return loc, cls, ldm
