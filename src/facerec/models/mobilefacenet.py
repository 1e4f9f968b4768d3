"""MobileFaceNet of the original paper (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate
Real-Time Face Verification on Mobile Devices", CCBR 2018), as the seed's lineage implements it.

Keys follow that lineage's checkpoints (`conv1`, `dw_conv1`, `blocks.N.conv.0..7`, `conv2`,
`linear7`, `linear1`), so its weights load without renaming. The global depthwise conv
(`linear7`) takes the whole final feature map: 7x7 for 112x112 input, 7x6 for 112x96.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s)
PAPER_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBlock(nn.Module):
    """conv -> BN -> optional activation (keys: conv, bn, prelu)."""

    def __init__(self, cin: int, cout: int, k, s: int = 1, p=0, groups: int = 1, act: bool = True,
                 act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = act_layer(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> PReLU -> 3x3 depthwise -> BN -> PReLU -> 1x1 -> BN."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int,
                 act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), act_layer(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act_layer(hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet: [B, 3, H, W] -> [B, embedding_size] (not normalised).

    Args:
        embedding_size: output dimension (the lineage's default is 128).
        input_size: (H, W); the global depthwise kernel is (H/16, W/16).
        width_mult: scales the channel widths (1.0 = the paper's); the final 512 stays.
        setting: bottleneck configuration (t, c, n, s) per stage.
    """

    def __init__(self, embedding_size: int = 128, input_size: tuple[int, int] = (112, 112),
                 width_mult: float = 1.0, setting=PAPER_SETTING,
                 act_layer: Callable[[int], nn.Module] = nn.PReLU) -> None:
        super().__init__()
        h, w = input_size
        if h % 16 or w % 16:
            raise ValueError(f"MobileFaceNet input_size must be multiples of 16, got {input_size}")
        c0 = _width(64, width_mult)
        self.conv1 = ConvBlock(3, c0, 3, 2, 1, act_layer=act_layer)
        self.dw_conv1 = ConvBlock(c0, c0, 3, 1, 1, groups=c0, act_layer=act_layer)
        blocks, cin = [], c0
        for t, c, n, s in setting:
            cout = _width(c, width_mult)
            for i in range(n):
                blocks.append(Bottleneck(cin, cout, s if i == 0 else 1, t, act_layer))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(cin, 512, 1, 1, 0, act_layer=act_layer)
        self.linear7 = ConvBlock(512, 512, (h // 16, w // 16), 1, 0, groups=512, act=False)
        self.linear1 = ConvBlock(512, embedding_size, 1, 1, 0, act=False)
        self.embedding_size = embedding_size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.blocks(self.dw_conv1(self.conv1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1(self.linear7(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _width(c: int, mult: float) -> int:
    return max(8, int(round(c * mult / 8)) * 8)
