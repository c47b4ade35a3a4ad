"""Model builders for tests, benchmarks and profiling (re-exported by ``attn_kernels.reference``).

- ``SEBottleneck`` / ``se_resnet50``: ResNet-50 with the attention block on the residual branch,
  before ``out += shortcut; relu`` (SE-ResNet, ECA-ResNet); ``attn=None`` is plain ResNet-50.
- ``CNN`` / ``CNN_SE``: the small CIFAR-size pair of the classic SE-vs-plain comparison.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .reference import ECA, SEBlock

ATTN_KINDS = ("se", "eca", None)


def make_attention(kind: Optional[str], channels: int, reduction: int = 16) -> nn.Module:
    if kind == "se":
        return SEBlock(channels, reduction=reduction)
    if kind == "eca":
        return ECA(channels)
    if kind is None:
        return nn.Identity()
    raise ValueError(f"unknown attention kind {kind!r}; expected 'se', 'eca' or None")


class SEBottleneck(nn.Module):
    """ResNet bottleneck (1×1 → 3×3 → 1×1, expansion 4) with attention on the residual branch."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 attn: Optional[str] = "se", reduction: int = 16):
        super().__init__()
        width = planes
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.attn = make_attention(attn, out, reduction)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.attn(out)
        out = out + shortcut
        return self.relu(out)


class SEResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), attn: Optional[str] = "se", num_classes: int = 1000,
                 in_channels: int = 3, reduction: int = 16):
        super().__init__()
        if attn not in ATTN_KINDS:
            raise ValueError(f"unknown attention kind {attn!r}; expected 'se', 'eca' or None")
        self.attn_kind = attn
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, attn, reduction)
        self.layer2 = self._make_layer(128, layers[1], 2, attn, reduction)
        self.layer3 = self._make_layer(256, layers[2], 2, attn, reduction)
        self.layer4 = self._make_layer(512, layers[3], 2, attn, reduction)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * SEBottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: the block starts as identity
            if isinstance(m, SEBottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes, blocks, stride, attn, reduction):
        downsample = None
        out = planes * SEBottleneck.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [SEBottleneck(self.inplanes, planes, stride, downsample, attn, reduction)]
        self.inplanes = out
        layers += [SEBottleneck(out, planes, attn=attn, reduction=reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def se_resnet50(attn: Optional[str] = "se", num_classes: int = 1000, **kwargs) -> SEResNet:
    """SE-ResNet-50 (``attn="se"``), ECA-ResNet-50 (``"eca"``) or plain ResNet-50 (``None``)."""
    return SEResNet((3, 4, 6, 3), attn=attn, num_classes=num_classes, **kwargs)


class CNN(nn.Module):
    """Three conv blocks (32/64/128, 3×3, BN, ReLU, [attention], 2×2 max-pool), FC 2048→512→10.

    Sized for 32×32 inputs (three pools leave 128·4·4 = 2048 features); dropout 0.5 before each FC.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, attn: Optional[str] = None,
                 reduction: int = 16):
        super().__init__()
        blocks = []
        prev = in_channels
        for width in (32, 64, 128):
            blocks.append(nn.Sequential(
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                make_attention(attn, width, reduction),
                nn.MaxPool2d(2),
            ))
            prev = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(128 * 4 * 4, 512), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class CNN_SE(CNN):
    """``CNN`` with an SE block after each ReLU, before the max-pool."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, reduction: int = 16):
        super().__init__(in_channels, num_classes, attn="se", reduction=reduction)
