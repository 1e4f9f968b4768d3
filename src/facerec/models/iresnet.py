"""Improved ResNet (IResNet) for face recognition, key-compatible with insightface arcface_torch.

IResNet is the ResNet of ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep
Face Recognition", CVPR 2019; "IR" units after Duta et al.'s improved residual design):
pre-activation basic blocks BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN plus the
shortcut, a stride-1 stem for 112x112 input, and an output head BN2d -> dropout ->
FC(512 * 7 * 7 -> D) -> BN1d with a frozen scale. Parameter names and shapes equal
arcface_torch's `backbones/iresnet.py`, so its `backbone.pth` files load with strict=True.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> act -> conv3x3(stride) -> BN, plus the (projected) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = act_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w


class SEIBasicBlock(IBasicBlock):
    """IR unit with squeeze-excitation on the residual branch (the seed's "SEResNet-IR")."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__(inplanes, planes, stride, downsample, act_layer)
        self.se = SqueezeExcite(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


class IResNet(nn.Module):
    """IResNet: [B, 3, H, W] -> [B, embedding_size].

    Args:
        layers: blocks per stage (4 stages of 64, 128, 256, 512 channels, each stride 2).
        embedding_size: output dimension (arcface_torch's `num_features`).
        input_size: (H, W); the FC takes 512 x H/16 x W/16 features (7x7 at 112x112).
        dropout: dropout before the FC (arcface_torch uses 0 for most recipes).
        grad_checkpointing: recompute each block in backward to save activation memory.
    """

    def __init__(self, layers: Sequence[int], embedding_size: int = 512, input_size: tuple[int, int] = (112, 112),
                 dropout: float = 0.0, grad_checkpointing: bool = False,
                 block: type[IBasicBlock] = IBasicBlock, act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        h, w = input_size
        if h % 16 or w % 16:
            raise ValueError(f"IResNet input_size must be multiples of 16, got {input_size}")
        self.grad_checkpointing = grad_checkpointing
        self.embedding_size = embedding_size
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = act_layer(64)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), 1):
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
            blocks = [block(inplanes, planes, 2, down, act_layer)]
            blocks += [block(planes, planes, 1, None, act_layer) for _ in range(1, n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * (h // 16) * (w // 16), embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(blk, x, use_reentrant=False)
                else:
                    x = blk(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
